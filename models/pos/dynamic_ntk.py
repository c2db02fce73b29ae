"""Dynamic NTK (HF ``dynamic``): base' = base * (s L'/L_max - (s-1))^(dim/(dim-2)), L' = max(L, L_max).

Up to L_max the bracket is 1, so it is plain RoPE there and switches back once under it.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from models.pos import pos_rule
from models.pos.base import base_inv_freq, require_field, require_rotary_dim_above_2


def check(cfg: Any) -> None:
    require_field(cfg, "max_position_embeddings", "the trained length L_max, an int >= 1")


@pos_rule("dynamic_ntk", length_dependent=True, check=check)
def dynamic_ntk(
    dim: int,
    base: float,
    *,
    factor: float = 1.0,
    max_position_embeddings: Optional[int] = None,
    seq_len: Optional[int] = None,
    **_: object,
) -> tuple[torch.Tensor, float]:
    require_rotary_dim_above_2("dynamic_ntk", dim)
    if max_position_embeddings is None:
        raise ValueError("rule 'dynamic_ntk' needs max_position_embeddings (L_max, the trained length)")
    length = max(seq_len or max_position_embeddings, max_position_embeddings)
    scale = factor * length / max_position_embeddings - (factor - 1)
    return base_inv_freq(dim, base * scale ** (dim / (dim - 2))), 1.0
