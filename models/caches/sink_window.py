"""StreamingLLM's attention-sink + recent-window KV cache: policy ``sink_window``.

After every call the cache keeps the first ``sink`` and the last ``window`` tokens, so a decode
query sees at most sink + window + 1 keys, itself included (StreamingLLM / DuoAttention decode).

Two position schemes (``SinkWindowConfig.positions``):
- ``cache_relative`` (StreamingLLM): keys are stored *unrotated* and re-rotated every step by their
  cache slot 0..n-1, with the query at slot n — positions never exceed sink + window.
- ``absolute`` (DuoAttention streaming heads): keys are stored rotated at their absolute position,
  never re-assigned.

Multi-token calls (prefill, or a question fed as one chunk):
- ``prefill=dense``, and always for ``absolute``: the chunk attends to the kept cache plus itself,
  bottom-right causal — DuoAttention's "sink + recent + causal chunk". The first call of a prompt
  therefore is dense causal attention; the cache is compressed afterwards.
- ``prefill=policy`` with ``cache_relative``: token-exact. Query at absolute position a sees the
  sinks, the ``window`` tokens before it and itself, at the slots it would have had if decoded one
  token at a time; so chunked prefill equals token-by-token StreamingLLM for every chunk_size.
  RoPE scores depend only on q-slot minus k-slot: window keys are contiguous with the query, so
  one rotation by concatenation index serves them, while the sinks need the query at its own slot
  m = min(a, sink + window). We score both with one SDPA call on [q_m | q_c] . [k*sink | k*~sink].
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.caches import CACHE_POLICIES, CacheConfig, KVLayerCache
from models.patterns import causal_sdpa

POSITION_SCHEMES = ("cache_relative", "absolute")


def check_sink_window(sink: int, window: int) -> None:
    """cache.sink >= 0 and cache.window >= 1 (shared with the duo policy's streaming heads)."""
    if sink < 0:
        raise ValueError(f"cache.sink={sink} must be >= 0")
    if window < 1:
        raise ValueError(f"cache.window={window} must be >= 1")


def kept_positions(seen: int, sink: int, window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Absolute positions of the tokens a sink+window cache holds after ``seen`` tokens, (n,)."""
    if seen <= sink + window:
        return torch.arange(seen, device=device)
    return torch.cat((torch.arange(sink, device=device), torch.arange(seen - window, seen, device=device)))


class SinkWindowCache(KVLayerCache):
    """First ``sink`` + last ``window`` tokens of k/v, (B, Hkv, n, D) each, n <= sink + window."""

    def __init__(self, sink: int, window: int, positions: str = "cache_relative",
                 token_exact: bool = False) -> None:
        if positions not in POSITION_SCHEMES:
            raise ValueError(f"cache.positions={positions!r}; allowed: {POSITION_SCHEMES}")
        self.sink, self.window = sink, window
        self.relative = positions == "cache_relative"
        self.token_exact = token_exact and self.relative  # absolute multi-token calls are chunk-wise
        self.k: torch.Tensor | None = None  # unrotated (cache_relative) or rotated (absolute)
        self.v: torch.Tensor | None = None
        self.seen = 0  # tokens processed so far; the kept positions follow from it

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from (t for t in (self.k, self.v) if t is not None)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positional,
               start: int) -> torch.Tensor:
        if start != self.seen:
            raise ValueError(f"sink_window cache holds {self.seen} tokens but was called at position {start}")
        t = q.shape[2]
        n = 0 if self.k is None else self.k.shape[2]
        a = torch.arange(start, start + t, device=q.device)  # absolute query positions (t,)
        p = torch.cat((kept_positions(start, self.sink, self.window, q.device), a))  # (n+t,) key positions
        if self.relative:
            keys = k if self.k is None else torch.cat((self.k, k), dim=2)  # (B, Hkv, n+t, D) unrotated
            vals = v if self.v is None else torch.cat((self.v, v), dim=2)
            if self.token_exact and t > 1:
                out = self._token_exact(q, keys, vals, positional, a, p)
            else:
                c = torch.arange(n + t, device=q.device)  # cache slots
                qr = positional.rotate(q, c[n:], n + t)
                kr = positional.rotate(keys, c, n + t)
                out = causal_sdpa(qr, kr, vals, q_offset=n, bias=positional.bias(c[n:], c))
        else:
            qr = positional.rotate(q, a, start + t)
            keys = positional.rotate(k, a, start + t)  # stored rotated at absolute positions
            keys = keys if self.k is None else torch.cat((self.k, keys), dim=2)
            vals = v if self.v is None else torch.cat((self.v, v), dim=2)
            out = causal_sdpa(qr, keys, vals, q_offset=n, bias=positional.bias(a, p))
        self.k, self.v = self._evict(keys), self._evict(vals)
        self.seen = start + t
        return out

    def _evict(self, x: torch.Tensor) -> torch.Tensor:
        """Keep the first sink + last window columns; a fresh tensor, so nbytes is what is held."""
        if x.shape[2] <= self.sink + self.window:
            return x
        return torch.cat((x[:, :, : self.sink], x[:, :, -self.window :]), dim=2)

    def _token_exact(self, q: torch.Tensor, keys: torch.Tensor, vals: torch.Tensor, positional,
                     a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Each query sees sinks + the window before it + itself, at its token-by-token slots."""
        S, R = self.sink, self.window
        t, s, D = q.shape[2], keys.shape[2], q.shape[-1]
        c = torch.arange(s, device=q.device)  # concatenation index: the slot of every window key
        m = a.clamp(max=S + R)  # the query's slot in its own token-by-token view (t,)
        seq_len = int(m[-1]) + 1
        is_sink = (p < S)[:, None].to(keys.dtype)  # (s, 1); sinks are the first columns
        kr = positional.rotate(keys, c, seq_len)  # (B, Hkv, s, D)
        q2 = torch.cat((positional.rotate(q, m, seq_len), positional.rotate(q, c[s - t:], seq_len)), -1)
        k2 = torch.cat((kr * is_sink, kr * (1 - is_sink)), dim=-1)  # q2 . k2 = q_m . k_sink + q_c . k_win
        allowed = (p[None, :] <= a[:, None]) & ((p[None, :] < S) | (p[None, :] >= a[:, None] - R))  # (t, s)
        mask: torch.Tensor = allowed
        bias_m, bias_c = positional.bias(m, c), positional.bias(c[s - t:], c)
        if bias_m is not None:  # ALiBi: the sink columns measure distance from the query's own slot
            bias = torch.where(p[None, None, :] < S, bias_m, bias_c)  # (H, t, s)
            mask = bias.to(q.dtype).masked_fill(~allowed, float("-inf"))
        gqa = q.shape[1] != keys.shape[1]
        return F.scaled_dot_product_attention(q2, k2, vals, attn_mask=mask, scale=D**-0.5, enable_gqa=gqa)


@CACHE_POLICIES.register("sink_window")
@dataclass
class SinkWindowConfig(CacheConfig):
    policy: str = "sink_window"
    sink: int = 4  # attention-sink tokens
    window: int = 256  # most recent tokens
    positions: str = "cache_relative"  # cache_relative (StreamingLLM) | absolute (DuoAttention's streaming heads)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sink_window(self.sink, self.window)
        if self.positions not in POSITION_SCHEMES:
            raise ValueError(f"cache.positions={self.positions!r}; allowed: {POSITION_SCHEMES}")

    def describe(self) -> str:
        return f"sink_window(S={self.sink},R={self.window},{self.positions},prefill={self.prefill})"

    def layer_cache(self, layer_idx: int, n_layers: int, n_kv_heads: int) -> SinkWindowCache:
        return SinkWindowCache(self.sink, self.window, self.positions, token_exact=self.prefill == "policy")
