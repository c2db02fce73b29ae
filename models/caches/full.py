"""The ``full`` policy: every key and value kept, rotated at its absolute position."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from models.caches import CACHE_POLICIES, CacheConfig, KVLayerCache
from models.patterns import causal_sdpa


class FullKVCache(KVLayerCache):
    """Keeps every key and value, rotated at its absolute position.

    Grows by concatenation, or, after ``reserve(capacity)``, writes into buffers allocated once:
    no per-step copy of the whole cache, and the bytes held are those of the reserved length.
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None  # (B, Hkv, held, D): held == tokens seen, or the capacity
        self.v: torch.Tensor | None = None
        self.capacity: int | None = None

    def reserve(self, capacity: int) -> None:
        self.capacity = capacity

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from (t for t in (self.k, self.v) if t is not None)

    def store(self, k: torch.Tensor, v: torch.Tensor, start: int, total: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep k, v (B, Hkv, t, D) for tokens start..total-1; returns all keys and values so far."""
        if self.capacity is None or total > max(self.capacity, 0 if self.k is None else self.k.shape[2]):
            # own the first chunk: with a non-rotary rule k/v are still views of the layer's projection output
            self.k = k.clone() if self.k is None else torch.cat((self.k[:, :, :start], k), dim=2)  # (B, Hkv, total, D)
            self.v = v.clone() if self.v is None else torch.cat((self.v[:, :, :start], v), dim=2)
            return self.k, self.v
        if self.k is None:
            B, H, _, D = k.shape
            self.k = k.new_zeros(B, H, self.capacity, D)
            self.v = v.new_zeros(B, H, self.capacity, D)
        self.k[:, :, start:total] = k
        self.v[:, :, start:total] = v
        return self.k[:, :, :total], self.v[:, :, :total]  # views, no copy

    def attend(self, q, k, v, positional, start):
        t = q.shape[2]
        total = start + t
        positions = torch.arange(start, total, device=q.device)
        q = positional.rotate(q, positions, total)
        k = positional.rotate(k, positions, total)
        keys, values = self.store(k, v, start, total)
        bias = positional.bias(positions, torch.arange(total, device=q.device))
        return causal_sdpa(q, keys, values, q_offset=start, bias=bias)


@CACHE_POLICIES.register("full")
@dataclass
class FullCacheConfig(CacheConfig):
    """No knobs of its own: the reference every other policy is measured against."""

    policy: str = "full"

    def layer_cache(self, layer_idx: int, n_layers: int, n_kv_heads: int) -> FullKVCache:
        return FullKVCache()
