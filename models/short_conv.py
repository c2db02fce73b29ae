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


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     left: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(depthwise causal conv) over x (B, T, D), weight (D, 1, W), computed in x's (B, T, D) layout.

    ``left`` (B, W-1, D): the inputs before x (zeros when None). Returns y (B, T, D) and the context
    (B, W-1+T, D), left then x, whose last columns are the next call's ``left``.

    On CPU this is a few multiply-adds of shifted slices rather than F.conv1d: the (B, D, T) layout
    conv1d wants costs a transpose each way, and its depthwise backward (and SiLU's backward on
    gradients whose strides differ from its input's) run several times slower than the arithmetic.
    """
    T, W = x.shape[1], weight.shape[-1]
    ctx = F.pad(x, (0, 0, W - 1, 0)) if left is None else torch.cat((left.to(x.dtype), x), dim=1)
    taps = weight[:, 0].t()  # (W, D): tap i multiplies ctx[t + i] (conv1d is a cross-correlation)
    y = ctx[:, W - 1:] * taps[W - 1] if bias is None else torch.addcmul(bias, ctx[:, W - 1:], taps[W - 1])
    for i in range(W - 1):
        y.addcmul_(ctx[:, i:i + T], taps[i])
    return F.silu(y), ctx


class ShortConv(nn.Conv1d):
    def __init__(self, dim: int, width: int, bias: bool = False) -> None:
        super().__init__(dim, dim, width, groups=dim, padding=0, bias=bias)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D); state (B, D, W-1): the inputs before x, None for zeros -> (y (B, T, D), new state)."""
        W = self.kernel_size[0]
        y, ctx = causal_conv_silu(x, self.weight, self.bias, None if state is None else state.transpose(1, 2))
        return y, ctx[:, ctx.shape[1] - (W - 1):].transpose(1, 2)
