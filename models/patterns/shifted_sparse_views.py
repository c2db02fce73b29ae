"""S2-Attn on CPU without regrouping copies: causal SDPA on strided views of q, k, v, one head at a time.

Each query head's groups are *views* of its (T, D) slab: the unshifted heads' groups [0, G), [G, 2G), ...
are ``x[:, h].unflatten`` into (B, n, G, D); the shifted heads' inner groups [G/2, 3G/2), ... are the
same view of ``x[:, h, G/2 : T-G/2]``, and their two half-groups [0, G/2) and [T-G/2, T) one
``unfold`` view (B, 2, G/2, D) (``segment``) or, for ``roll``, one small copy of the wrapped group
[T-G/2, T) ++ [0, G/2). Causal SDPA on each piece (``is_causal``, no mask) writes into one
preallocated output, and the backward writes each piece's gradients into preallocated dq, dk, dv.

Why a custom autograd Function around the CPU flash kernels rather than autograd through views:
autograd would keep every piece's output alive beside the assembled one and turn each slice into a
full-size zero gradient. Here the saved state is q, k, v (the inputs), the output and the per-piece
log-sum-exps, so fwd+bwd peak memory is that of full attention. Per head, not per half: a piece's
gradients are a temporary, and a head's is 1/H of one tensor where a half's would be H/2 times that.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default

Piece = tuple[str, int, int]  # (kind, first token, number of groups); kinds: blocks, edges, wrap


def _pieces(shifted: bool, T: int, G: int, segment: bool) -> list[Piece]:
    """The causal blocks one head attends within, each a (B, m, L, D) view (or, ``wrap``, a small copy)."""
    n, s = T // G, G // 2
    if not shifted:
        return [("blocks", 0, n)]
    inner = [("blocks", s, n - 1)] if n > 1 else []
    return inner + [("edges" if segment else "wrap", 0, 0)]


def _take(x: torch.Tensor, h: int, piece: Piece, G: int) -> torch.Tensor:
    """Head ``h`` of x (B, Hx, T, D) laid out as ``piece``: (B, m, L, D)."""
    kind, start, count = piece
    T, s = x.shape[2], G // 2
    if kind == "blocks":
        return x[:, h, start : start + count * G].unflatten(1, (count, G))  # (B, count, G, D) view
    if kind == "edges":
        return x[:, h].unfold(1, s, T - s).transpose(-1, -2)  # (B, 2, s, D) view: [0, s) and [T-s, T)
    return torch.cat([x[:, h, T - s :], x[:, h, :s]], 1).unsqueeze(1)  # (B, 1, G, D): the wrapped group


def _put(dst: torch.Tensor, h: int, piece: Piece, G: int, val: torch.Tensor, accumulate: bool) -> None:
    """Write (or add) ``val`` (B, m, L, D), laid out as ``piece``, into head ``h`` of dst (B, Hx, T, D)."""
    T, s = dst.shape[2], G // 2
    if piece[0] == "wrap":
        targets = [(dst[:, h, T - s :], val[:, 0, :s]), (dst[:, h, :s], val[:, 0, s:])]
    elif piece[0] == "edges":  # two slices: under torch.compile a write into a gapped unfold view zeroes
        # the gaps (pytorch/pytorch#198102)
        targets = [(dst[:, h, :s], val[:, 0]), (dst[:, h, T - s :], val[:, 1])]
    else:
        targets = [(_take(dst, h, piece, G), val)]
    for target, part in targets:
        target.add_(part) if accumulate else target.copy_(part)


class ShiftedSparseViews(torch.autograd.Function):
    """(q (B, H, T, D), k, v (B, Hkv, T, D), G, segment) -> (B, H, T, D); q head h reads kv head h // (H/Hkv)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, G: int, segment: bool) -> torch.Tensor:
        B, H, T, D = q.shape
        r = H // k.shape[1]
        out = torch.empty_like(q)  # q's memory layout: (B, T, H, D) from the projections stays free to reshape
        lses = []
        for h in range(H):
            for piece in _pieces(h >= H // 2, T, G, segment):
                qp, kp, vp = (_take(x, i, piece, G) for x, i in ((q, h), (k, h // r), (v, h // r)))
                y, lse = _flash(qp, kp, vp, 0.0, True)
                _put(out, h, piece, G, y, accumulate=False)
                lses.append(lse)
        ctx.save_for_backward(q, k, v, out, *lses)
        ctx.G, ctx.segment = G, segment
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        q, k, v, out, *lses = ctx.saved_tensors
        G, segment = ctx.G, ctx.segment
        B, H, T, D = q.shape
        r = H // k.shape[1]
        dq = torch.empty_like(q)  # gradients in their inputs' layouts, as autograd expects
        # With GQA several q heads add into one kv head's gradient; without, each slot is written once.
        new = torch.zeros_like if r > 1 else torch.empty_like
        dk, dv = new(k), new(v)
        lse = iter(lses)
        for h in range(H):
            for piece in _pieces(h >= H // 2, T, G, segment):
                qp, kp, vp = (_take(x, i, piece, G) for x, i in ((q, h), (k, h // r), (v, h // r)))
                op, gp = _take(out, h, piece, G), _take(grad, h, piece, G)
                gq, gk, gv = _flash_backward(gp, qp, kp, vp, op, next(lse), 0.0, True)
                _put(dq, h, piece, G, gq, accumulate=False)
                _put(dk, h // r, piece, G, gk, accumulate=r > 1)
                _put(dv, h // r, piece, G, gv, accumulate=r > 1)
        return dq, dk, dv, None, None
