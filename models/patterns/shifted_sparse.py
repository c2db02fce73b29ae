"""LongLoRA's shifted sparse attention (S2-Attn), pattern ``shifted_sparse``."""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from models.patterns import PATTERNS, AttentionConfig
from models.patterns.shifted_sparse_views import ShiftedSparseViews


def group_size(T: int, cfg: AttentionConfig) -> int:
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


@functools.lru_cache(maxsize=16)  # a few shapes per run (q, kv); rebuilt otherwise
def _s2_rows(B: int, Hx: int, H: int, T: int, G: int, segment: bool,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Where each row of the S2-Attn layout comes from in x (B, Hx, T, D): batch, head, token (R,) each.

    Rows are the grouped layout (B, n, Hg, G) -- heads [0, Hg/2) in token order, heads [Hg/2, Hg)
    rolled by -G/2, so token G/2 opens their first group -- followed, for ``segment``, by the shifted
    heads' own first segment [0, G/2) as (B, Hg/2, G/2). Returns the indices and Hg.
    """
    n, s = T // G, G // 2
    if Hx % 2 == 0:
        src = torch.arange(Hx, device=device)  # kv heads split between the halves like the q heads
    elif Hx == 1:
        src = torch.zeros(2, dtype=torch.long, device=device)  # one kv head, read in both orders
    else:
        src = torch.arange(H, device=device) // (H // Hx)  # odd Hkv > 1: one kv copy per q head
    Hg = src.numel()
    slot = torch.arange(T, device=device).view(n, 1, G)  # (n, 1, G) slot in the (rolled) sequence
    shifted = torch.arange(Hg, device=device).view(1, Hg, 1) >= Hg // 2  # (1, Hg, 1)
    tok = torch.where(shifted, (slot + s) % T, slot)  # (n, Hg, G) token held by each slot
    b = torch.arange(B, device=device)
    shape = (B, n, Hg, G)
    rows = [b.view(B, 1, 1, 1).expand(shape), src.view(1, 1, Hg, 1).expand(shape), tok.expand(shape)]
    if segment:
        shape = (B, Hg // 2, s)
        first = [b.view(B, 1, 1).expand(shape), src[Hg // 2 :].view(1, -1, 1).expand(shape),
                 torch.arange(s, device=device).expand(shape)]
        rows = [torch.cat([r.flatten(), f.flatten()]) for r, f in zip(rows, first)]
    return rows[0].flatten(), rows[1].flatten(), rows[2].flatten(), Hg


def _causal_in_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """Causal SDPA on (N, h, g, D) blocks, plus an optional additive (N | 1, h, g, g) bias."""
    gqa = q.shape[1] != k.shape[1]
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    g = q.shape[-2]
    causal = torch.ones(g, g, dtype=torch.bool, device=q.device).tril()  # (g, g)
    mask = bias.to(q.dtype).masked_fill(~causal, float("-inf"))  # (N | 1, h, g, g)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def views_path(q: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Strided views (CPU flash kernels, no bias) rather than the gather path (CUDA, ALiBi)."""
    return bias is None and q.device.type == "cpu"


# Below this much work (B T^2 D) the CPU path is one SDPA call with S2's (1, H, T, T) mask instead of a flash call
# per head and block: there the calls' fixed cost, not the attention, is the time (B=1, T=64, H=8, D=64: the views
# took 3x one full-attention call, the masked call 1.0x; from B T^2 D ~ 4M the views' 4x fewer FLOPs win).
MASKED_MAX_WORK = 2**21


def masked_path(q: torch.Tensor, segment: bool) -> bool:
    """The ``segment`` variant at small sizes (q (B, H, T, D)): one masked SDPA call rather than the views."""
    B, _, T, D = q.shape
    return segment and B * T * T * D <= MASKED_MAX_WORK


@functools.lru_cache(maxsize=16)
def _segment_mask(H: int, T: int, G: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, H, T, T) additive mask of the ``segment`` variant: 0 where query t may see key j, -inf elsewhere
    (4-D: a 3-D mask makes the CPU kernel expand and copy it per call)."""
    t = torch.arange(T, device=device)
    causal = t[None, :] <= t[:, None]
    own = (t[:, None] // G) == (t[None, :] // G)  # groups [0, G), [G, 2G), ...
    shifted = ((t[:, None] + G // 2) // G) == ((t[None, :] + G // 2) // G)  # [0, G/2), [G/2, 3G/2), ...
    allowed = torch.stack([causal & own] * (H // 2) + [causal & shifted] * (H // 2))
    return torch.zeros(1, H, T, T, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))


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


@PATTERNS.register("shifted_sparse")
def shifted_sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: AttentionConfig,
                   bias: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """LongLoRA S2-Attn: half the heads attend causally within groups of G = group_ratio * T tokens,
    the other half within groups shifted by G/2, so information crosses group borders across layers.

    ``shift_variant='segment'`` (LongLoRA's flash path): shifted segments [0, G/2), [G/2, 3G/2), ...,
    [T-G/2, T), strictly causal. ``'roll'`` (its non-flash path): roll the shifted half by -G/2, attend
    in groups, roll back; the last group then holds [T-G/2, T) followed by [0, G/2), so the first G/2
    tokens see the last G/2 (a leak, kept for ablations). Both run the roll layout in one SDPA call
    over (B*n, H, G, D); ``segment`` recomputes the shifted heads' first G/2 tokens on their own.
    Each of q, k, v is regrouped by one gather (no roll/cat/transpose copies, no (T, T) mask).
    With GQA, q heads [0, H/2) read kv heads [0, Hkv/2); one kv head serves both halves; an odd
    Hkv > 1 gets one copy per q head.

    On CPU without a bias the groups are strided views instead (models/patterns/shifted_sparse_views.py):
    no gathered copies, fwd+bwd memory of full attention; for ``segment`` at small sizes (``masked_path``)
    one SDPA call with the (1, H, T, T) S2 mask. The gather path serves CUDA and ALiBi.
    """
    B, H, T, D = q.shape
    if H % 2:
        raise ValueError(f"shifted_sparse splits the heads into two halves; model.n_heads={H} must be even")
    G = group_size(T, cfg)
    n, s = T // G, G // 2
    segment = cfg.shift_variant == "segment"
    if not segment:
        _warn_roll_once()
    if views_path(q, bias):
        if torch.is_autocast_enabled("cpu"):  # as SDPA under autocast: all three in the autocast dtype
            q, k, v = (x.to(torch.get_autocast_dtype("cpu")) for x in (q, k, v))
        if masked_path(q, segment):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=_segment_mask(H, T, G, q.dtype, q.device),
                                                  enable_gqa=q.shape[1] != k.shape[1])
        return ShiftedSparseViews.apply(q, k, v, G, segment)

    def regroup(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, t, Hg = _s2_rows(B, x.shape[1], H, T, G, segment, x.device)
        rows = x[b, h, t]  # (R, D): one gather
        grouped, first = rows.split([B * n * Hg * G, rows.shape[0] - B * n * Hg * G])
        return grouped.view(B * n, Hg, G, D), first.view(B, Hg // 2, s if segment else 0, D)

    (qg, qf), (kg, kf), (vg, vf) = regroup(q), regroup(k), regroup(v)  # (B*n, ., G, D), (B, ./2, s, D)
    bg = bf = None
    if bias is not None:  # the same gather on both bias axes: (n, H, G, G) blocks, (H/2, s, s) segment
        hb = torch.arange(H, device=q.device) * (bias.shape[0] > 1)  # (H,) bias head per q head
        _, _, tq, _ = _s2_rows(1, H, H, T, G, False, q.device)
        tok = tq.view(n, H, G)  # (n, H, G)
        bg = bias[hb.view(1, H, 1, 1), tok[..., :, None], tok[..., None, :]]  # (n, H, G, G)
        bg = bg.expand(B, n, H, G, G).reshape(B * n, H, G, G)  # (B*n, H, G, G)
        t0 = torch.arange(s, device=q.device)
        bf = bias[hb[H // 2 :].view(-1, 1, 1), t0.view(1, s, 1), t0.view(1, 1, s)][None]  # (1, H/2, s, s)

    yg = _causal_in_blocks(qg, kg, vg, bg)  # (B*n, H, G, D)
    y = yg.reshape(-1, D)  # (B*n*H*G, D)
    if segment:
        y = torch.cat([y, _causal_in_blocks(qf, kf, vf, bf).reshape(-1, D)])  # (R, D)
    return y[_s2_order(B, H, T, G, segment, q.device)].view(B, H, T, D)  # (B, H, T, D)


@functools.lru_cache(maxsize=16)
def _s2_order(B: int, H: int, T: int, G: int, segment: bool, device: torch.device) -> torch.Tensor:
    """(B*H*T,) row of the S2 layout holding each (b, h, t) output, in token order."""
    b, h, t, _ = _s2_rows(B, H, H, T, G, segment, device)
    position = (b * H + h) * T + t  # (R,) flat (b, h, t) of each row
    order = torch.empty(B * H * T, dtype=torch.long, device=device)
    ng = B * H * T  # grouped rows; with ``segment`` the first-segment rows follow
    order[position[:ng]] = torch.arange(ng, device=device)
    order[position[ng:]] = torch.arange(ng, position.numel(), device=device)  # the fix wins
    return order
