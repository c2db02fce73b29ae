"""Gated DeltaNet as a language model: fla's GatedDeltaNetForCausalLM layout (pre-RMSNorm Gated DeltaNet
blocks, each followed by a SwiGLU MLP, between an embedding and a head).

The mixer, its config and its two paths (chunked PyTorch, fla's kernel) are in models/mixers/gated_deltanet.py;
the decode "cache" is one constant-size state per layer.
"""

from __future__ import annotations

from models.families import FAMILIES
from models.lm import DecoderLM
from models.mixers.gated_deltanet import GatedDeltaNetConfig

__all__ = ["GatedDeltaNetConfig", "GatedDeltaNetLM"]


@FAMILIES.register("gated_deltanet")
class GatedDeltaNetLM(DecoderLM):
    """forward(input_ids (B, T), cache=None) -> logits (B, T, V)."""

    config_class = GatedDeltaNetConfig

    def __init__(self, cfg: GatedDeltaNetConfig) -> None:
        super().__init__()
        self.build(cfg, ["gated_deltanet"] * cfg.n_layers)
        self.init_mixers(cfg.init_std)
        self.init_embed_and_head(cfg.init_std, cfg.tie_embeddings)
