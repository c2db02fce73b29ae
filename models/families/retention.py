"""RetNet (multi-scale retention) as a language model: fla-style blocks (norm, mixer, norm, SwiGLU)
between an embedding and a head.

The mixer (models/mixers/retention.py) runs fla's kernels on CUDA when they import and the chunked pure-PyTorch
form otherwise; the decode "cache" is one constant-size state per layer.
"""

from __future__ import annotations

from models.families import FAMILIES
from models.lm import DecoderLM
from models.mixers.retention import RetentionConfig

__all__ = ["RetentionConfig", "RetentionLM"]


@FAMILIES.register("retention")
class RetentionLM(DecoderLM):
    """forward(input_ids (B, T), cache=None) -> logits (B, T, V)."""

    config_class = RetentionConfig

    def __init__(self, cfg: RetentionConfig) -> None:
        super().__init__()
        self.build(cfg, ["retention"] * cfg.n_layers)
        self.init_embed_and_head(cfg.init_std, cfg.tie_embeddings)
