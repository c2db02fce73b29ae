"""Model families by name: config dataclass and module. A new family registers one entry."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.hybrid import Hybrid, HybridConfig
from models.lm import DTYPES
from models.mamba import MambaConfig, MambaLM
from models.transformer import Transformer, TransformerConfig

FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "transformer": (TransformerConfig, Transformer),
    "mamba": (MambaConfig, MambaLM),
    "hybrid": (HybridConfig, Hybrid),
}


def config_class(family: str) -> type:
    if family not in FAMILIES:
        raise ValueError(f"model.family={family!r} is not a known family; allowed: {sorted(FAMILIES)}")
    return FAMILIES[family][0]


def build_model(cfg: Any) -> nn.Module:
    """Instantiate the module for a validated family config dataclass, in ``cfg.dtype`` when set.

    Floating parameters are created in that dtype directly (no float32 copy first); tensors a
    family pins explicitly (Mamba's A_log and D, RoPE tables) keep their own dtype.
    """
    dtype = getattr(cfg, "dtype", None)
    if dtype is None:
        return FAMILIES[cfg.family][1](cfg)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[dtype])
    try:
        return FAMILIES[cfg.family][1](cfg)
    finally:
        torch.set_default_dtype(previous)
