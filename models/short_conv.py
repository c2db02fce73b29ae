"""A depthwise causal convolution then SiLU over (B, T, D), carrying its last inputs across calls.

The short convolution of linear-attention layers (fla's ``ShortConvolution``: weight (D, 1, W), no bias by
default): y_t = silu(sum_i w_i x_{t-W+1+i}). Given the W-1 inputs before x (zeros for a fresh sequence) the
output for any split of a sequence into calls is the same, so one function serves training, chunked
prefill and one-token decode; the carried inputs are a mixer's conv state (W-1 columns, no more).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models import native_short_conv


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     left: Optional[torch.Tensor] = None, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(depthwise causal conv) over x (B, T, D), weight (D, 1, W), computed in x's (B, T, D) layout.

    ``left`` (B, W-1, D): the inputs before x (zeros when None). Returns y (B, T, D) and the last W inputs
    of the context (B, W, D), left then x, whose last W-1 are the next call's ``left``.

    With ``fused`` (model.kernel=auto) on float32 CPU tensors, the fused C pass (models/native_short_conv.py)
    where it built. Otherwise a few multiply-adds of shifted slices rather than F.conv1d: the (B, D, T)
    layout conv1d wants costs a transpose each way, and its depthwise backward (and SiLU's backward on
    gradients whose strides differ from its input's) run several times slower than the arithmetic.
    """
    T, W = x.shape[1], weight.shape[-1]
    taps = weight[:, 0].t()  # (W, D): tap i multiplies ctx[t + i] (conv1d is a cross-correlation)
    if fused and native_short_conv.usable(x, weight, bias, left):
        y = native_short_conv.fused_conv_silu(x, taps, bias, left)
        before = x.new_zeros(x.shape[0], W - 1, x.shape[2]) if left is None else left.to(x.dtype)
        return y, torch.cat((before, x[:, -W:]), dim=1)[:, -W:]
    ctx = F.pad(x, (0, 0, W - 1, 0)) if left is None else torch.cat((left.to(x.dtype), x), dim=1)
    y = ctx[:, W - 1:] * taps[W - 1] if bias is None else torch.addcmul(bias, ctx[:, W - 1:], taps[W - 1])
    for i in range(W - 1):
        y.addcmul_(ctx[:, i:i + T], taps[i])
    return F.silu(y), ctx[:, -W:]


class ShortConv(nn.Conv1d):
    def __init__(self, dim: int, width: int, bias: bool = False) -> None:
        super().__init__(dim, dim, width, groups=dim, padding=0, bias=bias)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None,
                fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D); state (B, D, W-1): the inputs before x, None for zeros -> (y (B, T, D), new state)."""
        y, last = causal_conv_silu(x, self.weight, self.bias, None if state is None else state.transpose(1, 2), fused)
        return y, last[:, 1:].transpose(1, 2)
