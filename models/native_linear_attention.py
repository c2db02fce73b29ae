"""Decayed linear attention as one fused CPU recurrence (models/native/decayed_attention.c): GLA, retention, Mamba-2.

Same function as ``chunked_decayed_attention`` (models/linear_attention.py), which stays the reference and the
path for other dtypes and devices: on float32 CPU tensors, where the C file built (models/native_build.py), the
recurrence runs per (batch, head) with its K x V state in cache, instead of a chunk's decay masks and small
matmuls. Saved for the backward: the inputs only (the states are recomputed a chunk at a time).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from models.native_build import F32, I64, P, library, pointers, run_rows, supports


def _library() -> Optional[ctypes.CDLL]:
    return library("decayed_attention", da_forward=[P, F32, P, P, P, I64, I64],
                   da_backward=[P, F32, P, P, P, P, P, I64, I64])


def usable(*tensors: Optional[torch.Tensor]) -> bool:
    """float32 CPU inputs and a built library."""
    return supports(*tensors) and _library() is not None


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class FusedDecayedAttention(torch.autograd.Function):
    """(q, k (B, H, T, K), v (B, H, T, V), g (B, H, T, K) or (B, H, T), scale, S0 (B, H, K, V) or None)
    -> (o (B, H, T, V), S_T (B, H, K, V))."""

    @staticmethod
    def forward(ctx, q, k, v, g, scale, s0):
        per_channel = g.dim() == 4
        q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
        g4 = _unit_last(g if per_channel else g.unsqueeze(-1))
        B, H, T, K = q.shape
        V = v.shape[-1]
        vk = K > V  # the state stored V x K: the loops run over the longer axis (models/native/decayed_attention.c)
        s0 = None if s0 is None else (s0.transpose(-1, -2) if vk else s0).contiguous()
        dims = (B, H, T, K, V, per_channel, s0 is not None, vk)
        strides = [s for t in (q, k, v, g4) for s in t.stride()[:3]]
        o, last = q.new_empty(B, H, T, V), q.new_empty(B, H, V, K) if vk else q.new_empty(B, H, K, V)
        lib = _library()
        run_rows(lib.da_forward, B * H, (ctypes.c_int64 * 8)(*dims), float(scale), (ctypes.c_int64 * 12)(*strides),
                 pointers([q, k, v, g4, s0]), pointers([o, last]))
        ctx.save_for_backward(q, k, v, g4, s0)
        ctx.dims, ctx.strides, ctx.scale, ctx.per_channel = dims, strides, float(scale), per_channel
        return o, last.transpose(-1, -2) if vk else last

    @staticmethod
    def backward(ctx, grad_o, grad_last):
        q, k, v, g4, s0 = ctx.saved_tensors
        B, H, T, K, V = ctx.dims[:5]
        vk = ctx.dims[7]
        go = q.new_zeros(B, H, T, V) if grad_o is None else grad_o.contiguous()
        glast = None if grad_last is None else (grad_last.transpose(-1, -2) if vk else grad_last).contiguous()
        dq, dk, dv = q.new_empty(B, H, T, K), q.new_empty(B, H, T, K), q.new_empty(B, H, T, V)
        dg, ds0 = q.new_empty(B, H, T, g4.shape[-1]), q.new_empty(B, H, V, K) if vk else q.new_empty(B, H, K, V)
        run_rows(_library().da_backward, B * H, (ctypes.c_int64 * 8)(*ctx.dims), ctx.scale,
                 (ctypes.c_int64 * 12)(*ctx.strides), pointers([q, k, v, g4, s0]), go.data_ptr(),
                 None if glast is None else glast.data_ptr(), pointers([dq, dk, dv, dg, ds0]))
        if vk:
            ds0 = ds0.transpose(-1, -2)
        return dq, dk, dv, dg if ctx.per_channel else dg.squeeze(-1), None, None if s0 is None else ds0


# Under torch.compile (trainer.compile) the C call is opaque to dynamo: a graph break around it, as Mamba's scan.
@torch.compiler.disable
def fused_decayed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float,
                            initial_state: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return FusedDecayedAttention.apply(q, k, v, g, scale, initial_state)
