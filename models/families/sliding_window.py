"""Sliding-window attention as a language model (Mistral-style: every layer local): the transformer's blocks
with a band of ``window`` keys per query, decoded through a ring buffer of ``window`` slots per layer
(models/mixers/sliding_window.py), so its decode state is constant in length."""

from __future__ import annotations

from models.families import FAMILIES
from models.lm import DecoderLM
from models.mixers.sliding_window import SlidingWindowConfig

__all__ = ["SlidingWindowConfig", "SlidingWindowLM"]


@FAMILIES.register("sliding_window")
class SlidingWindowLM(DecoderLM):
    """forward(input_ids (B, T), cache=None) -> logits (B, T, V)."""

    config_class = SlidingWindowConfig

    def __init__(self, cfg: SlidingWindowConfig) -> None:
        super().__init__()
        self.build(cfg, ["sliding_window"] * cfg.n_layers)
        self.init_mixers(cfg.init_std)  # N(0, init_std) for every linear, as the transformer
        self.init_embed_and_head(cfg.init_std, cfg.tie_embeddings)
