"""Static NTK-aware scaling: base' = base * s^(dim/(dim-2)).

The exponent makes the slowest pair exactly theta/s (interpolated) while the fastest is unchanged.
"""

from __future__ import annotations

import torch

from models.pos import pos_rule
from models.pos.base import base_inv_freq, require_rotary_dim_above_2


@pos_rule("ntk")
def ntk(dim: int, base: float, *, factor: float = 1.0, **_: object) -> tuple[torch.Tensor, float]:
    require_rotary_dim_above_2("ntk", dim)
    return base_inv_freq(dim, base * factor ** (dim / (dim - 2))), 1.0
