"""RoPE (Su et al. 2021): theta_i = base^(-2i/dim), no extension."""

from __future__ import annotations

import torch

from models.pos import pos_rule
from models.pos.base import base_inv_freq


@pos_rule("rope", uses_factor=False)
def rope(dim: int, base: float, **_: object) -> tuple[torch.Tensor, float]:
    return base_inv_freq(dim, base), 1.0
