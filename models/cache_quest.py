"""Quest's query-aware page selection: policy ``quest``.

Every key and value is kept (rotated at its absolute position). Keys are grouped in pages of
``page_size`` tokens, each with the per-channel min m and max M of its rotated keys (the metadata,
counted in bytes). At decode (one query token) each *query head* scores every page by the upper
bound sum_i max(q_i m_i, q_i M_i) >= q . k, reads the top pages within ``budget`` tokens — the
current (last) page always among them, as in Quest's kernel path — and takes an exact softmax over
the selected tokens only. Prefill, multi-token calls, the first ``dense_layers`` layers and contexts
of at most budget/page_size pages are dense.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from models.attention import causal_sdpa
from models.cache import KV_POLICIES, LABELS, VALIDATORS, CacheConfig, FullKVCache, KVLayerCache


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

    def __init__(self, budget: int, page_size: int, sparse: bool) -> None:
        self.budget_pages = max(1, budget // page_size)
        self.page_size, self.sparse = page_size, sparse
        self.kv = FullKVCache()  # (B, Hkv, N, D) rotated, absolute positions; preallocates on reserve()
        self.kmin: torch.Tensor | None = None  # (B, Hkv, pages, D), sparse layers only
        self.kmax: torch.Tensor | None = None

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from self.kv.tensors()
        yield from (t for t in (self.kmin, self.kmax) if t is not None)

    def reserve(self, capacity: int) -> None:
        self.kv.reserve(capacity)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positional,
               start: int) -> torch.Tensor:
        t = q.shape[2]
        total = start + t
        positions = torch.arange(start, total, device=q.device)
        q = positional.rotate(q, positions, total)
        k = positional.rotate(k, positions, total)
        keys, values = self.kv.store(k, v, start, total)  # (B, Hkv, total, D)
        if self.sparse:  # recompute the bounds of the pages this call touched
            first = start // self.page_size
            lo, hi = page_bounds(keys[:, :, first * self.page_size :], self.page_size)
            self.kmin = lo if first == 0 else torch.cat((self.kmin[:, :, :first], lo), dim=2)
            self.kmax = hi if first == 0 else torch.cat((self.kmax[:, :, :first], hi), dim=2)
        if not self.sparse or t > 1 or self.kmin.shape[2] <= self.budget_pages:
            bias = positional.bias(positions, torch.arange(total, device=q.device))
            return causal_sdpa(q, keys, values, q_offset=start, bias=bias)
        return self._decode_sparse(q, positional, keys, values)

    def select_pages(self, q: torch.Tensor) -> torch.Tensor:
        """Rotated q (B, H, 1, D) -> the pages each query head reads, (B, Hkv, G, budget_pages)."""
        B, H, _, D = q.shape
        Hkv = self.kmax.shape[1]
        qg = q.view(B, Hkv, H // Hkv, D)  # (B, Hkv, G, D)
        # sum_i max(q_i m_i, q_i M_i) = q+ . M + q- . m: two matmuls instead of a (.., pages, D) tensor
        score = qg.clamp(min=0) @ self.kmax.transpose(-1, -2) + qg.clamp(max=0) @ self.kmin.transpose(-1, -2)
        score[..., -1] = float("inf")  # the current page is always read
        return score.topk(self.budget_pages, dim=-1).indices  # (B, Hkv, G, bp)

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


def _check(cfg: CacheConfig) -> None:
    if cfg.budget < cfg.page_size:
        raise ValueError(
            f"cache.budget={cfg.budget} must be >= cache.page_size={cfg.page_size} (at least one page)"
        )


KV_POLICIES["quest"] = lambda cfg, layer_idx, n_layers, n_kv_heads: QuestCache(
    cfg.budget, cfg.page_size, sparse=layer_idx >= cfg.dense_layers
)
VALIDATORS["quest"] = _check
LABELS["quest"] = (
    lambda c: f"quest(budget={c.budget},page={c.page_size},dense_layers={c.dense_layers},prefill={c.prefill})"
)
