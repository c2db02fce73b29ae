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


class ShortConv(nn.Conv1d):
    def __init__(self, dim: int, width: int, bias: bool = False) -> None:
        super().__init__(dim, dim, width, groups=dim, padding=0, bias=bias)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D); state (B, D, W-1): the inputs before x, None for zeros -> (y (B, T, D), new state)."""
        xt = x.transpose(1, 2)  # (B, D, T)
        W = self.kernel_size[0]
        if state is None:
            state = xt.new_zeros(xt.shape[0], xt.shape[1], W - 1)
        ctx = torch.cat((state.to(xt.dtype), xt), dim=2)  # (B, D, W-1+T)
        y = F.silu(F.conv1d(ctx, self.weight, self.bias, groups=self.in_channels))  # (B, D, T)
        return y.transpose(1, 2), ctx[:, :, ctx.shape[2] - (W - 1):]
