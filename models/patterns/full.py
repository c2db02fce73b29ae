"""Dense causal attention, pattern ``full``: every query sees every earlier key."""

from __future__ import annotations

import torch

from models.patterns import PATTERNS, AttentionConfig, causal_sdpa


@PATTERNS.register("full")
def full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: AttentionConfig,
         bias: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    return causal_sdpa(q, k, v, bias=bias)
