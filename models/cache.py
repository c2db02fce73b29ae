"""The cache protocol every family decodes through, and the ``full`` KV cache.

A ``ModelCache`` is one ``LayerCache`` per layer plus the count of tokens seen. Attention layers
hand their *unrotated* q, k, v to their ``KVLayerCache.attend``, which chooses positions, stores
what the policy keeps and computes the output — so a policy is one class, registered in
``KV_POLICIES``. Mamba layers keep their conv and SSM state in a ``LayerCache`` of their own.
Every cache reports its exact bytes: the sum of ``nbytes`` of the tensors it holds.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Optional

import torch

from models.attention import causal_sdpa


@dataclass
class CacheConfig:
    """A decode-time cache policy and its knobs (fields unused by a policy are ignored)."""

    policy: str = "full"  # full | sink_window | duo | quest
    prefill: str = "dense"  # dense: prompt attends densely, then the policy compresses; policy: chunked
    chunk_size: int = 512  # prefill=policy: tokens per prefill chunk
    sink: int = 4  # sink_window / duo: attention-sink tokens
    window: int = 256  # sink_window / duo: most recent tokens
    positions: str = "cache_relative"  # sink_window: cache_relative (StreamingLLM) | absolute (Duo)
    budget: int = 256  # quest: tokens read per query head
    page_size: int = 16  # quest
    dense_layers: int = 2  # quest: the first layers stay dense (at most n_layers - 1; models/cache_quest.py)
    selection: str = "eval"  # quest: eval (quest_attention.py, the paper's accuracy) | kernel (current page forced)
    gates_path: Optional[str] = None  # duo: learned gates (.pt), (n_layers, n_kv_heads)
    sparsity: Optional[float] = None  # duo: fraction of heads made streaming (global quantile)
    threshold: Optional[float] = None  # duo: alternatively, retrieval iff gate >= threshold

    def __post_init__(self) -> None:
        if self.policy not in KV_POLICIES:
            raise ValueError(f"cache.policy={self.policy!r} is not a known policy; allowed: {sorted(KV_POLICIES)}")
        if self.prefill not in ("dense", "policy"):
            raise ValueError(f"cache.prefill={self.prefill!r}; allowed: 'dense', 'policy'")
        for name in ("chunk_size", "window", "budget", "page_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"cache.{name}={getattr(self, name)} must be >= 1")
        for name in ("sink", "dense_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"cache.{name}={getattr(self, name)} must be >= 0")
        check = VALIDATORS.get(self.policy)
        if check is not None:
            check(self)

    @property
    def label(self) -> str:
        """The policy and the parameters that matter to it, for results rows."""
        return LABELS.get(self.policy, lambda c: c.policy)(self)


class LayerCache(ABC):
    """State one layer keeps between forward calls."""

    @abstractmethod
    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor the cache holds (for exact byte accounting)."""

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())


class KVLayerCache(LayerCache):
    @abstractmethod
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positional, start: int) -> torch.Tensor:
        """q (B, H, t, D), k/v (B, Hkv, t, D) unrotated, for tokens start..start+t-1 -> (B, H, t, D)."""


class ModelCache:
    """Per-layer caches and the number of tokens already processed."""

    def __init__(self, layers: list[LayerCache], policy: CacheConfig) -> None:
        self.layers, self.policy, self.seen = layers, policy, 0

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def reserve(self, capacity: int) -> None:
        """Tell layers that can preallocate how many tokens will come (the evaluator knows)."""
        for layer in self.layers:
            if hasattr(layer, "reserve"):
                layer.reserve(capacity)

    def clone(self) -> ModelCache:
        """An independent copy (prefix caching: prefill once, ask many questions)."""
        return copy.deepcopy(self)


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
            # clone the first chunk: k/v may be views pinning the whole fused q/k/v projection output
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


# policy name -> factory(cfg, layer_idx, n_layers, n_kv_heads) building one layer's cache
KV_POLICIES: dict[str, Callable[..., KVLayerCache]] = {"full": lambda cfg, *_: FullKVCache()}
VALIDATORS: dict[str, Callable[[CacheConfig], None]] = {}
LABELS: dict[str, Callable[[CacheConfig], str]] = {}


# Policies register themselves on import; importing models.cache makes all of them available.
from models import cache_duo, cache_quest, cache_sink_window  # noqa: E402,F401
