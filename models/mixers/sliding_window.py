"""The sliding-window attention mixer (Mistral; Gemma's local layers): softmax attention over the last W tokens.

Query i sees keys j with i - W < j <= i (itself included: HF's ``q_idx - kv_idx < sliding_window``). The
layer is the attention mixer's (GQA projections with HF Llama/Mistral names, the model's positional rule,
SwiGLU after it); only what it attends to differs:
- training / teacher-forced: blocks of W queries against their 2W keys, O(T W) (models/patterns/banded.py), or
  below a few windows, or with ALiBi, one SDPA call with the (T, T) band mask;
- decode: a ring buffer of W slots per layer (``RingKVCache``): token p is written to slot p mod W, keys
  rotated at their absolute positions, so nothing is ever shifted or re-allocated and the decode state
  is 2 W n_kv_heads head_dim values per layer whatever the length. A multi-token call (prefill) runs in
  blocks of at most W queries against the ring and the block, so its memory is bounded by W too.
KV-cache policies (models/caches/) act on the ``attention`` layers only: this layer's state is its window.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from models.caches import CacheConfig, LayerCache
from models.layers import Block
from models.mixers import MIXERS, MixerSpec
from models.mixers.attention import LLAMA_NAMES, Attention, check_attention_knobs, init_block, shared_positional
from models.patterns.banded import windowed_sdpa
from models.pos.base import PosConfig


@dataclass
class SlidingWindowConfig:
    family: str = "sliding_window"
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None: n_heads (MHA); fewer: grouped-query attention
    window: int = 32  # W: keys per query, itself included (+model.mixer_args.sliding_window.window in a hybrid)
    mlp_hidden: Optional[int] = None  # None: 8/3 d_model rounded up to a multiple of 16 (SwiGLU)
    max_seq_len: int = 8192
    tie_embeddings: bool = False
    qkv_bias: bool = False
    dtype: Optional[str] = None  # parameter dtype (models/lm.py DTYPES); None: float32
    norm_eps: float = 1e-5
    init_std: float = 0.02
    pos: PosConfig = field(default_factory=PosConfig)

    def __post_init__(self) -> None:
        if self.family != "sliding_window":
            raise ValueError(f"model.family={self.family!r} but this is the sliding_window config")
        if self.window < 1:
            raise ValueError(f"model.window={self.window} must be >= 1 (keys per query, itself included)")
        check_attention_knobs(self)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def band_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int) -> torch.Tensor:
    """(t, s) bool, True = may attend: k_pos <= q_pos < k_pos + window."""
    lag = q_pos[:, None] - k_pos[None, :]
    return (lag >= 0) & (lag < window)


class RingKVCache(LayerCache):
    """The last W keys (rotated at their absolute positions) and values, (B, Hkv, W, D) each, token p in slot p mod W.

    Allocated at its full size on the first call: the state is constant, and ``nbytes`` is what it holds.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from (t for t in (self.k, self.v) if t is not None)

    def slot_positions(self, seen: int, device: torch.device) -> torch.Tensor:
        """(W,) the absolute position each slot holds after ``seen`` tokens; negative = still empty."""
        slots = torch.arange(self.window, device=device)
        return seen - 1 - torch.remainder(seen - 1 - slots, self.window)  # the latest p < seen with p = slot mod W

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positional, start: int) -> torch.Tensor:
        """q (B, H, t, D), k/v (B, Hkv, t, D) unrotated, tokens start..start+t-1 -> (B, H, t, D)."""
        t, W = q.shape[2], self.window
        if self.k is None:
            B, Hkv, _, D = k.shape
            self.k, self.v = k.new_zeros(B, Hkv, W, D), v.new_zeros(B, Hkv, W, D)
        outs = []
        for s in range(0, t, W):  # blocks of <= W queries: each sees the ring (earlier tokens) and the block
            e = min(s + W, t)
            outs.append(self._attend_block(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], positional, start + s))
        return torch.cat(outs, dim=2)

    def _attend_block(self, q, k, v, positional, start: int) -> torch.Tensor:
        t = q.shape[2]
        total = start + t
        pos = torch.arange(start, total, device=q.device)
        q, k = positional.rotate(q, pos, total), positional.rotate(k, pos, total)
        keys, vals = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)  # (B, Hkv, W + t, D)
        k_pos = torch.cat((self.slot_positions(start, q.device), pos))
        allowed = band_mask(pos, k_pos, self.window) & (k_pos >= 0)[None, :]  # (t, W + t)
        mask: torch.Tensor = allowed
        bias = positional.bias(pos, k_pos)
        if bias is not None:  # ALiBi
            mask = bias.to(q.dtype).masked_fill(~allowed, float("-inf"))
        out = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
        slots = torch.remainder(pos, self.window)  # t <= W: distinct slots
        self.k[:, :, slots] = k
        self.v[:, :, slots] = v
        return out


class SlidingWindowAttention(Attention):
    """The attention mixer with a band mask and a ring-buffer decode state."""

    def forward(self, x: torch.Tensor, layer_cache: Optional[RingKVCache] = None, start: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        if layer_cache is not None:
            y = layer_cache.attend(q, k, v, self.positional, start)
        else:
            pos = torch.arange(T, device=x.device)
            q, k = self.positional.rotate(q, pos, T), self.positional.rotate(k, pos, T)
            y = windowed_sdpa(q, k, v, self.cfg.window, bias=self.positional.bias(pos, pos))  # O(T W) past a few W
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, d_model)

    def new_layer_cache(self, batch_size: int, policy: Optional[CacheConfig] = None, layer_idx: int = 0,
                        n_layers: int = 1) -> RingKVCache:
        """The ring of W slots; a KV policy has nothing to act on here (the window is the policy)."""
        return RingKVCache(self.cfg.window)


def build_block(cfg: SlidingWindowConfig, layer_idx: int, shared: dict) -> Block:
    attn = SlidingWindowAttention(cfg, layer_idx, shared_positional(cfg, shared))
    return Block(attn, cfg.d_model, cfg.norm_eps, cfg.mlp_hidden, LLAMA_NAMES)


MIXERS.register("sliding_window")(MixerSpec("sliding_window", SlidingWindowConfig, build_block, init_block))
