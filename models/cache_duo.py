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
from functools import lru_cache

import torch

from models.cache import KV_POLICIES, LABELS, VALIDATORS, CacheConfig, FullKVCache, KVLayerCache
from models.cache_sink_window import SinkWindowCache
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


@lru_cache(maxsize=8)
def _roles(path: str, stamp: tuple[int, int], sparsity: float | None,
           threshold: float | None) -> torch.Tensor:
    # ``stamp`` (mtime_ns, size) keys the memo, so a rewritten gates file is read again.
    return deploy_gates(load_gates(path), sparsity=sparsity, threshold=threshold)


def retrieval_roles(cfg: CacheConfig) -> torch.Tensor:
    """(n_layers, n_kv_heads) bool, True = retrieval head, from the config's gates file and cut."""
    st = os.stat(cfg.gates_path)
    return _roles(os.path.abspath(cfg.gates_path), (st.st_mtime_ns, st.st_size), cfg.sparsity, cfg.threshold)


def _make(cfg: CacheConfig, layer_idx: int, n_layers: int, n_kv_heads: int) -> DuoLayerCache:
    if cfg.gates_path == LEARNED:
        raise ValueError("cache.gates_path='learned' names the gates of a duo_gates stage or checkpoint, "
                         "but this run has none; give the path of a gates.pt")
    roles = retrieval_roles(cfg)
    if tuple(roles.shape) != (n_layers, n_kv_heads):
        raise ValueError(
            f"cache.gates_path={cfg.gates_path!r} holds gates of shape {tuple(roles.shape)}, "
            f"but the model needs (n_layers, n_kv_heads) = ({n_layers}, {n_kv_heads})"
        )
    return DuoLayerCache(roles[layer_idx].tolist(), cfg.sink, cfg.window)


LEARNED = "learned"  # gates_path meaning: the gates of this duo_gates run / checkpoint


def _check(cfg: CacheConfig) -> None:
    if not cfg.gates_path:
        raise ValueError("cache.policy='duo' needs cache.gates_path (gates saved by models.duo.save_gates, "
                         "or 'learned' for those of a duo_gates run or checkpoint)")
    if cfg.gates_path != LEARNED and not os.path.isfile(cfg.gates_path):
        raise ValueError(f"cache.gates_path={cfg.gates_path!r} does not exist; allowed: a gates.pt file or 'learned'")
    if (cfg.sparsity is None) == (cfg.threshold is None):
        raise ValueError(
            f"cache.policy='duo' needs exactly one of cache.sparsity, cache.threshold; "
            f"got sparsity={cfg.sparsity}, threshold={cfg.threshold}"
        )
    if cfg.sparsity is not None and not 0.0 <= cfg.sparsity <= 1.0:
        raise ValueError(f"cache.sparsity={cfg.sparsity} must be in [0, 1]")


def _label(c: CacheConfig) -> str:
    cut = f"sparsity={c.sparsity:g}" if c.sparsity is not None else f"threshold={c.threshold:g}"
    return f"duo({cut},S={c.sink},R={c.window},prefill={c.prefill})"


KV_POLICIES["duo"] = _make
VALIDATORS["duo"] = _check
LABELS["duo"] = _label
