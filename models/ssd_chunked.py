"""Mamba-2's SSD in its chunked matmul form with B and C shared by the heads of a group (Dao & Gu 2024, sec. 6).

Per head h (group g = h // R, R heads per group), with state H (d_state N x headdim P):

    H_t = exp(g_t) H_{t-1} + B_t^T v_t,    y_t = C_t H_t        (v = dt x, g = dt A: models/mixers/mamba2.py)

Inside a chunk of Q tokens: y = (C B^T o L_h) v with L_h[t, s] = exp(b_t - b_s) for s <= t (b the cumulative
log-decay): C B^T is one (Q x Q) matmul per group, not per head (the generic decayed attention,
models/linear_attention.py, sees B and C expanded to every head and multiplies them H / G times). Across
chunks: each chunk's state contribution and the recurrence over chunk states, then what a chunk's queries read
from the state entering it. At training lengths up to Q (one chunk, no cache) only the first part runs.

The decay mask is one fused C pass each way (models/native_decay_mask.py) on float32 CPU tensors where it built,
its torch form elsewhere; every matmul is torch's.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from models import native_decay_mask
from models.linear_attention import DEFAULT_CHUNK_SCALAR


def ssd_chunked(C: torch.Tensor, Bk: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                initial_state: Optional[torch.Tensor] = None, chunk_size: Optional[int] = None,
                final_state: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """C, Bk (batch, T, G, N), v (batch, T, H, P), g (batch, T, H) log-decays <= 0 -> (y (batch, T, H, P), H_T).

    ``initial_state`` (batch, H, N, P) is H_0 (zeros when None); the final state is returned when
    ``final_state`` (else None). Inputs in one floating dtype; H a multiple of G."""
    batch, T, G, N = C.shape
    H, P = v.shape[2:]
    R = H // G
    Q = min(chunk_size or DEFAULT_CHUNK_SCALAR, T)
    pad = (-T) % Q
    if pad:  # zero C, B and v and no decay: padded tokens neither read nor write the state
        C, Bk, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (C, Bk, v))
        g = F.pad(g, (0, 0, 0, pad))
    n = (T + pad) // Q
    Cc, Bc = (t.reshape(batch, n, Q, G, N).permute(0, 3, 1, 2, 4) for t in (C, Bk))  # (batch, G, n, Q, N)
    vc = v.reshape(batch, n, Q, G, R, P).permute(0, 3, 1, 4, 2, 5)  # (batch, G, n, R, Q, P)
    b = g.reshape(batch, n, Q, G, R).permute(0, 3, 1, 4, 2).cumsum(-1)  # (batch, G, n, R, Q)

    # 1. inside each chunk: y_t = sum_{s<=t} (C_t . B_s) exp(b_t - b_s) v_s
    scores = Cc @ Bc.transpose(-1, -2)  # (batch, G, n, Q, Q): once per group
    blocks = batch * G * n
    args = (scores.reshape(blocks, Q, Q), b.reshape(blocks, R, Q), vc.reshape(blocks, R, Q, P))
    product = (native_decay_mask.fused_decay_mask_product if native_decay_mask.usable(*args)
               else native_decay_mask.decay_mask_product_reference)
    y = product(*args).reshape(batch, G, n, R, Q, P)
    y = y.transpose(3, 4)  # (batch, G, n, Q, R, P)
    state = None
    if n > 1 or initial_state is not None or final_state:
        # the states as (N, R x P) per group: the matmuls with B and C take every head of a group at once (a
        # broadcast over heads would copy B and C R times); the decays scale v and the read-outs, not B and C
        b_q = b.transpose(3, 4)[..., None]  # (batch, G, n, Q, R, 1)
        v_q = vc.transpose(3, 4)  # (batch, G, n, Q, R, P)
        # 2. each chunk's own contribution to the state at its end, and the decay across the whole chunk
        to_end = (torch.exp(b_q[:, :, :, -1:] - b_q) * v_q).flatten(-2)  # (batch, G, n, Q, R P)
        local = Bc.transpose(-1, -2) @ to_end  # (batch, G, n, N, R P)
        chunk_decay = torch.exp(b_q[:, :, :, -1])  # (batch, G, n, R, 1)
        # 3. the recurrence across chunks: the state entering each chunk, (batch, G, N, R, P)
        state = (v.new_zeros(batch, G, N, R, P) if initial_state is None
                 else initial_state.to(v.dtype).reshape(batch, G, R, N, P).transpose(2, 3))
        entering = []
        for i in range(n):
            entering.append(state)
            state = chunk_decay[:, :, i, None] * state + local[:, :, i].unflatten(-1, (R, P))
        # 4. what each query reads from the state entering its chunk: exp(b_t) C_t H_0
        reads = Cc @ torch.stack(entering, dim=2).flatten(-2)  # (batch, G, n, Q, R P)
        y = y + torch.exp(b_q) * reads.unflatten(-1, (R, P))
        state = state.transpose(2, 3).reshape(batch, H, N, P) if final_state else None
    return y.permute(0, 2, 3, 1, 4, 5).reshape(batch, n * Q, H, P)[:, :T], state
