"""ALiBi (Press et al. 2022): no rotation; a per-head linear distance bias -slope_h * (i - j)."""

from __future__ import annotations

import math

import torch

from models.pos import pos_rule


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Head slopes: geometric 2^(-8/n)..., interleaved for non powers of 2."""

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_2(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_2(closest) + power_of_2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


@pos_rule("alibi", rotary=False, uses_factor=False, slopes=alibi_slopes)
def alibi(dim: int, base: float, **_: object) -> tuple[None, float]:
    return None, 1.0
