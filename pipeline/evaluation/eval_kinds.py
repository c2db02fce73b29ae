"""The evaluations beside the task grid (``eval.kind``), each with its config under ``eval.<kind>``.

- ``grid``: tasks x lengths x depths under the cache policy (``pipeline/evaluation/evaluate.py``);
- ``lm``: perplexity by position through the cache policy (``pipeline/evaluation/lm_eval.py``);
- ``longbench``: LongBench from local jsonl files (``pipeline/evaluation/longbench_eval.py``);
- ``sinks``: attention mass on the first token per layer and head (``pipeline/evaluation/attention_probe.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config.eval_config import EVAL_KINDS, LmEvalConfig, LongBenchConfig, SinkProbeConfig
from pipeline.evaluation.attention_probe import probe_sinks
from pipeline.evaluation.lm_eval import evaluate_lm
from pipeline.evaluation.longbench_eval import evaluate_longbench

__all__ = ["EVAL_KINDS", "LmEvalConfig", "LongBenchConfig", "SinkProbeConfig", "kind_summary", "run_eval_kind"]


def run_eval_kind(model: nn.Module, res: Any, tokenizer: str, seed: int, base: dict[str, Any], rows_path: Path,
                  device: torch.device) -> list[dict[str, Any]]:
    """Rows of the non-grid evaluation ``res.eval.kind`` (``res``: a validated ``pipeline.config.resolve.Resolved``)."""
    kind = res.eval.kind
    if kind == "lm":
        return evaluate_lm(model, res.eval.lm, tokenizer, res.cache, res.task.train_len, base, rows_path, device, seed)
    if kind == "longbench":
        return evaluate_longbench(model, res.eval.longbench, tokenizer, res.cache, res.model.max_seq_len, base,
                                  rows_path, device)
    if kind == "sinks":
        return probe_sinks(model, res.eval.sinks, tokenizer, res.task.train_len, base, rows_path, device)
    raise ValueError(f"eval.kind={kind!r}; allowed: {list(EVAL_KINDS)}")


def kind_summary(rows: list[dict[str, Any]]) -> str:
    """One line saying what a non-grid evaluation measured (printed with the rows' path, as the grid's table)."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return f"{len(rows)} rows, none ok"
    first = ok[0]
    if first.get("task") == "lm":  # mean NLL over positions (buckets weighted by their size)
        def mean(part: list[dict[str, Any]]) -> str:
            n = sum(r["bucket_end"] - r["bucket_start"] + 1 for r in part)
            return f"{sum(r['nll'] * (r['bucket_end'] - r['bucket_start'] + 1) for r in part) / n:.3f}" if n else "-"
        if first.get("train_len") is None:  # an imported model: no training length of ours
            return f"eval=lm {first.get('cache')}: NLL {mean(ok)} over {first.get('eval_len')} positions"
        inside = [r for r in ok if not r["past_train_len"]]
        past = [r for r in ok if r["past_train_len"]]
        return (f"eval=lm {first.get('cache')}: NLL {mean(inside)} within the training length "
                f"(L={first.get('train_len')}), {mean(past)} past it, over {first.get('eval_len')} positions")
    if first.get("task") == "sinks":
        top = max(ok, key=lambda r: r["sink_mass"])
        return (f"eval=sinks: attention on token 0 up to {top['sink_mass']:.3f} (layer {top['layer']}, head "
                f"{top['head']}); a uniform head gives {first['uniform_mass']:.3f}")
    return f"{len(ok)} {first.get('task')} rows"
