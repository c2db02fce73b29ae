"""What every family's language model shares: embed -> blocks (each with its layer cache) -> norm -> head.

A family subclasses ``DecoderLM`` and calls ``build(cfg, mixers)`` with its list of mixer names
(models/mixers/); the forward contract and ``new_cache`` are then the same for all of them: each
block's mixer makes its own layer cache (a KV cache of the policy, or a Mamba state).

Activation checkpointing (``set_activation_checkpointing``) is per block: a training forward keeps
only each block's input and recomputes the block inside the backward (non-reentrant
``torch.utils.checkpoint``, which composes with peft's LoRA layers, DDP and FSDP and replays the
RNG state for dropout). Decoding through a cache and no-grad forwards never checkpoint.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.caches import CacheConfig, ModelCache, as_cache_config
from models.layers import RMSNorm
from models.mixers import MIXERS, mixer_config

# model.dtype: the parameter dtype a family is built in (None: float32, or the stored dtype on import)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def check_dtype(value: Optional[str]) -> None:
    if value is not None and value not in DTYPES:
        raise ValueError(f"model.dtype={value!r}; allowed: None (float32, or the stored dtype on import), "
                         f"{sorted(DTYPES)}")


class DecoderLM(nn.Module):
    """forward(input_ids (B, T), cache=None) -> logits (B, T, V); blocks take (x, layer_cache, start)."""

    embed_tokens: nn.Embedding
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Linear
    activation_checkpointing: bool = False  # set_activation_checkpointing turns it on per model

    def build(self, cfg: Any, mixers: list[str]) -> None:
        """embed_tokens, one block per mixer name (built from ``cfg``'s fields), norm, lm_head; no init."""
        self.cfg, self.mixers = cfg, list(mixers)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        specs = {name: MIXERS.get(name) for name in self.mixers}
        extra = getattr(cfg, "mixer_args", {})
        configs = {name: mixer_config(spec, cfg, extra.get(name)) for name, spec in specs.items()}
        shared: dict = {}
        self.layers = nn.ModuleList(specs[name].build(configs[name], i, shared) for i, name in enumerate(mixers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def init_mixers(self, std: float) -> None:
        """Each block as its mixer's family initialises it (``MixerSpec.init``; None: the mixer's own init)."""
        for name, layer in zip(self.mixers, self.layers):
            init = MIXERS.get(name).init
            if init is not None:
                init(layer, std)

    def init_embed_and_head(self, std: float, tie: bool) -> None:
        """Embedding ~ N(0, std); the head tied to it, or ~ N(0, std) of its own."""
        nn.init.normal_(self.embed_tokens.weight, std=std)
        if tie:
            self.lm_head.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=std)

    def new_cache(self, batch_size: int, policy: CacheConfig | str = "full") -> ModelCache:
        """An empty cache: each layer's mixer makes its own (KV tensors are allocated as tokens arrive)."""
        policy = as_cache_config(policy)
        n = len(self.layers)
        return ModelCache([layer.token_mixer.new_layer_cache(batch_size, policy, i, n)
                           for i, layer in enumerate(self.layers)], policy)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute every block in the backward instead of storing its activations."""
        self.activation_checkpointing = bool(enabled)

    def hidden_states(self, input_ids: torch.Tensor, cache: Optional[ModelCache] = None) -> torch.Tensor:
        """Final hidden states after the last norm, (B, T, d_model); advances ``cache.seen``."""
        start = 0 if cache is None else cache.seen
        x = self.embed_tokens(input_ids)  # (B, T, d_model)
        recompute = self.activation_checkpointing and cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute:
                x = checkpoint(layer, x, None, start, use_reentrant=False)
            else:
                x = layer(x, None if cache is None else cache.layers[i], start)
        if cache is not None:
            cache.seen += input_ids.shape[1]
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, cache: Optional[ModelCache] = None) -> torch.Tensor:
        return self.lm_head(self.hidden_states(input_ids, cache))
