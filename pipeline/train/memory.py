"""Peak-memory probes: CUDA allocator statistics on GPU, a tensor-allocation tracker on CPU.

Process RSS is useless for a tiny model (allocator caching, the Python heap), so on CPU we count
bytes of tensor storages created inside the measured region and still alive, through a
``TorchDispatchMode``: every op's outputs are recorded once per storage and released by a weakref
finalizer when the storage dies. Peak = bytes held by the module (parameters, buffers) + peak of
live storages allocated inside the region.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class AllocationTracker(TorchDispatchMode):
    """Tracks live bytes of tensor storages produced by ops run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata  # identity of the underlying StorageImpl
        if key in self.live or t.device.type == "meta":
            return
        nbytes = storage.nbytes()
        self.live[key] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # An output sharing an input's storage (a view, an in-place or out= result) allocates nothing,
        # even when that input was made before the region (a parameter's .t(), a slice of q).
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                self._track(t)
        return out


@dataclass
class MemoryReading:
    peak_bytes: int = 0  # module bytes + peak live bytes inside the region
    region_peak_bytes: int = 0  # peak live bytes allocated inside the region only
    seconds: float = 0.0


def module_bytes(module: torch.nn.Module | None) -> int:
    if module is None:
        return 0
    tensors = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


@contextmanager
def measure_peak(module: torch.nn.Module | None = None, device: torch.device | str = "cpu") -> Iterator[MemoryReading]:
    """``with measure_peak(model, device) as m: ...`` then read ``m.peak_bytes``."""
    reading = MemoryReading()
    device = torch.device(device)
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield reading
        finally:
            torch.cuda.synchronize(device)
            reading.peak_bytes = torch.cuda.max_memory_allocated(device)
            reading.region_peak_bytes = reading.peak_bytes - base
            reading.seconds = time.perf_counter() - start
        return
    tracker = AllocationTracker()
    try:
        with tracker:
            yield reading
    finally:
        reading.region_peak_bytes = tracker.peak
        reading.peak_bytes = module_bytes(module) + tracker.peak
        reading.seconds = time.perf_counter() - start


def available_bytes(device: torch.device | str) -> int:
    """Memory an allocation can still get: free GPU memory (plus PyTorch's cached blocks), or the
    host's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    import psutil

    return int(psutil.virtual_memory().available)


def estimate_eval_bytes(model: torch.nn.Module, n_examples: int, length: int, batch_size: int,
                        full_logits: bool = True) -> int:
    """A lower bound on the memory one evaluation cell needs, from shapes alone (nothing allocated).

    Counted: the model, the cell's token and mask arrays (host and device copies), and one batch's
    final hidden states (B, L, d_model); ``full_logits`` (teacher forcing, dense prefill) adds the
    (B, L, vocab) logits. Attention
    scores, caches and other activations come on top, so a cell over this bound cannot fit.
    """
    embed = next((m for m in model.modules() if isinstance(m, torch.nn.Embedding)), None)
    if embed is None:
        return module_bytes(model)
    vocab, d_model = embed.num_embeddings, embed.embedding_dim
    elem = embed.weight.element_size()
    b = min(batch_size, n_examples)
    inputs = 2 * n_examples * length * (8 + 1)  # int64 tokens + bool mask, host and device
    activations = b * length * d_model * elem
    if full_logits:
        activations += b * length * vocab * elem
    return module_bytes(model) + inputs + activations
