"""The selective scan (Mamba's SSM) in pure PyTorch: chunked, parallel over the sequence.

``selective_scan`` takes the argument layout of ``mamba_ssm``'s ``selective_scan_fn`` so the CUDA
kernel and this reference are interchangeable (models/mamba.py picks one):

    delta = softplus(delta + delta_bias)                       (if delta_softplus)
    h_t   = exp(delta_t A) * h_{t-1} + delta_t B_t u_t         h: (B, D, N), h_{-1} = initial_state
    y_t   = C_t . h_t + D u_t,  then  y * silu(z)

The recurrence h_t = a_t h_{t-1} + x_t is solved by ``linear_scan``, a two-level chunked scan:
split the L steps into ~sqrt(L) chunks of ~sqrt(L) steps; scan inside every chunk at once (one
vectorised step per position within a chunk), carry the chunk-final states across chunks, then add
each carry times the cumulative decay inside its chunk. That is O(sqrt(L)) vectorised steps instead
of L, and it only ever multiplies by decays a <= 1 (no exp of positive cumulative sums, so nothing
can overflow however large delta * |A| gets). Its backward is the same scan run in reverse, so
autograd stores a and h only, not one graph node per step.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F


def _chunked_scan(a: torch.Tensor, x: torch.Tensor, h0: Optional[torch.Tensor],
                  chunk_size: Optional[int] = None, reverse: bool = False) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + x_t along dim 1 of a, x: (B, L, M); h0: (B, M) or None -> h (B, L, M).

    ``reverse`` runs the transposed recurrence g_t = x_t + a_{t+1} g_{t+1} (g_L = 0) that the
    backward needs, without flipping or shifting copies of a and x.
    """
    Bsz, L, M = x.shape
    # ~sqrt(L) steps per chunk balances the loops; a power of two avoids padding usual lengths
    Q = chunk_size or 2 ** round(math.log2(max(L, 1)) / 2)
    nc = -(-L // Q)
    pad = nc * Q - L
    if pad:  # padded steps (a=1, x=0) come after the real ones and are cut off below
        a = F.pad(a, (0, 0, 0, pad), value=1.0)
        x = F.pad(x, (0, 0, 0, pad))
    a = a.reshape(Bsz, nc, Q, M)  # (B, chunk, step-in-chunk, M)
    x = x.reshape(Bsz, nc, Q, M)
    steps = range(Q - 1, -1, -1) if reverse else range(Q)
    first, *rest = steps
    # 1) every chunk scanned from a zero state, all chunks at once; `span` = product of the a's
    #    applied inside a chunk (forward: a_0..a_{Q-1}; reverse: a_1..a_{Q-1})
    h = torch.empty_like(x)
    h[:, :, first] = x[:, :, first]
    span = a[:, :, 0].clone() if not reverse else torch.ones_like(x[:, :, 0])  # (B, nc, M)
    prev = first
    for j in rest:
        coef = a[:, :, prev] if reverse else a[:, :, j]
        torch.addcmul(x[:, :, j], coef, h[:, :, prev], out=h[:, :, j])
        span.mul_(coef)
        prev = j
    # 2) the state entering each chunk, carried across chunks on small (B, M) tensors
    carry = h0 if h0 is not None else torch.zeros_like(x[:, 0, 0])
    entering = [carry] * nc
    for c in (range(nc - 1, -1, -1) if reverse else range(nc)):
        entering[c] = carry
        if reverse:  # g at the chunk's first step, times the a that links it to the chunk before
            carry = a[:, c, 0] * (h[:, c, 0] + span[:, c] * carry)
        else:
            carry = h[:, c, -1] + span[:, c] * carry
    # 3) each position adds its chunk's entering state, decayed to it: a <= 1, nothing overflows
    carry = torch.stack(entering, dim=1)  # (B, nc, M)
    for j in steps:
        if not reverse:
            carry = carry * a[:, :, j]
        h[:, :, j] += carry
        if reverse:
            carry = carry * a[:, :, j]
    return h.reshape(Bsz, nc * Q, M)[:, :L]


class _LinearScan(torch.autograd.Function):
    """Autograd for h_t = a_t h_{t-1} + x_t with a hand-written backward (a reverse scan)."""

    @staticmethod
    def forward(ctx, a, x, h0, chunk_size):
        h = _chunked_scan(a, x, h0, chunk_size)
        ctx.save_for_backward(a, h, h0)
        ctx.chunk_size = chunk_size
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h, h0 = ctx.saved_tensors
        # g_t = dL/dh_t in total = grad_h_t + a_{t+1} g_{t+1}; then dx_t = g_t, da_t = g_t h_{t-1}
        g = _chunked_scan(a, grad_h, None, ctx.chunk_size, reverse=True)
        grad_a = torch.empty_like(g)
        torch.mul(g[:, 1:], h[:, :-1], out=grad_a[:, 1:])
        if h0 is not None:
            torch.mul(g[:, 0], h0, out=grad_a[:, 0])
        else:
            grad_a[:, 0] = 0
        grad_h0 = a[:, 0] * g[:, 0] if h0 is not None and ctx.needs_input_grad[2] else None
        return grad_a, g, grad_h0, None


def linear_scan(a: torch.Tensor, x: torch.Tensor, h0: Optional[torch.Tensor] = None,
                chunk_size: Optional[int] = None) -> torch.Tensor:
    """All states of h_t = a_t * h_{t-1} + x_t. a, x: (B, L, M); h0: (B, M) or None (zeros).

    ``chunk_size`` None picks ~sqrt(L). Returns h: (B, L, M).
    """
    return _LinearScan.apply(a.contiguous(), x.contiguous(), h0, chunk_size)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan in ``selective_scan_fn``'s layout (plus ``initial_state``, which it lacks).

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,);
    initial_state: (B, D, N). Computes in at least float32 (float64 stays float64).
    Returns y (B, D, L) in u's dtype, and the last state (B, D, N) if ``return_last_state``.
    """
    dtype_in = u.dtype
    dt = torch.promote_types(dtype_in, torch.float32)
    Bsz, Dn, L = u.shape
    N = A.shape[1]
    u, delta = u.to(dt), delta.to(dt)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    delta_t = delta.transpose(1, 2)  # (B, L, D)
    decay = torch.exp(delta_t[..., None] * A.to(dt))  # (B, L, D, N): exp(delta A) in (0, 1]
    B_t = B.to(dt).transpose(1, 2)  # (B, L, N)
    C_t = C.to(dt).transpose(1, 2)  # (B, L, N)
    drive = (delta_t * u.transpose(1, 2))[..., None] * B_t[:, :, None, :]  # (B, L, D, N)
    h0 = None if initial_state is None else initial_state.to(dt).reshape(Bsz, Dn * N)
    h = linear_scan(decay.reshape(Bsz, L, Dn * N), drive.reshape(Bsz, L, Dn * N), h0, chunk_size)
    h = h.view(Bsz, L, Dn, N)  # (B, L, D, N)
    y = torch.einsum("bldn,bln->bdl", h, C_t)  # (B, D, L)
    if D is not None:
        y = y + D.to(dt)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dt))
    y = y.to(dtype_in)
    return (y, h[:, -1]) if return_last_state else y
