"""The gated RMSNorm as one fused CPU pass each way (models/native/gated_norm.c): Mamba-2's rmsnorm(y silu(z)) w
(``gate_first``) and fla's FusedRMSNormGated rmsnorm(y) w silu(z) (Gated DeltaNet's output norm).

The PyTorch forms (``GatedRMSNorm`` in models/mixers/mamba2.py and gated_deltanet.py) stay the reference and the
path for other dtypes and devices. Saved for the backward: the inputs and one 1/rms per row.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from models.native_build import I64, P, library, run_rows, supports


def _library() -> Optional[ctypes.CDLL]:
    return library("gated_norm", gn_forward=[P, P, P, P, P, P, P, P, I64, I64],
                   gn_backward=[P, P, P, P, P, P, P, P, P, P, P, I64, I64])


def usable(*tensors: Optional[torch.Tensor]) -> bool:
    """float32 CPU inputs and a built library."""
    return supports(*tensors) and _library() is not None


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, T, G, C) with unit stride on C and groups adjacent, as the kernel reads it (a copy only otherwise)."""
    return t if t.stride(3) == 1 and t.stride(2) == t.shape[3] else t.contiguous()


class FusedGatedRMSNorm(torch.autograd.Function):
    """(y, z (B, T, G, C), weight (G C), eps, gate_first) -> (B, T, G, C)."""

    @staticmethod
    def forward(ctx, y, z, weight, eps, gate_first):
        y, z, weight = _rows(y), _rows(z), weight.contiguous()
        B, T, G, C = y.shape
        ctx.dims = (ctypes.c_int64 * 4)(T, G, C, int(gate_first))
        ctx.st = (ctypes.c_int64 * 4)(*y.stride()[:2], *z.stride()[:2])
        ctx.eps = (ctypes.c_float * 1)(eps)
        out, rstd = y.new_empty(B, T, G, C), y.new_empty(B, T, G)
        run_rows(_library().gn_forward, B, ctx.dims, ctx.st, ctx.eps, y.data_ptr(), z.data_ptr(), weight.data_ptr(),
                 out.data_ptr(), rstd.data_ptr())
        ctx.save_for_backward(y, z, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        y, z, weight, rstd = ctx.saved_tensors
        B, T, G, C = y.shape
        go = grad_out.contiguous()  # bound to a name: a temporary's memory would be freed before the call
        dy, dz, dw = y.new_empty(B, T, G, C), y.new_empty(B, T, G, C), y.new_empty(B, G * C)
        run_rows(_library().gn_backward, B, ctx.dims, ctx.st, ctx.eps, y.data_ptr(), z.data_ptr(), weight.data_ptr(),
                 rstd.data_ptr(), go.data_ptr(), dy.data_ptr(), dz.data_ptr(), dw.data_ptr())
        return dy, dz, dw.sum(0), None, None


# Under torch.compile (trainer.compile) the C call is opaque to dynamo: a graph break around it, as the scans.
@torch.compiler.disable
def fused_gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float,
                         gate_first: bool) -> torch.Tensor:
    return FusedGatedRMSNorm.apply(y, z, weight, eps, gate_first)
