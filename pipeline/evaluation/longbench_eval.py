"""LongBench evaluation (``eval=longbench eval.longbench.dir=PATH``): prompt, truncate, decode, score.

Per dataset file: each example's official prompt is encoded by the run's tokenizer; a prompt longer
than the budget keeps its first and last halves (LongBench truncates the middle, where the question
never is); the answer is greedy-decoded through the run's cache policy for at most the dataset's
maximum new tokens (stopping at an end-of-text token, and at a newline for samsum as the official
``pred.py`` does); the decoded text is scored with the dataset's official metric. One row per
dataset (``score`` = 100 x mean, as LongBench reports; ``accuracy`` = the mean) and the predictions
in LongBench's own format under ``<run_dir>/longbench/<dataset>.jsonl``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from models.caches import CacheConfig
from pipeline.config.eval_config import LongBenchConfig
from pipeline.evaluation.decode import run_prompt
from pipeline.results.rows import append_row, make_row
from tasks.longbench import MAX_NEW_TOKENS, load_dataset
from tasks.longbench_metrics import METRICS, score_example
from tasks.tokenizer import load_tokenizer


def truncate_middle(ids: list[int], budget: int) -> list[int]:
    """The first ceil(budget/2) and last floor(budget/2) ids when there are more than ``budget``."""
    if len(ids) <= budget:
        return ids
    half = budget // 2
    return ids[: budget - half] + ids[len(ids) - half :]


@torch.no_grad()
def greedy_generate(model: nn.Module, prompt: list[int], max_new: int, policy: CacheConfig,
                    device: torch.device, stop_ids: list[int], stop_at: Optional[callable] = None,
                    tail: int = 0) -> list[int]:
    """Greedy continuation of one prompt through a cache policy (at most ``max_new`` tokens).

    The evaluation protocol of the grid (``pipeline.evaluation.decode.run_prompt``): the prompt but its last
    ``tail`` tokens is prefilled (``cache.prefill``), those are fed one at a time through the policy,
    then every generated token goes through the policy.
    """
    cache = model.new_cache(1, policy)
    cache.reserve(len(prompt) + max_new)
    ids = torch.tensor([prompt], device=device)
    logits = run_prompt(model, ids, cache, policy, feed_from=max(1, len(prompt) - tail))  # (1, V)
    out: list[int] = []
    for _ in range(max_new):
        token = int(logits.argmax(-1))
        if token in stop_ids:
            break
        out.append(token)
        if stop_at is not None and stop_at(out):
            break
        logits = model(torch.tensor([[token]], device=device), cache)[:, -1]
    return out


def evaluate_longbench(model: nn.Module, cfg: LongBenchConfig, tokenizer: str, policy: CacheConfig, max_seq_len: int,
                       row_base: dict[str, Any], rows_path: Optional[str | Path],
                       device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """One row per dataset: its official score on the examples of its local file."""
    device = torch.device(device)
    model.eval()
    tok = load_tokenizer(tokenizer)
    stop_ids = tok.stop_ids() if hasattr(tok, "stop_ids") else []
    out_dir = Path(rows_path).parent / "longbench" if rows_path is not None else None
    rows = []
    for name in cfg.check():
        examples = load_dataset(cfg.dir, name, cfg.max_examples)
        max_new = MAX_NEW_TOKENS[name]
        budget = cfg.max_length if cfg.max_length is not None else max_seq_len - max_new
        if budget < 1:
            raise ValueError(f"eval.longbench: no room for a prompt: max_seq_len={max_seq_len} - {max_new} new tokens")
        newline = (lambda ids: "\n" in tok.decode(ids)) if name == "samsum" else None
        scores, preds, truncated, t0 = [], [], 0, time.perf_counter()
        for ex in examples:
            ids = tok.encode(ex.prompt)
            truncated += len(ids) > budget
            new = greedy_generate(model, truncate_middle(ids, budget), max_new, policy, device, stop_ids, newline,
                                  tail=cfg.decode_tail)
            pred = tok.decode(new)
            scores.append(score_example(name, pred, ex.answers, ex.all_classes))
            preds.append({"pred": pred, "answers": ex.answers, "all_classes": ex.all_classes, "length": ex.length,
                          "_id": ex.id})
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in preds)
        mean = float(np.mean(scores)) if scores else float("nan")
        rows.append(make_row(**row_base, task=f"longbench/{name}", dataset=name, metric=METRICS[name].__name__,
                             eval_len=budget, cache=policy.label, prefill=policy.prefill, decode_tail=cfg.decode_tail,
                             tokenizer=tokenizer,
                             depth=None, n_examples=len(examples), n_truncated=truncated, accuracy=mean,
                             score=round(100 * mean, 2), max_new_tokens=max_new,
                             seconds=time.perf_counter() - t0, status="ok"))
        if rows_path is not None:
            append_row(rows_path, rows[-1])
    return rows
