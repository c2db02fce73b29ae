"""Decayed linear attention, the math GLA, RetNet's retention and Mamba-2 (SSD) share, on the pure-PyTorch path.

Per head, with a state S (d_k x d_v) and one token's q, k (d_k) and v (d_v) as row vectors:

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,        o_t = scale * q_t S_t

where the log-decay g_t <= 0 is per key channel (GLA: shape (..., d_k)) or one scalar per head
(retention, Mamba-2: shape (...,)). ``chunked_decayed_attention`` computes every o_t at once, a chunk
at a time: inside a chunk a causal quadratic form with a decay mask, across chunks the recurrence on
S; ``decayed_attention_step`` is one token of the recurrence (the decode step).

Numerics: every decay factor is exp of a difference of cumulative log-decays that is <= 0 (a later
cumulative sum minus an earlier one), and the mask sets the would-be positive differences (key after
query) to -inf *before* the exp, so nothing overflows however strong the decay, in values or gradients.
A per-channel decay needs a (chunk x chunk x d_k) mask per chunk, so its default chunk is smaller.
Padding T to a multiple of the chunk uses g = 0, k = v = q = 0: it changes neither outputs nor state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch
import torch.nn.functional as F

from models.caches import LayerCache

DEFAULT_CHUNK_SCALAR = 64  # scalar decay per head: a (C x C) mask per chunk
DEFAULT_CHUNK_CHANNEL = 8  # per-key-channel decay: a (C x C x d_k) mask per chunk (8: fastest on CPU at L 64-512)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp32 for half types, unchanged for fp32/fp64 (so float64 tests stay exact)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def chunked_decayed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                              scale: float = 1.0, initial_state: Optional[torch.Tensor] = None,
                              chunk_size: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (B, H, T, K), v (B, H, T, V), log-decay g (B, H, T, K) or (B, H, T) -> (o (B, H, T, V), S_T).

    ``initial_state`` (B, H, K, V) is S_0 (zeros when None); the returned final state has the dtype
    the computation ran in (at least float32). ``chunk_size`` None: 64 for a scalar decay, 8 per channel.
    """
    per_channel = g.dim() == 4
    B, H, T, K = q.shape
    Vd = v.shape[-1]
    dtype = torch.promote_types(at_least_fp32(q).dtype, at_least_fp32(g).dtype)
    q, k, v, g = (t.to(dtype) for t in (q, k, v, g))
    C = chunk_size or (DEFAULT_CHUNK_CHANNEL if per_channel else DEFAULT_CHUNK_SCALAR)
    C = min(C, T)
    pad = (-T) % C
    if pad:  # zero q/k/v and no decay: padded tokens neither read nor write the state
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g = F.pad(g, (0, 0, 0, pad) if per_channel else (0, pad))
    N = (T + pad) // C
    q, k, v = (t.reshape(B, H, N, C, t.shape[-1]) for t in (q, k, v))  # (B, H, N, C, .)
    b = g.reshape(B, H, N, C, *g.shape[3:]).cumsum(3)  # cumulative log-decay inside each chunk
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()  # [t, s]: key s <= query t
    q = q * scale

    # 1. inside each chunk: o_t += sum_{s<=t} (q_t . k_s exp(b_t - b_s)) v_s
    if per_channel:
        diff = b[..., :, None, :] - b[..., None, :, :]  # (B, H, N, C_t, C_s, K)
        decay = torch.exp(diff.masked_fill(~causal[..., None], float("-inf")))
        # elementwise, not a 3-operand einsum: that lowers to thousands of tiny bmm calls on CPU
        scores = (q[..., :, None, :] * k[..., None, :, :] * decay).sum(-1)
    else:
        diff = b[..., :, None] - b[..., None, :]  # (B, H, N, C_t, C_s)
        scores = (q @ k.transpose(-1, -2)) * torch.exp(diff.masked_fill(~causal, float("-inf")))
    out = scores @ v  # (B, H, N, C, V)

    # 2. each chunk's own contribution to the state at its end, and the decay across the whole chunk
    last = b[:, :, :, -1:]  # (B, H, N, 1[, K])
    to_end = torch.exp(last - b)  # exp(b_C - b_s) <= 1
    k_end = k * (to_end if per_channel else to_end[..., None])
    local = k_end.transpose(-1, -2) @ v  # (B, H, N, K, V)
    chunk_decay = torch.exp(last[:, :, :, 0])  # (B, H, N[, K])

    # 3. the recurrence across chunks: the state entering each chunk
    S = (q.new_zeros(B, H, K, Vd) if initial_state is None else initial_state.to(dtype))
    entering = []
    for n in range(N):
        entering.append(S)
        d = chunk_decay[:, :, n]
        S = (d[..., None] if per_channel else d[..., None, None]) * S + local[:, :, n]
    states = torch.stack(entering, dim=2)  # (B, H, N, K, V)

    # 4. what each query reads from the state entering its chunk: (q_t exp(b_t)) S_0
    q_in = q * (torch.exp(b) if per_channel else torch.exp(b)[..., None])
    out = out + q_in @ states
    return out.reshape(B, H, N * C, Vd)[:, :, :T], S


def decayed_attention_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           state: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k (B, H, K), v (B, H, V), g (B, H, K) or (B, H), state (B, H, K, V) -> (o (B, H, V), state)."""
    f = state.dtype
    decay = torch.exp(g.to(f))
    decay = decay[..., None] if g.dim() == 3 else decay[..., None, None]
    state = decay * state + k.to(f)[..., None] * v.to(f)[..., None, :]
    o = ((q.to(f) * scale)[..., None] * state).sum(-2)
    return o, state


class RecurrentStateCache(LayerCache):
    """A layer's constant-size decode state: the (B, H, K, V) linear-attention state, and for mixers
    with a short causal conv (Mamba-2) its last d_conv inputs. Bytes do not depend on the length."""

    def __init__(self, state: torch.Tensor, conv_state: Optional[torch.Tensor] = None) -> None:
        self.state = state
        self.conv_state = conv_state

    def tensors(self) -> Iterator[torch.Tensor]:
        yield self.state
        if self.conv_state is not None:
            yield self.conv_state
