"""Mamba-2 as a language model: pre-RMSNorm Mamba-2 blocks (no MLP) between an embedding and a (tied) head.

The mixer (models/mixers/mamba2.py) runs mamba-ssm's SSD kernels on CUDA when they import and the
chunked pure-PyTorch form otherwise; the decode "cache" is one constant-size state per layer.
"""

from __future__ import annotations

from models.families import FAMILIES
from models.lm import DecoderLM
from models.mixers.mamba2 import Mamba2Config

__all__ = ["Mamba2Config", "Mamba2LM"]


@FAMILIES.register("mamba2")
class Mamba2LM(DecoderLM):
    """forward(input_ids (B, T), cache=None) -> logits (B, T, V)."""

    config_class = Mamba2Config

    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        self.build(cfg, ["mamba2"] * cfg.n_layers)
        self.init_embed_and_head(cfg.init_std, cfg.tie_embeddings)
