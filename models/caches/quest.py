"""Quest's query-aware page selection: policy ``quest``.

Every key and value is kept (rotated at its absolute position). Keys are grouped in pages of
``page_size`` tokens, each with the per-channel min m and max M of its rotated keys (the metadata,
counted in bytes). At decode (one query token) each *query head* scores every page by the upper
bound sum_i max(q_i m_i, q_i M_i) >= q . k, reads the top pages and takes an exact softmax over the
selected tokens only. Which pages (``cache.selection``):

- ``eval`` (default; ``evaluation/quest_attention.py``, behind the paper's accuracy tables):
  the top min(max(3, budget // page_size), pages) pages among all pages, nothing forced.
- ``kernel`` (``quest/utils/controller.py``): the current (last) page always, plus the top
  budget // page_size - 1 others; no estimate while the pages fit the budget.

Prefill, multi-token calls and the first ``dense_layers`` layers are dense. The reference keeps
layers 0-1 dense in 32-layer models; here the effective count is min(dense_layers, n_layers - 1),
so a 2-layer model keeps layer 0 dense and layer 1 sparse (otherwise Quest would be full
attention), and a warning says so.

After ``reserve(capacity)`` the keys, values and page bounds live in buffers allocated once for
the capacity (no per-step copy), like the full and duo caches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from models.caches import CACHE_POLICIES, CacheConfig, KVLayerCache
from models.caches.full import FullKVCache
from models.patterns import causal_sdpa

log = logging.getLogger(__name__)
SELECTIONS = ("eval", "kernel")


def check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise ValueError(f"cache.selection={selection!r}; allowed: {list(SELECTIONS)}")


def page_bounds(k: torch.Tensor, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k (B, Hkv, N, D) -> per-page channel min and max, (B, Hkv, ceil(N/P), D) each."""
    B, Hkv, N, D = k.shape
    pad = -N % page_size
    if pad:  # repeat the last key: leaves the partial page's min and max unchanged
        k = torch.cat((k, k[:, :, -1:].expand(B, Hkv, pad, D)), dim=2)
    pages = k.view(B, Hkv, -1, page_size, D)
    return pages.amin(dim=3), pages.amax(dim=3)


class QuestCache(KVLayerCache):
    """All KV, plus page bounds in sparse layers; sparse top-page attention at decode."""

    def __init__(self, budget: int, page_size: int, sparse: bool, selection: str = "eval") -> None:
        check_selection(selection)
        self.budget, self.budget_pages = budget, max(1, budget // page_size)
        self.page_size, self.sparse, self.selection = page_size, sparse, selection
        self.kv = FullKVCache()  # (B, Hkv, N, D) rotated, absolute positions; preallocates on reserve()
        self.kmin: torch.Tensor | None = None  # (B, Hkv, pages or page capacity, D), sparse layers only
        self.kmax: torch.Tensor | None = None
        self.pages = self.kv_len = 0  # pages holding tokens, tokens
        self.page_capacity: int | None = None

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from self.kv.tensors()
        yield from (t for t in (self.kmin, self.kmax) if t is not None)

    def reserve(self, capacity: int) -> None:
        self.kv.reserve(capacity)
        self.page_capacity = math.ceil(capacity / self.page_size)

    def n_selected(self, tokens: int) -> int:
        """Pages a decode query reads among ``tokens`` keys (all of them means dense).

        The eval path clips the budget to the keys first, as the reference does (token_budget =
        min(kv_seq_len, budget)): with a partial last page one page stays unread even when the
        budget covers the context.
        """
        pages = math.ceil(tokens / self.page_size)
        if self.selection == "eval":
            return min(max(3, min(tokens, self.budget) // self.page_size), pages)
        return min(self.budget_pages, pages)

    def _update_bounds(self, keys: torch.Tensor, start: int, total: int) -> None:
        """Recompute the bounds of the pages tokens start..total-1 touched."""
        first, last = start // self.page_size, math.ceil(total / self.page_size)
        lo, hi = page_bounds(keys[:, :, first * self.page_size : total], self.page_size)
        if self.page_capacity is not None and last <= self.page_capacity:
            if self.kmin is None or self.kmin.shape[2] != self.page_capacity:
                B, Hkv, _, D = keys.shape
                old = self.pages
                shape = (B, Hkv, self.page_capacity, D)
                kmin, kmax = keys.new_zeros(shape), keys.new_zeros(shape)
                if old:
                    kmin[:, :, :old], kmax[:, :, :old] = self.kmin[:, :, :old], self.kmax[:, :, :old]
                self.kmin, self.kmax = kmin, kmax
            self.kmin[:, :, first:last] = lo
            self.kmax[:, :, first:last] = hi
        else:  # no (or too small a) reservation: grow by concatenation
            self.kmin = lo if first == 0 else torch.cat((self.kmin[:, :, :first], lo), dim=2)
            self.kmax = hi if first == 0 else torch.cat((self.kmax[:, :, :first], hi), dim=2)
        self.pages, self.kv_len = last, total

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positional,
               start: int) -> torch.Tensor:
        t = q.shape[2]
        total = start + t
        positions = torch.arange(start, total, device=q.device)
        q = positional.rotate(q, positions, total)
        k = positional.rotate(k, positions, total)
        keys, values = self.kv.store(k, v, start, total)  # (B, Hkv, total, D)
        if self.sparse:
            self._update_bounds(keys, start, total)
        if not self.sparse or t > 1 or self.n_selected(total) >= self.pages:
            bias = positional.bias(positions, torch.arange(total, device=q.device))
            return causal_sdpa(q, keys, values, q_offset=start, bias=bias)
        return self._decode_sparse(q, positional, keys, values)

    def page_scores(self, q: torch.Tensor) -> torch.Tensor:
        """Rotated q (B, H, 1, D) -> upper bounds of q . k per page, (B, Hkv, G, pages)."""
        B, H, _, D = q.shape
        Hkv = self.kmax.shape[1]
        qg = q.view(B, Hkv, H // Hkv, D)  # (B, Hkv, G, D)
        kmin, kmax = self.kmin[:, :, : self.pages], self.kmax[:, :, : self.pages]
        # sum_i max(q_i m_i, q_i M_i) = q+ . M + q- . m: two matmuls instead of a (.., pages, D) tensor
        return qg.clamp(min=0) @ kmax.transpose(-1, -2) + qg.clamp(max=0) @ kmin.transpose(-1, -2)

    def select_pages(self, q: torch.Tensor) -> torch.Tensor:
        """Rotated q (B, H, 1, D) -> the pages each query head reads, (B, Hkv, G, n_selected)."""
        score = self.page_scores(q)
        if self.selection == "kernel":
            score[..., -1] = float("inf")  # the current page is always read
        return score.topk(self.n_selected(self.kv_len), dim=-1).indices

    def _decode_sparse(self, q: torch.Tensor, positional, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        B, H, _, D = q.shape
        Hkv, total, P = keys.shape[1], keys.shape[2], self.page_size
        G = H // Hkv
        pages = self.select_pages(q)
        tok = (pages[..., None] * P + torch.arange(P, device=q.device)).flatten(-2)  # (B, Hkv, G, bp*P)
        valid = tok < total  # the partial last page
        tok = tok.clamp(max=total - 1)
        idx = tok[..., None].expand(*tok.shape, D)
        k_sel = keys[:, :, None].expand(B, Hkv, G, total, D).gather(3, idx)  # (B, Hkv, G, L, D)
        v_sel = values[:, :, None].expand(B, Hkv, G, total, D).gather(3, idx)
        qg = q.view(B, Hkv, G, 1, D)
        logits = (qg @ k_sel.transpose(-1, -2)).squeeze(-2) * D**-0.5  # (B, Hkv, G, L)
        bias = positional.bias(torch.tensor([total - 1], device=q.device),
                               torch.arange(total, device=q.device))  # (H, 1, total) or None
        if bias is not None:  # ALiBi (H, 1, total): pick each head's selected columns
            logits = logits + bias.view(1, Hkv, G, total).expand(B, Hkv, G, total).gather(-1, tok)
        weights = logits.masked_fill(~valid, float("-inf")).softmax(dim=-1)
        out = (weights[..., None, :] @ v_sel).squeeze(-2)  # (B, Hkv, G, D)
        return out.view(B, H, 1, D)


def effective_dense_layers(dense_layers: int, n_layers: int) -> int:
    """min(dense_layers, n_layers - 1): at least the last layer is sparse (see the module docstring)."""
    return max(0, min(dense_layers, n_layers - 1))


_warned: set[tuple[int, int]] = set()


@CACHE_POLICIES.register("quest")
@dataclass
class QuestConfig(CacheConfig):
    policy: str = "quest"
    budget: int = 256  # tokens read per query head
    page_size: int = 16
    dense_layers: int = 2  # the first layers stay dense (at most n_layers - 1; see the module docstring)
    selection: str = "eval"  # eval (quest_attention.py, the paper's accuracy) | kernel (current page forced)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("budget", "page_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"cache.{name}={getattr(self, name)} must be >= 1")
        if self.dense_layers < 0:
            raise ValueError(f"cache.dense_layers={self.dense_layers} must be >= 0")
        check_selection(self.selection)
        if self.budget < self.page_size:
            raise ValueError(
                f"cache.budget={self.budget} must be >= cache.page_size={self.page_size} (at least one page)"
            )

    def describe(self) -> str:
        return (f"quest(budget={self.budget},page={self.page_size},dense_layers={self.dense_layers},"
                f"selection={self.selection},prefill={self.prefill})")

    def layer_cache(self, layer_idx: int, n_layers: int, n_kv_heads: int) -> QuestCache:
        dense = effective_dense_layers(self.dense_layers, n_layers)
        if dense != self.dense_layers and (self.dense_layers, n_layers) not in _warned:
            _warned.add((self.dense_layers, n_layers))
            log.warning("quest: cache.dense_layers=%d with %d layers; keeping %d dense so that Quest is not "
                        "full attention", self.dense_layers, n_layers, dense)
        return QuestCache(self.budget, self.page_size, sparse=layer_idx >= dense, selection=self.selection)
