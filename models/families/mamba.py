"""Mamba as a language model: pre-RMSNorm Mamba blocks between an embedding and a (tied) head.

Two paths compute the same function: the pure-PyTorch chunked scan (models/scan.py), the CPU default
and the reference, and the CUDA kernels when they import and the input is on a GPU (models/mixers/mamba.py).
The decode "cache" is one constant-size state per layer.
"""

from __future__ import annotations

from typing import Optional

import torch

from models.caches import ModelCache
from models.families import FAMILIES
from models.lm import DecoderLM
from models.mixers.mamba import MambaConfig, require_kernels

__all__ = ["MambaConfig", "MambaLM"]


@FAMILIES.register("mamba")
class MambaLM(DecoderLM):
    """forward(input_ids (B, T), cache=None) -> logits (B, T, V)."""

    config_class = MambaConfig

    def __init__(self, cfg: MambaConfig) -> None:
        super().__init__()
        require_kernels(cfg.kernel)
        self.build(cfg, ["mamba"] * cfg.n_layers)
        self.init_embed_and_head(cfg.init_std, cfg.tie_embeddings)

    def hidden_states(self, input_ids: torch.Tensor, cache: Optional[ModelCache] = None) -> torch.Tensor:
        """As DecoderLM; a long no-grad prefill into a cache goes block by block, carrying the state.

        The scan itself is chunked (models/scan.py), but the block's (B, T, d_inner) activations
        are not; blocks of ``prefill_block`` tokens bound those too, so evaluation memory does not
        grow with the prompt.
        """
        T, block = input_ids.shape[1], self.cfg.prefill_block
        if cache is None or torch.is_grad_enabled() or T <= block:
            return super().hidden_states(input_ids, cache)
        return torch.cat([super(MambaLM, self).hidden_states(input_ids[:, s : s + block], cache)
                          for s in range(0, T, block)], dim=1)
