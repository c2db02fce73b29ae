"""Attention patterns for training and prefill, one short function each, one switch.

Every pattern takes rotated q (B, H, T, D) and k, v (B, Hkv, T, D) with H a multiple of Hkv
(grouped-query attention) and returns (B, H, T, D). ``bias`` is an optional additive
(H, T, S) tensor (ALiBi); patterns accept and ignore extra keywords they do not use
(``gate``: the layer's DuoAttention gates, (Hkv,)). Patterns decide *which* keys a query may see; positions are the
positional rule's business (models/rope.py), so the two are orthogonal.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

PATTERNS: dict[str, Callable[..., torch.Tensor]] = {}


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
            value = getattr(self, field)
            if value not in PATTERNS:
                raise ValueError(
                    f"model.attention.{field}={value!r} is not a known pattern; allowed: {sorted(PATTERNS)}"
                )
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


def register(name: str):
    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        PATTERNS[name] = fn
        return fn

    return wrap


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


@register("full")
def full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: AttentionConfig,
         bias: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """Dense causal attention: every query sees every earlier key."""
    return causal_sdpa(q, k, v, bias=bias)


def _group_size(T: int, cfg: AttentionConfig) -> int:
    """G = group_ratio * T: an even integer dividing T (the second half of the heads shifts by G/2)."""
    exact = cfg.group_ratio * T
    G = round(exact)
    if abs(exact - G) > 1e-6 or G < 2 or G % 2 or T % G:
        inverse = 1.0 / cfg.group_ratio
        hint = f" (group_ratio={cfg.group_ratio:g} needs T a multiple of {2 * round(inverse)})" \
            if abs(inverse - round(inverse)) < 1e-6 else ""
        raise ValueError(
            f"model.attention.group_ratio={cfg.group_ratio:g} with sequence length T={T} gives group size "
            f"{exact:g}; shifted_sparse needs an even integer group size that divides T{hint}"
        )
    return G


def _grouped_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: int,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention inside each run of g consecutive tokens; q (B, h, t, D), k/v (B, hkv, t, D), g | t.

    Groups are folded into the batch, so no (t, t) mask is ever built; ``bias`` (hb, t, t) contributes
    only its g x g diagonal blocks.
    """
    B, h, t, D = q.shape
    n = t // g

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, h', t, D) -> (B*n, h', g, D)
        return x.unflatten(2, (n, g)).transpose(1, 2).reshape(B * n, x.shape[1], g, D)

    gqa = h != k.shape[1]
    if bias is None:
        y = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True,
                                           enable_gqa=gqa)  # (B*n, h, g, D)
    else:
        blocks = bias.unflatten(1, (n, g)).unflatten(3, (n, g)).diagonal(dim1=1, dim2=3)  # (hb, g, g, n)
        causal = torch.ones(g, g, dtype=torch.bool, device=q.device).tril()  # (g, g)
        mask = blocks.permute(3, 0, 1, 2).to(q.dtype).masked_fill(~causal, float("-inf"))  # (n, hb, g, g)
        mask = mask.expand(B, *mask.shape).reshape(B * n, -1, g, g)  # (B*n, hb, g, g)
        y = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask,
                                           enable_gqa=gqa)  # (B*n, h, g, D)
    return y.view(B, n, h, g, D).transpose(1, 2).reshape(B, h, t, D)  # (B, h, t, D)


_roll_warned = False


def _warn_roll_once() -> None:
    global _roll_warned
    if not _roll_warned:
        _roll_warned = True
        warnings.warn(
            "model.attention.shift_variant='roll' reproduces LongLoRA's non-flash S2-Attn: the shifted "
            "heads' last group wraps around, so tokens [0, G/2) attend to tokens [T-G/2, T) (a causal leak). "
            "Use it for ablations only; 'segment' is strictly causal.",
            stacklevel=3,
        )


@register("shifted_sparse")
def shifted_sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: AttentionConfig,
                   bias: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """LongLoRA S2-Attn: half the heads attend causally within groups of G = group_ratio * T tokens,
    the other half within groups shifted by G/2, so information crosses group borders across layers.

    ``shift_variant='segment'`` (LongLoRA's flash path): shifted segments [0, G/2), [G/2, 3G/2), ...,
    [T-G/2, T), strictly causal. ``'roll'`` (its non-flash path): roll the shifted half by -G/2, attend
    in groups, roll back; the last group then holds [T-G/2, T) followed by [0, G/2), so the first G/2
    tokens see the last G/2 (a leak, kept for ablations). Both run the roll layout (one SDPA call for
    all heads); ``segment`` then recomputes the first G/2 tokens of the shifted half on their own.
    With GQA, q heads [0, H/2) read kv heads [0, Hkv/2); a single kv head serves both halves; an odd
    Hkv > 1 is expanded per q head.
    """
    B, H, T, D = q.shape
    if H % 2:
        raise ValueError(f"shifted_sparse splits the heads into two halves; model.n_heads={H} must be even")
    G = _group_size(T, cfg)
    s = G // 2  # the shift
    Hkv = k.shape[1]
    if Hkv % 2 and Hkv > 1:  # a kv head would straddle the halves: give every q head its own copy
        k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)  # (B, H, T, D)
    if bias is not None and bias.shape[0] == 1:
        bias = bias.expand(H, T, T)  # (H, T, T)

    def shift_half(x: torch.Tensor) -> torch.Tensor:  # (B, h, T, D) -> (B, h or 2, T, D)
        a, b = (x, x) if x.shape[1] == 1 else x.chunk(2, dim=1)  # a single kv head serves both halves
        return torch.cat([a, b.roll(-s, dims=2)], dim=1)  # shifted half: token s moves to slot 0

    y = _grouped_causal(shift_half(q), shift_half(k), shift_half(v), G,
                        None if bias is None else torch.cat(  # (H, T, T), rolled like the tokens
                            [bias[: H // 2], bias[H // 2 :].roll((-s, -s), dims=(1, 2))]))  # (B, H, T, D)
    y1, y2 = y.chunk(2, dim=1)  # (B, H/2, T, D); y2 in rolled order: tokens s..T-1, then 0..s-1
    if cfg.shift_variant == "segment":  # tokens [0, s) form their own segment instead of joining the last
        kv = k.shape[1] // 2  # first kv head of the shifted half (0 when one head serves both)
        q2, k2, v2 = q[:, H // 2 :, :s], k[:, kv:, :s], v[:, kv:, :s]  # (B, H/2 | Hkv/2, s, D)
        head = _grouped_causal(q2, k2, v2, s, None if bias is None else bias[H // 2 :, :s, :s])  # (B, H/2, s, D)
        y2 = torch.cat([head, y2[:, :, : T - s]], dim=2)  # (B, H/2, T, D)
    else:
        _warn_roll_once()
        y2 = y2.roll(s, dims=2)  # (B, H/2, T, D), back in token order
    return torch.cat([y1, y2], dim=1)  # (B, H, T, D)


def sink_window_mask(T: int, S: int, sink: int, window: int,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, S) bool, True = may attend: allowed(i, j) = j <= i and (j < sink or j >= i - window + 1).

    Queries are the last T of S positions (bottom-right aligned); the token-exact StreamingLLM mask.
    """
    i = torch.arange(S - T, S, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    return (j <= i) & ((j < sink) | (j >= i - window + 1))


@register("sink_window")
def sink_window(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: AttentionConfig,
                bias: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """StreamingLLM: each query sees the first ``sink`` keys and the last ``window`` (itself included)."""
    mask = sink_window_mask(q.shape[-2], k.shape[-2], cfg.sink, cfg.window, q.device)  # (T, S)
    return causal_sdpa(q, k, v, q_offset=k.shape[-2] - q.shape[-2], bias=bias, mask=mask)


@register("duo")
def duo(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: AttentionConfig,
        bias: torch.Tensor | None = None, gate: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """DuoAttention: per KV head, gate * full + (1 - gate) * sink_window, gate (Hkv,) in [0, 1]."""
    if gate is None:
        raise ValueError("attention pattern 'duo' needs per-head gates (Hkv,): "
                         "call models.duo.attach_duo_gates(model) first")
    H, Hkv = q.shape[1], k.shape[1]
    g = gate.clamp(0.0, 1.0).to(q.dtype).repeat_interleave(H // Hkv).view(1, H, 1, 1)  # GQA group shares
    dense = causal_sdpa(q, k, v, q_offset=k.shape[-2] - q.shape[-2], bias=bias)  # (B, H, T, D)
    return g * dense + (1 - g) * sink_window(q, k, v, cfg, bias=bias)


def attend(pattern: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           cfg: AttentionConfig, bias: torch.Tensor | None = None, **extra: object) -> torch.Tensor:
    """The one switch between patterns. ``extra`` carries per-layer state (e.g. duo ``gate``)."""
    return PATTERNS[pattern](q, k, v, cfg, bias=bias, **extra)
