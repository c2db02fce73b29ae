"""YaRN (Peng et al. 2023): keep fast pairs, interpolate slow pairs by s, ramp in between.

The ramp uses the *original* length (transformers >= 4.5x; 4.4x used the extended one).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from models.pos import pos_rule
from models.pos.base import base_inv_freq, require_field


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's sqrt(1/t) = 0.1 * mscale * ln s + 1 (1 when not extending)."""
    return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_correction_range(
    dim: int, base: float, original_len: int, beta_fast: float, beta_slow: float, truncate: bool
) -> tuple[float, float]:
    """Pair indices [low, high] between which YaRN ramps from extrapolation to interpolation.

    c(r) is the pair whose wavelength fits r full turns into the original context.
    """

    def c(rotations: float) -> float:
        return dim * math.log(original_len / (2 * math.pi * rotations)) / (2 * math.log(base))

    low, high = c(beta_fast), c(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def check(cfg: Any) -> None:
    require_field(cfg, "original_max_position_embeddings", "the pre-extension length L_orig, an int >= 1")
    if cfg.beta_slow <= 0:
        raise ValueError(f"model.pos.beta_slow={cfg.beta_slow} must be > 0 (a number of rotations)")
    if cfg.beta_fast <= cfg.beta_slow:
        raise ValueError(
            f"model.pos.beta_fast={cfg.beta_fast} must be > model.pos.beta_slow={cfg.beta_slow} "
            "(defaults 32 > 1)"
        )
    if (cfg.mscale is None) != (cfg.mscale_all_dim is None):
        raise ValueError(
            f"model.pos.mscale={cfg.mscale}, model.pos.mscale_all_dim={cfg.mscale_all_dim}: "
            "set both (factor = m(s, mscale) / m(s, mscale_all_dim)) or neither"
        )
    for name in ("mscale", "mscale_all_dim"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ValueError(f"model.pos.{name}={value} must be None or > 0")


@pos_rule("yarn", check=check)
def yarn(
    dim: int,
    base: float,
    *,
    factor: float = 1.0,
    original_max_position_embeddings: Optional[int] = None,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
    mscale: Optional[float] = None,
    mscale_all_dim: Optional[float] = None,
    attention_factor: Optional[float] = None,
    **_: object,
) -> tuple[torch.Tensor, float]:
    if original_max_position_embeddings is None:
        raise ValueError("rule 'yarn' needs original_max_position_embeddings (L_orig)")
    theta = base_inv_freq(dim, base)
    low, high = yarn_correction_range(dim, base, original_max_position_embeddings, beta_fast, beta_slow, truncate)
    if low == high:
        high += 0.001  # avoid 0/0 in the ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0.0, 1.0)
    inv_freq = (theta / factor) * ramp + theta * (1.0 - ramp)
    if attention_factor is None:
        if mscale is not None and mscale_all_dim is not None:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    return inv_freq, float(attention_factor)
