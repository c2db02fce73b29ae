"""A Llama-style decoder: token embedding, pre-RMSNorm blocks (GQA attention + SwiGLU), head.

The attention pattern (models/patterns/) and positional rule (models/pos/) are config choices;
decoding goes through a ``ModelCache`` (models/caches/__init__.py) whose layer caches own the attention
computation, so every cache policy serves every checkpoint.
"""

from __future__ import annotations

from torch import nn

from models.families import FAMILIES
from models.lm import DecoderLM
from models.mixers.attention import TransformerConfig, init_block

__all__ = ["Transformer", "TransformerConfig"]


@FAMILIES.register("transformer")
class Transformer(DecoderLM):
    """forward(input_ids (B, T), cache=None) -> logits (B, T, V)."""

    config_class = TransformerConfig

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.build(cfg, ["attention"] * cfg.n_layers)
        # N(0, init_std) in module order: the embedding, every block's linears (biases zero), the head
        nn.init.normal_(self.embed_tokens.weight, std=cfg.init_std)
        for layer in self.layers:
            init_block(layer, cfg.init_std)
        nn.init.normal_(self.lm_head.weight, std=cfg.init_std)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
