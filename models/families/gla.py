"""Gated linear attention (GLA) as a language model: fla-style blocks (norm, mixer, norm, SwiGLU)
between an embedding and a head.

The mixer (models/mixers/gla.py) runs fla's kernels on CUDA when they import and the chunked pure-PyTorch
form otherwise; the decode "cache" is one constant-size state per layer.
"""

from __future__ import annotations

from models.families import FAMILIES
from models.lm import DecoderLM
from models.mixers.gla import GLAConfig

__all__ = ["GLAConfig", "GLALM"]


@FAMILIES.register("gla")
class GLALM(DecoderLM):
    """forward(input_ids (B, T), cache=None) -> logits (B, T, V)."""

    config_class = GLAConfig

    def __init__(self, cfg: GLAConfig) -> None:
        super().__init__()
        self.build(cfg, ["gla"] * cfg.n_layers)
        self.init_embed_and_head(cfg.init_std, cfg.tie_embeddings)
