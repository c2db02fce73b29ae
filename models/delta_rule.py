"""The gated delta rule (Yang et al. 2025, Gated DeltaNet) in pure PyTorch: a token loop and the chunked WY form.

Per head, with the state S (K x V) and q, k (K,), v (V,) of one token as row vectors:

    S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,      o_t = (scale q_t) S_t

computed as fla's recurrence does it: S <- exp(g_t) S;  u = beta_t (v_t - k_t S);  S <- S + k_t^T u.
g_t <= 0 is the log-decay, beta_t in (0, 1) the write strength. Both functions take fla's layout
(``chunk_gated_delta_rule``: q, k (B, T, H, K), v (B, T, H, V), g, beta (B, T, H), state (B, H, K, V))
so the CUDA kernel and these are interchangeable (models/mixers/gated_deltanet.py picks one), compute in
at least float32 (float64 stays float64) and return (o (B, T, H, V) in v's dtype, final state).

Chunked (WY) form. Inside a chunk of C tokens entered with state S0, write G_i = exp(g_1 + ... + g_i).
Every state is S_i = G_i S0 + sum_{j<=i} (G_i / G_j) k_j^T u_j for the delta-corrected values
u_j = beta_j (v_j - k_j exp(g_j) S_{j-1}); substituting S_{j-1} gives a unit lower-triangular system
(I + A) U = beta V - (beta G K) S0 with A_jm = beta_j (G_j / G_m) k_j.k_m (m < j), so
U = W_v - W_k S0, W_v = (I + A)^-1 beta V, W_k = (I + A)^-1 beta G K: two triangular solves per chunk,
all chunks at once. Then o_i = G_i q_i S0 + sum_{j<=i} (G_i / G_j) (q_i.k_j) u_j, and the state leaving
the chunk is G_C S0 + sum_j (G_C / G_j) k_j^T u_j: one small (K x V) recurrence across chunks. Every
decay ratio used is exp of a non-positive number, so nothing overflows however strong the gates are.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from models import native_delta_rule

# Measured on CPU, one thread, fwd+bwd, B=16, H=4, K=16, V=32 (ms): token loop / chunks of 16, 32, 64 tokens
# (python scripts/bench_mixers.py --delta-rule --batch 16 --lengths 1,4,64,256,512):
#   T=1: 0.8 / 1.2 / 1.2 / 1.2;  T=4: 2.2 / 1.8 / 1.7 / 1.7;  T=64: 45 / 8.1 / 6.8 / 8.4;
#   T=256: 336 / 46 / 33 / 37;  T=512: - / 126 / 91 / 111  (B=64, T=64: 213 / 56 / 26 / 38).
# So the loop only where it is a couple of steps (decode), 32-token chunks elsewhere (fla's kernels use 64).
DEFAULT_CHUNK = 32  # tokens per chunk of the WY form
RECURRENT_MAX_T = 2  # at most this many tokens go through the token loop (chunk_size=None)


def _working(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B, T, H, ...) -> (B, H, T, ...) in at least float32 (the state math never runs in half types)."""
    dt = torch.promote_types(tensors[0].dtype, torch.float32)
    return tuple(t.transpose(1, 2).to(dt) for t in tensors)


def recurrent_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                               beta: torch.Tensor, scale: Optional[float] = None,
                               initial_state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The token-by-token recurrence (the definition; the decode step is one iteration of it)."""
    out_dtype = v.dtype
    q, k, v, g, beta = _working(q, k, v, g, beta)  # (B, H, T, K), (B, H, T, V), (B, H, T)
    Bsz, H, T, K = k.shape
    scale = K**-0.5 if scale is None else scale
    S = q.new_zeros(Bsz, H, K, v.shape[-1]) if initial_state is None else initial_state.to(q.dtype)
    outs = []
    for t in range(T):
        S, o = delta_step(S, scale * q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t], beta[:, :, t])
        outs.append(o)
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(v.shape)  # (B, H, T, V)
    return o.transpose(1, 2).to(out_dtype), S


def delta_step(S: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
               beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: S (B, H, K, V); q (already scaled), k (B, H, K); v (B, H, V); g, beta (B, H) -> (S, o (B, H, V))."""
    S = S * g.exp()[..., None, None]
    u = beta[..., None] * (v - (k[..., None, :] @ S).squeeze(-2))  # (B, H, V): the delta-corrected value
    S = S + k[..., :, None] * u[..., None, :]
    return S, (q[..., None, :] @ S).squeeze(-2)


def chunk_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           beta: torch.Tensor, scale: Optional[float] = None,
                           initial_state: Optional[torch.Tensor] = None,
                           chunk_size: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked WY form (module docstring); equal to ``recurrent_gated_delta_rule`` up to rounding."""
    out_dtype = v.dtype
    q, k, v, g, beta = _working(q, k, v, g, beta)
    Bsz, H, T, K = k.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    C = max(1, min(chunk_size, T))
    N = -(-T // C)
    pad = N * C - T  # padded tokens (g = 0, beta = 0, k = v = 0) come last and change no state
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        g, beta = (F.pad(t, (0, pad)) for t in (g, beta))
    q, k, v = (t.reshape(Bsz, H, N, C, -1) for t in (q * scale, k, v))  # (B, H, N, C, K|V)
    g, beta = g.reshape(Bsz, H, N, C), beta.reshape(Bsz, H, N, C)
    logG = g.cumsum(-1)  # (B, H, N, C): log G_i inside each chunk
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    ratio = (logG[..., :, None] - logG[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # G_i / G_j, j <= i
    kb = k * beta[..., None]
    A = (kb @ k.transpose(-1, -2)) * ratio  # (B, H, N, C, C); its strictly lower part is the system's A
    system = A.tril(-1) + torch.eye(C, dtype=q.dtype, device=q.device)
    W_v = torch.linalg.solve_triangular(system, v * beta[..., None], upper=False, unitriangular=True)
    W_k = torch.linalg.solve_triangular(system, kb * logG.exp()[..., None], upper=False, unitriangular=True)
    scores = (q @ k.transpose(-1, -2)) * ratio  # (B, H, N, C, C): (G_i / G_j) q_i.k_j, j <= i
    q_decayed = q * logG.exp()[..., None]  # G_i q_i: reads the entering state
    k_to_end = k * (logG[..., -1:] - logG).exp()[..., None]  # (G_C / G_j) k_j: writes the leaving state
    S = q.new_zeros(Bsz, H, K, V) if initial_state is None else initial_state.to(q.dtype)
    outs = []
    for n in range(N):  # the only sequential part: (K x V) states across chunks
        U = W_v[:, :, n] - W_k[:, :, n] @ S  # (B, H, C, V)
        outs.append(q_decayed[:, :, n] @ S + scores[:, :, n] @ U)
        S = S * logG[:, :, n, -1].exp()[..., None, None] + k_to_end[:, :, n].transpose(-1, -2) @ U
    o = torch.stack(outs, dim=2).reshape(Bsz, H, N * C, V)[:, :, :T]
    return o.transpose(1, 2).to(out_dtype), S


def gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                     chunk_size: Optional[int] = None, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The faster form for this length: with ``fused`` (model.kernel=auto) on float32 CPU inputs the fused C
    recurrence (models/native_delta_rule.py) where it built; else the token loop up to ``RECURRENT_MAX_T``
    tokens and the chunked form beyond; ``chunk_size`` set: always chunked, with that many tokens per chunk."""
    if fused and chunk_size is None and native_delta_rule.usable(q, k, v, g, beta, initial_state):
        return native_delta_rule.fused_gated_delta_rule(q, k, v, g, beta, k.shape[-1] ** -0.5 if scale is None
                                                        else scale, initial_state)
    if chunk_size is None and q.shape[1] <= RECURRENT_MAX_T:
        return recurrent_gated_delta_rule(q, k, v, g, beta, scale, initial_state)
    return chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, chunk_size or DEFAULT_CHUNK)
