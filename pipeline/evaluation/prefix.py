"""Prefix caching: a long context asked K questions is prefilled once, its cache copied per question.

The question goes after the context so the context's cache is reusable. Under the default protocol
(``question_decoded``) the question is fed one token at a time through the policy, as in the grid;
``question_prefilled`` feeds it in one call. For each batch we time
the context prefill, then per question (a) reuse: clone the cache, feed the question, decode the
answer; (b) recompute: a fresh cache over context + question, decode. The answers must be
identical; rows report both timings.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from models.caches import CacheConfig, ModelCache
from pipeline.evaluation.decode import PROTOCOLS, prefill, run_prompt
from pipeline.evaluation.evaluate import completed_cells
from pipeline.results.rows import CELL_KEYS, append_row, make_row
from tasks.dataset import generate
from tasks.vocab import Vocab


@torch.no_grad()
def answer_after(model: nn.Module, cache: ModelCache, prompt: torch.Tensor, n_answer: int,
                 policy: CacheConfig, feed_from: int | None) -> torch.Tensor:
    """Add ``prompt`` to ``cache`` (prefill prompt[:, :feed_from], then one token at a time) and
    greedily decode ``n_answer`` tokens, (B, n_answer)."""
    logits = run_prompt(model, prompt, cache, policy, feed_from)
    out = []
    for i in range(n_answer):
        token = logits.argmax(-1)  # (B,)
        out.append(token)
        if i + 1 < n_answer:
            logits = model(token[:, None], cache)[:, -1]
    return torch.stack(out, dim=1)


def evaluate_prefix_cache(model: nn.Module, task: Any, vocab: Vocab, lengths: list[int], n_examples: int,
                          batch_size: int, n_questions: int, policy: CacheConfig, seed: int,
                          row_base: dict[str, Any], rows_path, device: torch.device,
                          protocol: str = "question_decoded") -> list[dict[str, Any]]:
    if protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol={protocol!r}; allowed: {list(PROTOCOLS)}")
    if not hasattr(task, "questions"):
        raise ValueError(f"eval.prefix_cache=true needs a task with several needles to ask about (niah); "
                         f"got task {task.name!r}")
    model.eval()
    rows = []
    done = completed_cells(rows_path, row_base.get("run_id"), row_base.get("config_hash"))  # resumed: skip them
    for length in lengths:
        key = dict(row_base, task=task.name, eval_len=length, depth=None, cache=policy.label, prefill=policy.prefill,
                   prefix_cache=True)
        if tuple(key.get(k) for k in CELL_KEYS) in done:
            rows += done[tuple(key.get(k) for k in CELL_KEYS)]
            continue
        arrays = generate(task, vocab, "test", n_examples, length, seed)
        context_len, qa = task.questions(vocab, arrays, n_questions)
        tokens = torch.from_numpy(arrays.tokens).to(device)
        prefill_s = reuse_s = recompute_s = 0.0
        right = identical = 0
        for s in range(0, n_examples, batch_size):
            ctx = tokens[s : s + batch_size, :context_len]
            B = ctx.shape[0]
            t0 = time.perf_counter()
            base = model.new_cache(B, policy)
            prefill(model, ctx, base, policy)
            prefill_s += time.perf_counter() - t0
            for question, answer in qa:
                q = torch.from_numpy(question[s : s + B]).to(device)
                t0 = time.perf_counter()
                decoded = protocol == "question_decoded"  # the question token by token, or in one call
                reused = answer_after(model, base.clone(), q, answer.shape[1], policy, 0 if decoded else q.shape[1])
                reuse_s += time.perf_counter() - t0
                t0 = time.perf_counter()
                recomputed = answer_after(model, model.new_cache(B, policy), torch.cat([ctx, q], 1),
                                          answer.shape[1], policy, context_len if decoded else None)
                recompute_s += time.perf_counter() - t0
                identical += int((reused == recomputed).all(dim=1).sum())
                right += int((reused.cpu().numpy() == answer[s : s + B]).all(axis=1).sum())
        asked = n_examples * n_questions
        row = make_row(**row_base, task=task.name, eval_len=length, depth=None, seed=seed, n_examples=asked,
                       accuracy=right / asked, cache=policy.label, prefill=policy.prefill, status="ok",
                       protocol=protocol,
                       prefix_cache=True, n_questions=n_questions, prefill_s=prefill_s,
                       question_s_reuse=reuse_s / asked, question_s_recompute=recompute_s / asked,
                       reuse_speedup=recompute_s / max(reuse_s, 1e-12), answers_identical=identical == asked)
        if rows_path is not None:
            append_row(rows_path, row)
        rows.append(row)
    return rows

