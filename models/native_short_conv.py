"""The short convolution + SiLU as one fused CPU pass (models/native/short_conv.c): Mamba, Mamba-2, Gated DeltaNet.

Same function as the shifted multiply-adds of ``causal_conv_silu`` (models/short_conv.py), which stay the
reference and the path for other dtypes and devices. Saved for the backward: the inputs only (the
pre-activation is recomputed, W multiply-adds per element).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from models.native_build import I64, P, library, pointers, run_rows, supports


def _library() -> Optional[ctypes.CDLL]:
    return library("short_conv", sc_forward=[P, P, P, P, I64, I64], sc_backward=[P, P, P, P, P, I64, I64])


def usable(*tensors: Optional[torch.Tensor]) -> bool:
    """float32 CPU inputs and a built library."""
    return supports(*tensors) and _library() is not None


class FusedConvSilu(torch.autograd.Function):
    """(x (B, T, D), taps (W, D), bias (D) or None, left (B, W-1, D) or None) -> silu(causal conv) (B, T, D)."""

    @staticmethod
    def forward(ctx, x, taps, bias, left):
        x = x if x.stride(-1) == 1 else x.contiguous()
        taps = taps.contiguous()
        left = None if left is None else left.contiguous()
        B, T, D = x.shape
        dims = (B, T, D, taps.shape[0], left is not None, bias is not None)
        inputs = [x, left, taps, bias]
        y = x.new_empty(B, T, D)
        run_rows(_library().sc_forward, B, (ctypes.c_int64 * 6)(*dims), (ctypes.c_int64 * 2)(*x.stride()[:2]),
                 pointers(inputs), y.data_ptr())
        ctx.save_for_backward(*inputs)
        ctx.dims = dims
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, left, taps, bias = ctx.saved_tensors
        B, T, D, W = ctx.dims[:4]
        gx, params = x.new_empty(B, T, D), x.new_empty(B, W + 1, D)
        gleft = None if left is None else x.new_empty(B, W - 1, D)
        gy = grad_y.contiguous()  # bound to a name: a temporary's memory would be freed before the call
        run_rows(_library().sc_backward, B, (ctypes.c_int64 * 6)(*ctx.dims), (ctypes.c_int64 * 2)(*x.stride()[:2]),
                 pointers([x, left, taps, bias]), gy.data_ptr(), pointers([gx, gleft, params]))
        params = params.sum(0)
        return gx, params[:W], None if bias is None else params[W], gleft


# Under torch.compile (trainer.compile) the C call is opaque to dynamo: a graph break around it, as the scans.
@torch.compiler.disable
def fused_conv_silu(x: torch.Tensor, taps: torch.Tensor, bias: Optional[torch.Tensor],
                    left: Optional[torch.Tensor]) -> torch.Tensor:
    return FusedConvSilu.apply(x, taps, bias, left)
