"""Attention patterns for training and prefill: the registry, their shared config and SDPA helper, one switch.

Each pattern is one module of models/patterns/ registering a short function with ``@PATTERNS.register``.

Every pattern takes rotated q (B, H, T, D) and k, v (B, Hkv, T, D) with H a multiple of Hkv
(grouped-query attention) and returns (B, H, T, D). ``bias`` is an optional additive
(H, T, S) tensor (ALiBi); patterns accept and ignore extra keywords they do not use
(``gate``: the layer's DuoAttention gates, (Hkv,)). Patterns decide *which* keys a query may see; positions are the
positional rule's business (models/pos/), so the two are orthogonal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from registries import Registry

PATTERNS: Registry[Callable[..., torch.Tensor]] = Registry(
    "pattern", "model.attention.train", package="models.patterns")


@dataclass
class AttentionConfig:
    """Which pattern runs in training and which at evaluation/prefill, plus their knobs."""

    train: str = "full"  # pattern while module.training
    eval: str = "full"  # pattern at evaluation (LongLoRA evaluates with full attention)
    group_ratio: float = 0.25  # shifted_sparse: group size = ratio * T
    shift_variant: str = "segment"  # shifted_sparse: segment (causal) | roll (reference, leaks)
    sink: int = 4  # sink_window / duo streaming heads: attention-sink tokens
    window: int = 256  # sink_window / duo streaming heads: recent tokens

    def __post_init__(self) -> None:
        for field in ("train", "eval"):
            PATTERNS.get(getattr(self, field), f"model.attention.{field}")
        if not 0.0 < self.group_ratio <= 1.0:
            raise ValueError(f"model.attention.group_ratio={self.group_ratio} must be in (0, 1]")
        if self.shift_variant not in ("segment", "roll"):
            raise ValueError(
                f"model.attention.shift_variant={self.shift_variant!r}; allowed: 'segment', 'roll'"
            )
        if self.sink < 0:
            raise ValueError(f"model.attention.sink={self.sink} must be >= 0")
        if self.window < 1:
            raise ValueError(f"model.attention.window={self.window} must be >= 1")


def causal_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_offset: int = 0,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention where query i sits at absolute position q_offset + i among S keys.

    ``mask`` (T, S) bool, True = may attend, further restricts the causal mask.
    The unmasked, offset-free case goes through SDPA's is_causal fast path (flash on GPU).
    """
    T, S = q.shape[-2], k.shape[-2]
    gqa = q.shape[1] != k.shape[1]
    if bias is None and mask is None and q_offset == 0 and T == S:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if bias is None and mask is None and T == 1:  # one decode step sees every cached key
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    q_pos = torch.arange(q_offset, q_offset + T, device=q.device)[:, None]
    allowed = torch.arange(S, device=q.device)[None, :] <= q_pos  # (T, S)
    if mask is not None:
        allowed = allowed & mask
    attn_mask: torch.Tensor = allowed
    if bias is not None:
        attn_mask = bias.to(q.dtype).masked_fill(~allowed, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)


def attend(pattern: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           cfg: AttentionConfig, bias: torch.Tensor | None = None, **extra: object) -> torch.Tensor:
    """The one switch between patterns. ``extra`` carries per-layer state (e.g. duo ``gate``)."""
    return PATTERNS.get(pattern)(q, k, v, cfg, bias=bias, **extra)
