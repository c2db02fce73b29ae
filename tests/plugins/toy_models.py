"""Test-only variants, one of each models/ kind, registered from outside the package (one file, no other edit).

The parametrized contract tests (tests/test_model_contracts.py) pick each one up from its registry:
- ``toy_half`` positional rule: RoPE at half the frequencies;
- ``toy_local`` attention pattern: causal attention to the last ``window`` keys only (no sinks);
- ``toy_recent`` cache policy: keeps the last ``window`` keys, rotated at their absolute positions;
- ``toy_ema`` mixer: a per-channel exponential moving average, h_t = a h_{t-1} + (1 - a) W x_t, y = O h_t.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from models.caches import CACHE_POLICIES, CacheConfig, KVLayerCache, LayerCache
from models.layers import Block
from models.mixers import MIXERS, MixerSpec
from models.patterns import PATTERNS, AttentionConfig, causal_sdpa
from models.pos import pos_rule
from models.pos.base import base_inv_freq


@pos_rule("toy_half", uses_factor=False)
def toy_half(dim: int, base: float, **_: object) -> tuple[torch.Tensor, float]:
    return base_inv_freq(dim, base) / 2, 1.0


@PATTERNS.register("toy_local")
def toy_local(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: AttentionConfig,
              bias: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    T, S = q.shape[-2], k.shape[-2]
    lag = torch.arange(S - T, S, device=q.device)[:, None] - torch.arange(S, device=q.device)[None, :]  # (T, S)
    return causal_sdpa(q, k, v, q_offset=S - T, bias=bias, mask=lag < cfg.window)


class RecentCache(KVLayerCache):
    """The last ``window`` keys and values, (B, Hkv, <= window, D), rotated at absolute positions."""

    def __init__(self, window: int) -> None:
        self.window, self.k, self.v = window, None, None

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from (t for t in (self.k, self.v) if t is not None)

    def attend(self, q, k, v, positional, start):
        t = q.shape[2]
        pos = torch.arange(start, start + t, device=q.device)
        q, k = positional.rotate(q, pos, start + t), positional.rotate(k, pos, start + t)
        keys = k if self.k is None else torch.cat((self.k, k), dim=2)
        vals = v if self.v is None else torch.cat((self.v, v), dim=2)
        n = keys.shape[2]
        k_pos = torch.arange(start + t - n, start + t, device=q.device)
        lag = pos[:, None] - k_pos[None, :]  # (t, n)
        out = causal_sdpa(q, keys, vals, q_offset=n - t, bias=positional.bias(pos, k_pos), mask=lag < self.window)
        self.k, self.v = keys[:, :, -self.window:].clone(), vals[:, :, -self.window:].clone()
        return out


@CACHE_POLICIES.register("toy_recent")
@dataclass
class RecentConfig(CacheConfig):
    policy: str = "toy_recent"
    window: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1:
            raise ValueError(f"cache.window={self.window} must be >= 1")

    def describe(self) -> str:
        return f"toy_recent(R={self.window})"

    def layer_cache(self, layer_idx: int, n_layers: int, n_kv_heads: int) -> RecentCache:
        return RecentCache(self.window)


@dataclass
class EmaConfig:
    """The toy mixer's knobs; in a hybrid, d_model and norm_eps come from the hybrid's config."""

    d_model: int = 32
    norm_eps: float = 1e-5
    decay_span: float = 2.0  # decay logits start evenly spread over [-span, span]; +model.mixer_args.toy_ema.decay_span


class EmaState(LayerCache):
    def __init__(self, h: torch.Tensor) -> None:
        self.h = h  # (B, d_model)

    def tensors(self) -> Iterator[torch.Tensor]:
        yield self.h


class EmaMixer(nn.Module):
    def __init__(self, cfg: EmaConfig) -> None:
        super().__init__()
        self.inp = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.decay_logit = nn.Parameter(torch.linspace(-cfg.decay_span, cfg.decay_span, cfg.d_model))

    def forward(self, x: torch.Tensor, layer_cache: EmaState | None = None, start: int = 0) -> torch.Tensor:
        a = torch.sigmoid(self.decay_logit)  # (d,)
        u = (1 - a) * self.inp(x)  # (B, T, d)
        h = x.new_zeros(x.shape[0], x.shape[2]) if layer_cache is None else layer_cache.h
        states = []
        for t in range(x.shape[1]):
            h = a * h + u[:, t]
            states.append(h)
        if layer_cache is not None:
            layer_cache.h = h.detach()
        return self.out(torch.stack(states, dim=1))  # (B, T, d)

    def new_layer_cache(self, batch_size: int, policy: CacheConfig | None = None, layer_idx: int = 0,
                        n_layers: int = 1) -> EmaState:
        return EmaState(self.inp.weight.new_zeros(batch_size, self.inp.weight.shape[0]))


def build_ema_block(cfg: EmaConfig, layer_idx: int, shared: dict) -> Block:
    return Block(EmaMixer(cfg), cfg.d_model, cfg.norm_eps)


MIXERS.register("toy_ema")(MixerSpec("toy_ema", EmaConfig, build_ema_block))
