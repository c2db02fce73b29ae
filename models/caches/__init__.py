"""The cache protocol every family decodes through, and the registry of KV-cache policies.

A ``ModelCache`` is one ``LayerCache`` per layer plus the count of tokens seen. Attention layers
hand their *unrotated* q, k, v to their ``KVLayerCache.attend``, which chooses positions, stores
what the policy keeps and computes the output. A policy is one module of models/caches/ that
registers its config class (a ``CacheConfig`` subclass holding its own knobs, their validation, its
row label and the ``layer_cache`` factory). Other mixers (Mamba) keep their own ``LayerCache``.
Every cache reports its exact bytes: the sum of ``nbytes`` of the tensors it holds.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from registries import Registry

PREFILLS = ("dense", "policy")


@dataclass
class CacheConfig:
    """The knobs every policy shares. ``CacheConfig(policy="quest", budget=32)`` builds the policy's own
    config class (``QuestConfig``), so callers never name it."""

    policy: str = "full"
    prefill: str = "dense"  # dense: prompt attends densely, then the policy compresses; policy: chunked
    chunk_size: int = 512  # prefill=policy: tokens per prefill chunk
    scope: ClassVar[str] = ""  # set by ``scoped``: which layers the policy acts on (not a knob)

    def __new__(cls, *args: Any, **knobs: Any) -> CacheConfig:
        if cls is CacheConfig:  # the first positional argument, like the first field, is the policy
            cls = policy_config(args[0] if args else knobs.get("policy", "full"))
            check_knobs(cls, knobs)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        expected = policy_name(type(self))
        if self.policy != expected:
            raise ValueError(f"cache.policy={self.policy!r} but this is the {expected!r} policy's config")
        if self.prefill not in PREFILLS:
            raise ValueError(f"cache.prefill={self.prefill!r}; allowed: {list(PREFILLS)}")
        if self.chunk_size < 1:
            raise ValueError(f"cache.chunk_size={self.chunk_size} must be >= 1")

    def describe(self) -> str:
        """The policy and the knobs that matter to it (policies override)."""
        return self.policy

    @property
    def label(self) -> str:
        """For results rows: ``describe()``, and the scope when the policy acts on some layers only."""
        return f"{self.describe()}[{self.scope}]" if self.scope else self.describe()

    def knobs(self) -> dict[str, Any]:
        """The policy's own knobs (beyond policy, prefill and chunk_size), by name."""
        shared = {f.name for f in dataclasses.fields(CacheConfig)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in shared}

    def scoped(self, scope: str) -> CacheConfig:
        """A copy whose label names the layers it acts on (a hybrid's attention layers)."""
        out = copy.copy(self)
        out.scope = scope
        return out

    def layer_cache(self, layer_idx: int, n_layers: int, n_kv_heads: int) -> KVLayerCache:
        """The cache of attention layer ``layer_idx`` (of ``n_layers``) under this policy."""
        raise NotImplementedError(f"cache policy {self.policy!r} builds no layer cache")


CACHE_POLICIES: Registry[type[CacheConfig]] = Registry("policy", "cache.policy", package="models.caches")


def policy_config(policy: Any) -> type[CacheConfig]:
    """The config class of ``policy`` (a ValueError naming cache.policy and the allowed names)."""
    return CACHE_POLICIES.get(policy)


def policy_knobs(node: Mapping[str, Any]) -> tuple[type[CacheConfig], dict[str, Any]]:
    """The config class of ``node["policy"]`` and the keys of ``node`` it takes (a ``cache`` config node).

    Knobs of other registered policies are dropped, as a study sets streaming knobs once for all its
    arms and a base run switches ``cache.policy=full`` over an arm's node; a key no policy has is an error.
    """
    cls = policy_config(node.get("policy", "full"))
    own = {f.name for f in dataclasses.fields(cls)}
    known = {f.name for _, c in CACHE_POLICIES.items() for f in dataclasses.fields(c)}
    for key in node:
        if key not in known:
            raise ValueError(f"cache.{key} is not a knob of any cache policy; allowed for cache.policy="
                             f"{policy_name(cls)!r}: {sorted(own)}")
    return cls, {k: v for k, v in node.items() if k in own}


def check_knobs(cls: type[CacheConfig], knobs: dict[str, Any]) -> None:
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in knobs:
        if key not in allowed:
            raise ValueError(f"cache.{key} is not a knob of cache.policy={policy_name(cls)!r}; allowed: {allowed}")


def policy_name(cls: type[CacheConfig]) -> str:
    """The policy a config class is for: the default of its ``policy`` field."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == "policy")


def as_cache_config(policy: CacheConfig | str) -> CacheConfig:
    return CacheConfig(policy=policy) if isinstance(policy, str) else policy


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
