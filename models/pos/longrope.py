"""LongRoPE (Ding et al. 2024): searched per-pair factors, the long set once past L_orig."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from models.pos import pos_rule
from models.pos.base import base_inv_freq, require_field


def longrope_scale(
    factor: float, original_max_position_embeddings: int, max_position_embeddings: Optional[int]
) -> float:
    """s for LongRoPE's attention factor: ``factor`` when set, else L_max / L_orig (Phi-3 configs)."""
    if factor != 1.0 or max_position_embeddings is None:
        return factor
    return max_position_embeddings / original_max_position_embeddings


def check(cfg: Any) -> None:
    require_field(cfg, "original_max_position_embeddings", "the pre-extension length L_orig, an int >= 1")
    for name in ("short_factor", "long_factor"):
        require_field(cfg, name, "a list of rotary_dim/2 positive floats")
        value = list(getattr(cfg, name))
        if not value or any(x <= 0 for x in value):
            raise ValueError(f"model.pos.{name}={value} must be a non-empty list of positive floats")
    if len(cfg.short_factor) != len(cfg.long_factor):
        raise ValueError(
            f"model.pos.long_factor=<a list of length {len(cfg.long_factor)}> but model.pos.short_factor "
            f"has length {len(cfg.short_factor)}; both must have rotary_dim/2 entries"
        )
    if cfg.factor != 1.0 and cfg.max_position_embeddings is not None:
        implied = cfg.max_position_embeddings / cfg.original_max_position_embeddings
        if not math.isclose(cfg.factor, implied):
            raise ValueError(
                f"model.pos.factor={cfg.factor} disagrees with model.pos.max_position_embeddings / "
                f"original_max_position_embeddings = {implied:g}; set one of them, or make them agree"
            )


@pos_rule("longrope", length_dependent=True, check=check)
def longrope(
    dim: int,
    base: float,
    *,
    factor: float = 1.0,
    original_max_position_embeddings: Optional[int] = None,
    max_position_embeddings: Optional[int] = None,
    short_factor: Optional[list[float]] = None,
    long_factor: Optional[list[float]] = None,
    attention_factor: Optional[float] = None,
    seq_len: Optional[int] = None,
    **_: object,
) -> tuple[torch.Tensor, float]:
    if original_max_position_embeddings is None:
        raise ValueError("rule 'longrope' needs original_max_position_embeddings (L_orig)")
    for name, value in (("short_factor", short_factor), ("long_factor", long_factor)):
        if value is None or len(value) != dim // 2:  # needs head_dim, so checked here, not in check()
            got = None if value is None else f"a list of length {len(value)}"
            raise ValueError(
                f"model.pos.{name}={got}: rule 'longrope' needs a list of rotary_dim/2 = {dim // 2} factors"
            )
    long = seq_len is not None and seq_len > original_max_position_embeddings
    ext = torch.tensor([float(x) for x in (long_factor if long else short_factor)], dtype=torch.float64)
    if attention_factor is None:
        original = original_max_position_embeddings
        s = longrope_scale(factor, original, max_position_embeddings)
        attention_factor = 1.0 if s <= 1.0 else math.sqrt(1 + math.log(s) / math.log(original))
    return base_inv_freq(dim, base) / ext, float(attention_factor)
