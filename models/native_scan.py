"""The fused CPU selective scan (models/native/selective_scan.c, built by models/native_build.py).

The PyTorch scan (models/scan.py) is bound by memory passes over (B, N, D) states, about 2/3 of a Mamba training
step on CPU; the C loop keeps one batch row's state in cache for the whole sequence. Float32 only; where it did
not build, models/scan.py runs its own scans.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch
import torch.nn.functional as F

from models.native_build import I64, P, library, pointers, run_rows, supports

SOFTPLUS_THRESHOLD = 20.0  # F.softplus's: above it softplus(x) = x


def _library() -> Optional[ctypes.CDLL]:
    return library("selective_scan", ss_forward=[P, P, P, P, I64, I64], ss_backward=[P, P, P, P, P, P, I64, I64])


def available() -> bool:
    """True where the fused scan built (or was cached) on this machine; LONGCTX_NATIVE=0 turns it off."""
    return _library() is not None


def usable(*tensors: Optional[torch.Tensor]) -> bool:
    """float32 CPU inputs and a built library."""
    return supports(*tensors) and available()


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, X, L) -> a (B, L, X) view with unit stride on X (a copy only where the input lacks it)."""
    rows = t.transpose(1, 2)
    return rows if rows.stride(2) == 1 else rows.contiguous()


class NativeScan(torch.autograd.Function):
    """selective_scan's contract (models/scan.py) for float32 CPU tensors: (y (B, D, L), last state (B, D, N))."""

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, D, z, bias, h0, softplus):
        raw = _rows(delta)
        if bias is not None:
            raw = raw + bias
        dl = F.softplus(raw) if softplus else raw  # (B, L, D); the scan takes the step size itself
        rows = [_rows(u), dl if dl.stride(2) == 1 else dl.contiguous(), _rows(Bm), _rows(Cm),
                None if z is None else _rows(z)]
        At, D = A.t().contiguous(), None if D is None else D.contiguous()  # states are (N, D) in the scan
        h0 = None if h0 is None else h0.transpose(1, 2).contiguous()
        Bsz, L, Dn = rows[0].shape
        N = A.shape[1]
        dims = (ctypes.c_int64 * 7)(Bsz, L, Dn, N, D is not None, z is not None, h0 is not None)
        pairs = [(t.stride(0), t.stride(1)) if t is not None else (0, 0) for t in rows]
        strides = (ctypes.c_int64 * 10)(*[s for pair in pairs for s in pair])
        ins = [rows[0], rows[1], At, rows[2], rows[3], D, rows[4], h0]
        y = u.new_empty(Bsz, L, Dn)
        last = u.new_empty(Bsz, N, Dn)
        run_rows(_library().ss_forward, Bsz, dims, strides, pointers(ins), pointers([y, last]))
        # raw (delta + bias, before the softplus) is kept, not the step sizes: the backward recomputes them
        ctx.save_for_backward(ins[0], raw, *ins[2:])
        ctx.shape, ctx.strides, ctx.softplus, ctx.has_bias = tuple(dims), tuple(strides), softplus, bias is not None
        return y.transpose(1, 2), last.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        u, raw, At, Bm, Cm, D, z, h0 = ctx.saved_tensors
        dl = F.softplus(raw) if ctx.softplus else raw
        dl = dl if dl.stride(2) == 1 else dl.contiguous()
        ins = [u, dl, At, Bm, Cm, D, z, h0]
        Bsz, L, Dn = u.shape
        N = At.shape[0]
        strides = list(ctx.strides)
        strides[2:4] = dl.stride(0), dl.stride(1)
        gy = torch.zeros_like(u) if grad_y is None else grad_y.transpose(1, 2).contiguous()
        glast = None if grad_last is None else grad_last.transpose(1, 2).contiguous()  # (B, N, D)
        du, ddl = u.new_empty(Bsz, L, Dn), u.new_empty(Bsz, L, Dn)
        dz = u.new_empty(Bsz, L, Dn) if z is not None else du  # never written without z
        dB, dC = u.new_empty(Bsz, L, N), u.new_empty(Bsz, L, N)
        dA, dD, dh0 = u.new_empty(Bsz, N, Dn), u.new_empty(Bsz, Dn), u.new_empty(Bsz, N, Dn)
        run_rows(_library().ss_backward, Bsz, (ctypes.c_int64 * 7)(*ctx.shape), (ctypes.c_int64 * 10)(*strides),
             pointers(ins), gy.data_ptr(), None if glast is None else glast.data_ptr(),
             pointers([du, ddl, dz, dB, dC, dA, dD, dh0]))
        if ctx.softplus:  # d softplus(x) / dx = sigmoid(x), and 1 above F.softplus's threshold, where it is x
            ddl = ddl * torch.where(raw > SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(raw))
        t = lambda g: g.transpose(1, 2)  # noqa: E731  (B, L, X) -> (B, X, L), the inputs' shapes
        return (t(du), t(ddl), dA.sum(0).t(), t(dB), t(dC), None if D is None else dD.sum(0),
                None if z is None else t(dz), ddl.sum((0, 1)) if ctx.has_bias else None,
                None if h0 is None else dh0.transpose(1, 2), None)
