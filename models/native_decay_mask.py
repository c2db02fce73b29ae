"""The inside-a-chunk product of the SSD, W v, with its decay mask as one fused CPU pass each way
(models/native/decay_mask.c), for models/ssd_chunked.py:

    W_r[t, s] = S[t, s] exp(b_r[t] - b_r[s]) for s <= t (0 above the diagonal), S shared by the R heads of a group.

The products with v are torch's batched matmuls. The same function in torch ops is
``decay_mask_product_reference`` (the tests' reference and the path off float32 CPU).
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from models.native_build import I64, P, library, run_rows, supports


def _library() -> Optional[ctypes.CDLL]:
    return library("decay_mask", dm_forward=[P, P, P, P, I64, I64], dm_backward=[P, P, P, P, P, P, I64, I64])


def usable(*tensors: Optional[torch.Tensor]) -> bool:
    """float32 CPU inputs and a built library."""
    return supports(*tensors) and _library() is not None


def _mask(S: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    M, R, Q = b.shape
    W = S.new_empty(M, R, Q, Q)
    run_rows(_library().dm_forward, M, (ctypes.c_int64 * 2)(R, Q), S.data_ptr(), b.data_ptr(), W.data_ptr())
    return W


class FusedDecayMaskProduct(torch.autograd.Function):
    """(S (M, Q, Q), b (M, R, Q), v (M, R, Q, P)) -> W v (M, R, Q, P); M independent blocks (batch x group x
    chunk). Saves S, b and v only: the backward recomputes W (one cheap pass) rather than keep a (Q x Q) matrix
    per head and chunk alive from the forward (at T = 2048 that was Mamba-2's peak memory, 1.8x a transformer's)."""

    @staticmethod
    def forward(ctx, S, b, v):
        S, b = S.contiguous(), b.contiguous()
        ctx.save_for_backward(S, b, v)
        return _mask(S, b) @ v

    @staticmethod
    def backward(ctx, grad_y):
        S, b, v = ctx.saved_tensors
        M, R, Q = b.shape
        W = _mask(S, b)
        grad_v = W.transpose(-1, -2) @ grad_y
        del W
        grad_W = grad_y @ v.transpose(-1, -2)  # contiguous: bound to a name, alive through the C call
        dS, db = torch.empty_like(S), torch.empty_like(b)
        run_rows(_library().dm_backward, M, (ctypes.c_int64 * 2)(R, Q), S.data_ptr(), b.data_ptr(),
                 grad_W.data_ptr(), dS.data_ptr(), db.data_ptr())
        return dS, db, grad_v


def decay_mask_reference(S: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """W in torch ops (any dtype / device)."""
    Q = S.shape[-1]
    causal = torch.ones(Q, Q, dtype=torch.bool, device=S.device).tril()
    diff = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf"))
    return S[:, None] * torch.exp(diff)


def decay_mask_product_reference(S: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W v in torch ops (the path off float32 CPU)."""
    return decay_mask_reference(S, b) @ v


# Under torch.compile (trainer.compile) the C call is opaque to dynamo: a graph break around it, as the scans.
@torch.compiler.disable
def fused_decay_mask_product(S: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return FusedDecayMaskProduct.apply(S, b, v)
