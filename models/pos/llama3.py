"""Llama 3.1: wavelengths beyond L_orig/low are divided by s, below L_orig/high kept, smoothed between."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from models.pos import pos_rule
from models.pos.base import base_inv_freq, require_field


def check(cfg: Any) -> None:
    require_field(cfg, "original_max_position_embeddings", "the pre-extension length L_orig, an int >= 1")
    if cfg.low_freq_factor <= 0:
        raise ValueError(f"model.pos.low_freq_factor={cfg.low_freq_factor} must be > 0 (default 1)")
    if cfg.low_freq_factor >= cfg.high_freq_factor:
        raise ValueError(
            f"model.pos.low_freq_factor={cfg.low_freq_factor} must be < "
            f"model.pos.high_freq_factor={cfg.high_freq_factor} (defaults 1 < 4)"
        )


@pos_rule("llama3", check=check)
def llama3(
    dim: int,
    base: float,
    *,
    factor: float = 1.0,
    original_max_position_embeddings: Optional[int] = None,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    **_: object,
) -> tuple[torch.Tensor, float]:
    if original_max_position_embeddings is None:
        raise ValueError("rule 'llama3' needs original_max_position_embeddings (L_orig)")
    theta = base_inv_freq(dim, base)
    wavelen = 2 * math.pi / theta
    ratio = original_max_position_embeddings / wavelen  # turns per original context
    smooth = ((ratio - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0.0, 1.0)
    # smooth is 0 in the low-frequency band (fully /s) and 1 in the high-frequency band (kept).
    return (1.0 - smooth) * theta / factor + smooth * theta, 1.0
