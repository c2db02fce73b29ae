"""Position interpolation (Chen et al. 2023): theta_i / s, i.e. positions squeezed by s."""

from __future__ import annotations

import torch

from models.pos import pos_rule
from models.pos.base import base_inv_freq


@pos_rule("linear")
def linear(dim: int, base: float, *, factor: float = 1.0, **_: object) -> tuple[torch.Tensor, float]:
    return base_inv_freq(dim, base) / factor, 1.0
