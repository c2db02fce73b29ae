"""Model families by name (models/families/, one module each): the config class and the module."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.families import FAMILIES
from models.lm import DTYPES


def config_class(family: str) -> type:
    """The ``model.*`` dataclass of ``family`` (a ValueError naming model.family and the allowed names)."""
    return FAMILIES.get(family).config_class


def build_model(cfg: Any) -> nn.Module:
    """Instantiate the module for a validated family config dataclass, in ``cfg.dtype`` when set.

    Floating parameters are created in that dtype directly (no float32 copy first); tensors a
    family pins explicitly (Mamba's A_log and D, RoPE tables) keep their own dtype.
    """
    family = FAMILIES.get(cfg.family)
    dtype = getattr(cfg, "dtype", None)
    if dtype is None:
        return family(cfg)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[dtype])
    try:
        return family(cfg)
    finally:
        torch.set_default_dtype(previous)
