"""The evaluations beside the task grid (``eval.kind``), each with its config under ``eval.<kind>``.

- ``grid``: tasks x lengths x depths under the cache policy (``pipeline/evaluate.py``);
- ``lm``: perplexity by position through the cache policy (``pipeline/lm_eval.py``);
- ``longbench``: LongBench from local jsonl files (``pipeline/longbench_eval.py``);
- ``sinks``: attention mass on the first token per layer and head (``pipeline/attention_probe.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.attention_probe import SinkProbeConfig, probe_sinks
from pipeline.lm_eval import LmEvalConfig, evaluate_lm
from pipeline.longbench_eval import LongBenchConfig, evaluate_longbench

EVAL_KINDS = ("grid", "lm", "longbench", "sinks")
__all__ = ["EVAL_KINDS", "LmEvalConfig", "LongBenchConfig", "SinkProbeConfig", "run_eval_kind"]


def run_eval_kind(model: nn.Module, res: Any, tokenizer: str, seed: int, base: dict[str, Any], rows_path: Path,
                  device: torch.device) -> list[dict[str, Any]]:
    """Rows of the non-grid evaluation ``res.eval.kind`` (``res``: a validated ``pipeline.config.Resolved``)."""
    kind = res.eval.kind
    if kind == "lm":
        return evaluate_lm(model, res.eval.lm, tokenizer, res.cache, res.task.train_len, base, rows_path, device, seed)
    if kind == "longbench":
        return evaluate_longbench(model, res.eval.longbench, tokenizer, res.cache, res.model.max_seq_len, base,
                                  rows_path, device)
    if kind == "sinks":
        return probe_sinks(model, res.eval.sinks, tokenizer, res.task.train_len, base, rows_path, device)
    raise ValueError(f"eval.kind={kind!r}; allowed: {list(EVAL_KINDS)}")
