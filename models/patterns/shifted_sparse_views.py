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


class _Pieces:
    """Every causal block of every head of x (B, Hx, T, D), as views built once per tensor.

    Kinds: ``groups`` [0, G), [G, 2G), ... (B, n, G, D); ``inner`` the shifted groups [G/2, 3G/2), ...
    (B, n-1, G, D); ``edges`` the half-groups [0, G/2) and [T-G/2, T) (B, 2, G/2, D); ``wrap`` the
    roll variant's last group [T-G/2, T) ++ [0, G/2) (B, 1, G, D), a small copy.
    """

    def __init__(self, x: torch.Tensor, G: int) -> None:
        T = x.shape[2]
        self.x, self.s, n = x, G // 2, T // G
        self.views = {"groups": x.unflatten(2, (n, G)),  # (B, Hx, n, G, D)
                      "inner": x[:, :, self.s : T - self.s].unflatten(2, (n - 1, G)),  # (B, Hx, n-1, G, D)
                      "edges": x.unfold(2, self.s, T - self.s).transpose(-1, -2)}  # (B, Hx, 2, s, D)

    def take(self, h: int, kind: str) -> torch.Tensor:
        """Head ``h`` laid out as ``kind``: (B, m, L, D)."""
        if kind == "wrap":
            edges = self.views["edges"][:, h]
            return torch.cat([edges[:, 1], edges[:, 0]], 1).unsqueeze(1)
        return self.views[kind][:, h]

    def put(self, h: int, kind: str, val: torch.Tensor, accumulate: bool) -> None:
        """Write (or add) ``val`` (B, m, L, D), laid out as ``kind``, into head ``h`` of x."""
        s = self.s
        if kind == "wrap":
            targets = [(self.x[:, h, -s:], val[:, 0, :s]), (self.x[:, h, :s], val[:, 0, s:])]
        elif kind == "edges":  # two slices: under torch.compile a write into a gapped unfold view zeroes
            # the gaps (pytorch/pytorch#198102)
            targets = [(self.x[:, h, :s], val[:, 0]), (self.x[:, h, -s:], val[:, 1])]
        else:
            targets = [(self.views[kind][:, h], val)]
        for target, part in targets:
            target.add_(part) if accumulate else target.copy_(part)


def _kinds(shifted: bool, n: int, segment: bool) -> list[str]:
    """The causal blocks one head attends within (n = T/G groups)."""
    if not shifted:
        return ["groups"]
    return ["inner"] * (n > 1) + ["edges" if segment else "wrap"]


class ShiftedSparseViews(torch.autograd.Function):
    """(q (B, H, T, D), k, v (B, Hkv, T, D), G, segment) -> (B, H, T, D); q head h reads kv head h // (H/Hkv)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, G: int, segment: bool) -> torch.Tensor:
        H, T = q.shape[1], q.shape[2]
        r = H // k.shape[1]
        out = torch.empty_like(q)  # q's memory layout: (B, T, H, D) from the projections stays free to reshape
        qs, ks, vs, outs = (_Pieces(x, G) for x in (q, k, v, out))
        lses = []
        for h in range(H):
            for kind in _kinds(h >= H // 2, T // G, segment):
                y, lse = _flash(qs.take(h, kind), ks.take(h // r, kind), vs.take(h // r, kind), 0.0, True)
                outs.put(h, kind, y, accumulate=False)
                lses.append(lse)
        ctx.save_for_backward(q, k, v, out, *lses)
        ctx.G, ctx.segment = G, segment
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        q, k, v, out, *lses = ctx.saved_tensors
        G, segment = ctx.G, ctx.segment
        H, T = q.shape[1], q.shape[2]
        r = H // k.shape[1]
        dq = torch.empty_like(q)  # gradients in their inputs' layouts, as autograd expects
        # With GQA several q heads add into one kv head's gradient; without, each slot is written once.
        new = torch.zeros_like if r > 1 else torch.empty_like
        dk, dv = new(k), new(v)
        qs, ks, vs, outs, grads, dqs, dks, dvs = (_Pieces(x, G) for x in (q, k, v, out, grad, dq, dk, dv))
        lse = iter(lses)
        for h in range(H):
            for kind in _kinds(h >= H // 2, T // G, segment):
                gq, gk, gv = _flash_backward(grads.take(h, kind), qs.take(h, kind), ks.take(h // r, kind),
                                             vs.take(h // r, kind), outs.take(h, kind), next(lse), 0.0, True)
                dqs.put(h, kind, gq, accumulate=False)
                dks.put(h // r, kind, gk, accumulate=r > 1)
                dvs.put(h // r, kind, gv, accumulate=r > 1)
        return dq, dk, dv, None, None
