"""DuoAttention's KV cache: policy ``duo``.

Per layer and KV head, a *retrieval* head keeps every key and value (a ``FullKVCache``) while a
*streaming* head keeps only sink + window tokens (a ``SinkWindowCache`` with absolute positions,
as DuoAttention never re-assigns RoPE positions). Roles come from learned gates (``gates_path``,
a saved (n_layers, n_kv_heads) tensor) cut by ``sparsity`` or ``threshold`` (models/duo.py).
The two groups live in separate tensors, so bytes count exactly what each head keeps:
2 * B * D * itemsize * (n_retrieval * N + n_streaming * min(N, sink + window)) per layer.

Prefill: the first call attends densely on all heads; later chunks of streaming heads see sinks +
recent + the causal chunk; decode sees at most sink + window + 1 keys (DuoAttention's semantics).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch

from models.caches import CACHE_POLICIES, CacheConfig, KVLayerCache
from models.caches.full import FullKVCache
from models.caches.sink_window import SinkWindowCache, check_sink_window
from models.duo import deploy_gates, load_gates


class _HeadSubset:
    """The positional module seen by a subset of query heads (ALiBi biases are per head)."""

    def __init__(self, positional, heads: torch.Tensor) -> None:
        self.positional, self.heads = positional, heads

    def rotate(self, x: torch.Tensor, positions: torch.Tensor, seq_len: int) -> torch.Tensor:
        return self.positional.rotate(x, positions, seq_len)

    def bias(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor | None:
        bias = self.positional.bias(q_positions, k_positions)  # (H, t, s) or None
        return None if bias is None else bias[self.heads.to(bias.device)]


class DuoLayerCache(KVLayerCache):
    """One layer: full KV for retrieval heads, sink + window (absolute) for streaming heads."""

    def __init__(self, retrieval: list[bool], sink: int, window: int) -> None:
        self.retrieval = [h for h, r in enumerate(retrieval) if r]
        self.streaming = [h for h, r in enumerate(retrieval) if not r]
        self.full = FullKVCache()  # (B, n_retrieval, N, D)
        self.stream = SinkWindowCache(sink, window, positions="absolute")  # (B, n_streaming, <=S+R, D)

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from self.full.tensors()
        yield from self.stream.tensors()

    def reserve(self, capacity: int) -> None:
        """Retrieval heads preallocate like the full cache; streaming heads are bounded anyway."""
        self.full.reserve(capacity)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positional,
               start: int) -> torch.Tensor:
        B, H, t, D = q.shape
        Hkv = k.shape[1]
        G = H // Hkv  # query heads per KV head share its role
        qg = q.view(B, Hkv, G, t, D)
        out = q.new_empty(B, Hkv, G, t, D)
        for cache, heads in ((self.full, self.retrieval), (self.stream, self.streaming)):
            if not heads:
                continue
            idx = torch.tensor(heads, device=q.device)
            q_heads = (idx[:, None] * G + torch.arange(G, device=q.device)).flatten()  # query-head ids
            y = cache.attend(qg[:, idx].reshape(B, len(heads) * G, t, D), k[:, idx], v[:, idx],
                             _HeadSubset(positional, q_heads), start)  # (B, len*G, t, D)
            out[:, idx] = y.view(B, len(heads), G, t, D)
        return out.view(B, H, t, D)


LEARNED = "learned"  # gates_path meaning: the gates of this duo_gates run / checkpoint


@lru_cache(maxsize=8)
def _roles(path: str, stamp: tuple[int, int], sparsity: float | None,
           threshold: float | None) -> torch.Tensor:
    # ``stamp`` (mtime_ns, size) keys the memo, so a rewritten gates file is read again.
    return deploy_gates(load_gates(path), sparsity=sparsity, threshold=threshold)


@CACHE_POLICIES.register("duo")
@dataclass
class DuoCacheConfig(CacheConfig):
    policy: str = "duo"
    sink: int = 4  # streaming heads: attention-sink tokens
    window: int = 256  # streaming heads: most recent tokens
    gates_path: Optional[str] = None  # learned gates (.pt), (n_layers, n_kv_heads), or 'learned'
    sparsity: Optional[float] = None  # fraction of heads made streaming (global quantile)
    threshold: Optional[float] = None  # alternatively, retrieval iff gate >= threshold

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sink_window(self.sink, self.window)
        if not self.gates_path:
            raise ValueError("cache.policy='duo' needs cache.gates_path (gates saved by models.duo.save_gates, "
                             "or 'learned' for those of a duo_gates run or checkpoint)")
        if self.gates_path != LEARNED and not os.path.isfile(self.gates_path):
            raise ValueError(f"cache.gates_path={self.gates_path!r} does not exist; allowed: a gates.pt file or "
                             "'learned'")
        if (self.sparsity is None) == (self.threshold is None):
            raise ValueError(f"cache.policy='duo' needs exactly one of cache.sparsity, cache.threshold; "
                             f"got sparsity={self.sparsity}, threshold={self.threshold}")
        if self.sparsity is not None and not 0.0 <= self.sparsity <= 1.0:
            raise ValueError(f"cache.sparsity={self.sparsity} must be in [0, 1]")

    def describe(self) -> str:
        cut = f"sparsity={self.sparsity:g}" if self.sparsity is not None else f"threshold={self.threshold:g}"
        return f"duo({cut},S={self.sink},R={self.window},prefill={self.prefill})"

    def retrieval_roles(self) -> torch.Tensor:
        """(n_layers, n_kv_heads) bool, True = retrieval head, from the gates file and the cut."""
        st = os.stat(self.gates_path)
        return _roles(os.path.abspath(self.gates_path), (st.st_mtime_ns, st.st_size), self.sparsity, self.threshold)

    def layer_cache(self, layer_idx: int, n_layers: int, n_kv_heads: int) -> DuoLayerCache:
        if self.gates_path == LEARNED:
            raise ValueError("cache.gates_path='learned' names the gates of a duo_gates stage or checkpoint, "
                             "but this run has none; give the path of a gates.pt")
        roles = self.retrieval_roles()
        if tuple(roles.shape) != (n_layers, n_kv_heads):
            raise ValueError(
                f"cache.gates_path={self.gates_path!r} holds gates of shape {tuple(roles.shape)}, "
                f"but the model needs (n_layers, n_kv_heads) = ({n_layers}, {n_kv_heads})"
            )
        return DuoLayerCache(roles[layer_idx].tolist(), self.sink, self.window)
