"""The gated delta rule as one fused CPU recurrence (models/native/gated_delta_rule.c): Gated DeltaNet.

Same function as ``gated_delta_rule`` (models/delta_rule.py), which stays the reference and the path for other
dtypes and devices: on float32 CPU tensors, where the C file built (models/native_build.py), the recurrence
runs per (batch, head) with its K x V state in cache instead of the chunked WY form's triangular solves and
small matmuls. Takes fla's layout like models/delta_rule.py: q, k (B, T, H, K), v (B, T, H, V), g, beta
(B, T, H), state (B, H, K, V). Saved for the backward: the inputs only (states are recomputed by chunks).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from models.native_build import F32, I64, P, library, pointers, run_rows, supports


def _library() -> Optional[ctypes.CDLL]:
    return library("gated_delta_rule", gdr_forward=[P, F32, P, P, P, I64, I64],
                   gdr_backward=[P, F32, P, P, P, P, P, I64, I64])


def usable(*tensors: Optional[torch.Tensor]) -> bool:
    """float32 CPU inputs and a built library."""
    return supports(*tensors) and _library() is not None


def _heads_first(t: torch.Tensor) -> torch.Tensor:
    """(B, T, H, ...) -> a (B, H, T, ...) view with unit stride on the last axis (a copy only where it lacks it)."""
    t = t.transpose(1, 2)
    return t if t.dim() == 3 or t.stride(-1) == 1 else t.contiguous()


class FusedGatedDeltaRule(torch.autograd.Function):
    """(q, k (B, T, H, K), v (B, T, H, V), g, beta (B, T, H), scale, S0 (B, H, K, V) or None)
    -> (o (B, T, H, V), S_T (B, H, K, V))."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, s0):
        ins = [_heads_first(t) for t in (q, k, v, g, beta)]
        s0 = None if s0 is None else s0.contiguous()
        B, H, T, K = ins[0].shape
        V = ins[2].shape[-1]
        dims = (B, H, T, K, V, s0 is not None)
        strides = [s for t in ins for s in t.stride()[:3]]
        o, last = q.new_empty(B, H, T, V), q.new_empty(B, H, K, V)
        run_rows(_library().gdr_forward, B * H, (ctypes.c_int64 * 6)(*dims), float(scale),
                 (ctypes.c_int64 * 15)(*strides), pointers([*ins, s0]), pointers([o, last]))
        ctx.save_for_backward(*ins, s0)
        ctx.dims, ctx.strides, ctx.scale = dims, strides, float(scale)
        return o.transpose(1, 2), last

    @staticmethod
    def backward(ctx, grad_o, grad_last):
        *ins, s0 = ctx.saved_tensors
        B, H, T, K, V = ctx.dims[:5]
        q = ins[0]
        go = q.new_zeros(B, H, T, V) if grad_o is None else grad_o.transpose(1, 2).contiguous()
        glast = None if grad_last is None else grad_last.contiguous()
        dq, dk, dv = q.new_empty(B, H, T, K), q.new_empty(B, H, T, K), q.new_empty(B, H, T, V)
        dg, dbeta, ds0 = q.new_empty(B, H, T), q.new_empty(B, H, T), q.new_empty(B, H, K, V)
        run_rows(_library().gdr_backward, B * H, (ctypes.c_int64 * 6)(*ctx.dims), ctx.scale,
                 (ctypes.c_int64 * 15)(*ctx.strides), pointers([*ins, s0]), go.data_ptr(),
                 None if glast is None else glast.data_ptr(), pointers([dq, dk, dv, dg, dbeta, ds0]))
        t = lambda x: x.transpose(1, 2)  # noqa: E731  back to (B, T, H, ...)
        return t(dq), t(dk), t(dv), t(dg), t(dbeta), None, None if s0 is None else ds0


# Under torch.compile (trainer.compile) the C call is opaque to dynamo: a graph break around it, as Mamba's scan.
@torch.compiler.disable
def fused_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                           scale: float, initial_state: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return FusedGatedDeltaRule.apply(q, k, v, g, beta, scale, initial_state)
