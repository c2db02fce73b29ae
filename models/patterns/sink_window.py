"""StreamingLLM's attention-sink + recent-window mask, pattern ``sink_window``."""

from __future__ import annotations

import torch

from models.patterns import PATTERNS, AttentionConfig, causal_sdpa
from models.patterns.banded import windowed_sdpa


def sink_window_mask(T: int, S: int, sink: int, window: int,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, S) bool, True = may attend: allowed(i, j) = j <= i and (j < sink or j >= i - window + 1).

    Queries are the last T of S positions (bottom-right aligned); the token-exact StreamingLLM mask.
    """
    i = torch.arange(S - T, S, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    return (j <= i) & ((j < sink) | (j >= i - window + 1))


@PATTERNS.register("sink_window")
def sink_window(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: AttentionConfig,
                bias: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """StreamingLLM: each query sees the first ``sink`` keys and the last ``window`` (itself included)."""
    if k.shape[-2] == q.shape[-2]:  # training / a whole prefill: O(T (window + sink)) past a few windows
        return windowed_sdpa(q, k, v, cfg.window, cfg.sink, bias=bias)
    mask = sink_window_mask(q.shape[-2], k.shape[-2], cfg.sink, cfg.window, q.device)  # (T, S)
    return causal_sdpa(q, k, v, q_offset=k.shape[-2] - q.shape[-2], bias=bias, mask=mask)
