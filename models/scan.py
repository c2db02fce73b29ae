"""The selective scan (Mamba's SSM) in pure PyTorch, memory-lean and cache-friendly on CPU.

``selective_scan`` takes the argument layout of ``mamba_ssm``'s ``selective_scan_fn`` so the CUDA
kernel and this reference are interchangeable (models/mixers/mamba.py picks one):

    delta = softplus(delta + delta_bias)                       (if delta_softplus)
    h_t   = exp(delta_t A) * h_{t-1} + delta_t B_t u_t         h: (B, D, N), h_{-1} = initial_state
    y_t   = C_t . h_t + D u_t,  then  y * silu(z)

Memory. The discretised exp(delta A), delta B u and the states h are (B, L, D, N): N = 16 times
the block's activations. Like the CUDA kernel (which keeps them in SRAM and recomputes them in its
backward), we never build them for the whole sequence: the sequence is cut into chunks of
``chunk_size`` tokens; the forward keeps only the state entering each chunk, and the backward walks
the chunks in reverse, recomputes one chunk's states from its entering state and back-propagates
through it by hand (the gradient of the state crosses chunk boundaries like the state does).
Softplus, D and the silu(z) gate are fused in, so nothing of size (B, D, L) is saved beyond the inputs.

Two implementations of that plan, picked by the state size B * D * N (``STEP_MIN_STATE``; both are
tested against the token-by-token recurrence):

- stepped (large states, e.g. training batches): the recurrence one token at a time on (B, N, D)
  tensors, exp(delta_t A), the drive and y_t = C_t . h_t computed inside the step. A step's tensors
  fit in the L2 cache while a chunk's (B, Q, N, D) ones do not, and a scan vectorised over the chunk
  is bound by memory traffic (about twenty passes over tensors that size); work buffers are reused,
  since a fresh state-sized tensor per step costs more than its arithmetic (the allocator maps and
  zeroes new pages for tensors this large); a batch whose states exceed ``STEP_MAX_TILE`` runs in
  tiles of batch rows, one scan each, so the states stay in cache. Inputs are read (B, L, X) with X
  contiguous, so a caller holding (B, L, X) tensors (the Mamba mixer) passes transposed views
  without copies; gradients come back in each input's layout.
- vectorised (small states, e.g. batch 1): a whole chunk at a time, where per-op overhead of the step
  loop would dominate and the chunk's tensors fit in cache. Inside a chunk h_t = a_t h_{t-1} + x_t is
  solved by ``_chunked_scan``, a two-level scan: split the Q steps into ~sqrt(Q) blocks, scan all
  blocks at once, carry the block-final states across blocks, then add each carry times the decay
  inside its block.

Both only multiply by decays exp(delta A) <= 1 (A < 0; no exp of positive cumulative sums), so
nothing can overflow however large delta * |A| gets.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F

from models import native_scan

STEP_MIN_STATE = 16384  # B * D * N at or above which the scan runs step by step (below: vectorised chunks)
STEP_MAX_TILE = 131072  # B * D * N per stepped scan (512 KiB of float32 per state): larger batches run in tiles
STEPPED_CHUNK = 16  # step by step: tokens per backward chunk, a (16, B, N, D) buffer of recomputed states
VECTOR_CHUNK = 128  # vectorised: (B, 128, D, N) temporaries, a few (B, D, N) states per 128 tokens
SOFTPLUS_THRESHOLD = 20.0  # F.softplus's default: above it softplus(x) = x, and its slope is 1


def _chunked_scan(a: torch.Tensor, x: torch.Tensor, h0: Optional[torch.Tensor],
                  reverse: bool = False) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + x_t along dim 1 of a, x: (B, L, M); h0: (B, M) or None -> h (B, L, M).

    ``reverse`` runs the transposed recurrence g_t = x_t + a_{t+1} g_{t+1} (g_L = 0) that the
    backward needs, without flipping or shifting copies of a and x.

    x is overwritten (h is built in its storage): every caller passes a temporary it owns. On CPU a
    fresh (B, L, M) buffer costs as much as the arithmetic on it (the allocator maps new pages for
    tensors this large, and the kernel zeroes them on first touch), so the scan allocates none.
    """
    Bsz, L, M = x.shape
    # ~sqrt(L) steps per block balances the loops; a power of two avoids padding usual lengths
    Q = 2 ** round(math.log2(max(L, 1)) / 2)
    nc = -(-L // Q)
    pad = nc * Q - L
    if pad:  # padded steps (a=1, x=0) come after the real ones and are cut off below
        a = F.pad(a, (0, 0, 0, pad), value=1.0)
        x = F.pad(x, (0, 0, 0, pad))
    a = a.reshape(Bsz, nc, Q, M)  # (B, block, step-in-block, M)
    x = x.reshape(Bsz, nc, Q, M)
    steps = range(Q - 1, -1, -1) if reverse else range(Q)
    first, *rest = steps
    # 1) every block scanned from a zero state, all blocks at once; `span` = product of the a's
    #    applied inside a block (forward: a_0..a_{Q-1}; reverse: a_1..a_{Q-1})
    h = x  # in place: step j reads x_j and writes h_j at the same address
    span = a[:, :, 0].clone() if not reverse else torch.ones_like(x[:, :, 0])  # (B, nc, M)
    prev = first
    for j in rest:
        coef = a[:, :, prev] if reverse else a[:, :, j]
        h[:, :, j].addcmul_(coef, h[:, :, prev])
        span.mul_(coef)
        prev = j
    # 2) the state entering each block, carried across blocks on small (B, M) tensors
    carry = h0 if h0 is not None else torch.zeros_like(x[:, 0, 0])
    entering = [carry] * nc
    for c in (range(nc - 1, -1, -1) if reverse else range(nc)):
        entering[c] = carry
        if reverse:  # g at the block's first step, times the a that links it to the block before
            carry = a[:, c, 0] * (h[:, c, 0] + span[:, c] * carry)
        else:
            carry = h[:, c, -1] + span[:, c] * carry
    # 3) each position adds its block's entering state, decayed to it: a <= 1, nothing overflows
    carry = torch.stack(entering, dim=1)  # (B, nc, M)
    for j in steps:
        if not reverse:
            carry = carry * a[:, :, j]
        h[:, :, j] += carry
        if reverse:
            carry = carry * a[:, :, j]
    return h.reshape(Bsz, nc * Q, M)[:, :L]


class _VectorChunk:
    """One chunk's inputs in the working dtype, laid out (B, Q, ...) for the state math."""

    def __init__(self, inputs: tuple, s: int, e: int, dt: torch.dtype, softplus: bool) -> None:
        u, delta, A, Bm, Cm, D, z, bias = inputs
        rows = lambda t: t[..., s:e].transpose(1, 2).to(dt).contiguous()  # noqa: E731
        self.u = rows(u)  # (B, Q, D)
        self.pre = rows(delta)  # (B, Q, D): delta before softplus
        if bias is not None:
            self.pre = self.pre + bias.to(dt)
        self.delta = F.softplus(self.pre) if softplus else self.pre
        self.A = A.to(dt)
        self.B = rows(Bm)  # (B, Q, N)
        self.C = rows(Cm)  # (B, Q, N)
        self.D = None if D is None else D.to(dt)
        self.z = None if z is None else rows(z)  # (B, Q, D)

    def states(self, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """decay exp(delta A) and all states h from the entering state h0 (B, D, N); (B, Q, D, N) each."""
        Bsz, Q, Dn = self.u.shape
        decay = (self.delta[..., None] * self.A).exp_()
        drive = (self.delta * self.u)[..., None] * self.B[:, :, None, :]  # scanned into h in place
        h = _chunked_scan(decay.view(Bsz, Q, -1), drive.view(Bsz, Q, -1), h0.reshape(Bsz, -1))
        return decay, h.view(Bsz, Q, Dn, -1)

    def ungated(self, h: torch.Tensor) -> torch.Tensor:
        """C_t . h_t + D u_t: (B, Q, D)."""
        y = (h @ self.C[..., None]).squeeze(-1)
        return y if self.D is None else y + self.D * self.u


class _ChunkedScan(torch.autograd.Function):
    """Chunk by chunk, each chunk vectorised over its tokens; backward recomputes each chunk from its saved
    entering state. For small states (B D N), where a whole chunk's (B, Q, D, N) tensors stay in cache."""

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, D, z, bias, h0, softplus, chunk):
        with torch.autocast(u.device.type, enabled=False):  # the state math stays in >= float32
            return _ChunkedScan._forward(ctx, u, delta, A, Bm, Cm, D, z, bias, h0, softplus, chunk)

    @staticmethod
    def _forward(ctx, u, delta, A, Bm, Cm, D, z, bias, h0, softplus, chunk):
        Bsz, Dn, L = u.shape
        dt = torch.promote_types(u.dtype, torch.float32)
        inputs = (u, delta, A, Bm, Cm, D, z, bias)
        h = h0.to(dt) if h0 is not None else u.new_zeros(Bsz, Dn, A.shape[1], dtype=dt)
        y = torch.empty_like(u)
        entering = []
        for s in range(0, L, chunk):
            c = _VectorChunk(inputs, s, min(s + chunk, L), dt, softplus)
            entering.append(h)
            _, hs = c.states(h)
            yc = c.ungated(hs)
            if c.z is not None:
                yc = yc * F.silu(c.z)
            y[..., s:s + chunk] = yc.transpose(1, 2)
            h = hs[:, -1].clone()  # (B, D, N); clone frees the chunk's states
        ctx.save_for_backward(*inputs, torch.stack(entering, dim=1))
        ctx.has_h0, ctx.softplus, ctx.chunk = h0 is not None, softplus, chunk
        return y, h

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        with torch.autocast(grad_y.device.type, enabled=False):
            return _ChunkedScan._backward(ctx, grad_y, grad_last)

    @staticmethod
    def _backward(ctx, grad_y, grad_last):
        *inputs, entering = ctx.saved_tensors
        u, delta, A, Bm, Cm, D, z, bias = inputs
        L, chunk = u.shape[-1], ctx.chunk
        dt = entering.dtype
        need = ctx.needs_input_grad
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_B, grad_C = torch.empty_like(Bm), torch.empty_like(Cm)
        grad_z = None if z is None else torch.empty_like(z)
        grad_A = torch.zeros_like(A, dtype=dt)
        grad_D = None if D is None else torch.zeros_like(D, dtype=dt)
        grad_bias = None if bias is None else torch.zeros_like(bias, dtype=dt)
        g_next = grad_last.to(dt)  # dLoss/d(state leaving the chunk), carried backwards
        for i, s in reversed(list(enumerate(range(0, L, chunk)))):
            e = min(s + chunk, L)
            c = _VectorChunk(inputs, s, e, dt, ctx.softplus)
            h0 = entering[:, i]
            decay, h = c.states(h0)
            gy = grad_y[..., s:e].transpose(1, 2).to(dt).contiguous()  # (B, Q, D)
            if c.z is not None:  # y = ungated * silu(z)
                sig = torch.sigmoid(c.z)
                grad_z[..., s:e] = (gy * c.ungated(h) * sig * (1 + c.z * (1 - sig))).transpose(1, 2)
                gy = gy * c.z * sig
            gu = gy * c.D if c.D is not None else torch.zeros_like(gy)
            if c.D is not None:
                grad_D += (gy * c.u).sum((0, 1))
            grad_C[..., s:e] = (gy[:, :, None, :] @ h).squeeze(-2).transpose(1, 2)
            # g_t = dLoss/dh_t in total: from y_t, and through h_{t+1} (a reverse scan)
            gh = gy[..., None] * c.C[:, :, None, :]  # (B, Q, D, N)
            gh[:, -1] += g_next
            Bsz, Q, Dn, N = gh.shape
            g = _chunked_scan(decay.view(Bsz, Q, -1), gh.view(Bsz, Q, -1), None, reverse=True).view(Bsz, Q, Dn, N)
            del gh  # g lives in its storage now
            g_next = decay[:, 0] * g[:, 0]
            # d decay_t = g_t h_{t-1}; times decay: the gradient of delta_t A (built in decay's storage,
            # which nothing reads after this)
            ga = decay.mul_(g)  # (B, Q, D, N)
            ga[:, 1:] *= h[:, :-1]
            ga[:, 0] *= h0
            del h, decay
            grad_A += torch.einsum("bqdn,bqd->dn", ga, c.delta)
            gdelta = ga.mul_(c.A).sum(-1)  # (B, Q, D); ga is not read again
            del ga
            # drive = (delta u) B
            gdu = (g @ c.B[..., None]).squeeze(-1)  # (B, Q, D)
            grad_B[..., s:e] = ((c.delta * c.u)[:, :, None, :] @ g).squeeze(-2).transpose(1, 2)
            del g
            gdelta = gdelta + gdu * c.u
            grad_u[..., s:e] = (gu + gdu * c.delta).transpose(1, 2)
            if ctx.softplus:  # softplus' slope: sigmoid, exactly 1 above the threshold (as autograd)
                gdelta = gdelta * torch.where(c.pre > SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(c.pre))
            grad_delta[..., s:e] = gdelta.transpose(1, 2)
            if grad_bias is not None:
                grad_bias += gdelta.sum((0, 1))
        cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
        return (grad_u, grad_delta, cast(grad_A, A), grad_B, grad_C, cast(grad_D, D), grad_z,
                cast(grad_bias, bias), g_next.to(entering.dtype) if ctx.has_h0 and need[8] else None, None, None)


def _rows(t: torch.Tensor, s: int, e: int, dt: torch.dtype) -> torch.Tensor:
    """Tokens s..e-1 of a (B, X, L) input as (B, Q, X) with X contiguous (a view when it already is)."""
    x = t[..., s:e].transpose(1, 2).to(dt)
    return x if x.stride(-1) == 1 else x.contiguous()


class _StepChunk:
    """One chunk's per-token inputs, (B, Q, ...) with the channel dim contiguous.

    These are (B, Q, D)-sized (N times smaller than the states), so they are computed vectorised
    over the chunk; only the state update runs step by step, on rows [:, t].
    """

    def __init__(self, inputs: tuple, s: int, e: int, dt: torch.dtype, softplus: bool) -> None:
        u, delta, A, Bm, Cm, D, z, bias = inputs
        self.u = _rows(u, s, e, dt)  # (B, Q, D)
        self.pre = _rows(delta, s, e, dt)  # delta before softplus
        if bias is not None:
            self.pre = self.pre + bias.to(dt)
        self.delta = F.softplus(self.pre) if softplus else self.pre
        self.du = self.delta * self.u
        self.A = A.to(dt).t().contiguous()  # (N, D): states are kept (B, N, D), D contiguous
        self.B = _rows(Bm, s, e, dt)  # (B, Q, N)
        self.C = _rows(Cm, s, e, dt)
        self.D = None if D is None else D.to(dt)
        self.z = None if z is None else _rows(z, s, e, dt)

    def decay(self, t: int, out: torch.Tensor) -> torch.Tensor:
        """exp(delta_t A): (B, N, D), in ``out``."""
        return torch.mul(self.delta[:, t, None, :], self.A, out=out).exp_()

    def step(self, t: int, h: torch.Tensor, out: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
        """h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t: (B, N, D), in ``out`` (``work``: scratch)."""
        x = torch.mul(self.B[:, t, :, None], self.du[:, t, None, :], out=out)
        return x.addcmul_(self.decay(t, work), h)

    def gate(self, y: torch.Tensor) -> torch.Tensor:
        """(C . h + D u) * silu(z) from the ungated C . h, (B, Q, D); y is overwritten."""
        if self.D is not None:
            y.addcmul_(self.u, self.D)
        return y if self.z is None else y.mul_(F.silu(self.z))


def _time_major_rows(buf: torch.Tensor, Q: int) -> torch.Tensor:
    """A per-step buffer (chunk, B, 1|X, X|1) -> its first Q steps as (B, Q, X)."""
    return buf[:Q].flatten(2).transpose(0, 1)


class _SteppedScan(torch.autograd.Function):
    """Step-by-step forward keeping one state per chunk; backward recomputes a chunk's states, then walks it back."""

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, D, z, bias, h0, softplus, chunk):
        with torch.autocast(u.device.type, enabled=False):  # the state math stays in >= float32
            return _SteppedScan._forward(ctx, u, delta, A, Bm, Cm, D, z, bias, h0, softplus, chunk)

    @staticmethod
    def _forward(ctx, u, delta, A, Bm, Cm, D, z, bias, h0, softplus, chunk):
        Bsz, Dn, L = u.shape
        dt = torch.promote_types(u.dtype, torch.float32)
        inputs = (u, delta, A, Bm, Cm, D, z, bias)
        h = h0.to(dt).transpose(1, 2) if h0 is not None else u.new_zeros(Bsz, A.shape[1], Dn, dtype=dt)
        y = u.new_empty(Bsz, L, Dn)  # returned transposed: (B, D, L) with D contiguous
        ys = u.new_empty(min(chunk, L), Bsz, 1, Dn, dtype=dt)  # one chunk's C_t . h_t
        pair, work = h.new_empty(2, *h.shape), h.new_empty(h.shape).contiguous()  # reused by every step
        entering = []
        for s in range(0, L, chunk):
            e = min(s + chunk, L)
            c = _StepChunk(inputs, s, e, dt, softplus)
            entering.append(h.clone())
            for t in range(e - s):
                h = c.step(t, h, pair[(s + t) % 2], work)
                torch.bmm(c.C[:, t, None, :], h, out=ys[t])
            y[:, s:e] = c.gate(_time_major_rows(ys, e - s).clone())
        ctx.save_for_backward(*inputs, torch.stack(entering))
        ctx.has_h0, ctx.softplus, ctx.chunk = h0 is not None, softplus, chunk
        return y.transpose(1, 2), h.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        with torch.autocast(grad_y.device.type, enabled=False):
            return _SteppedScan._backward(ctx, grad_y, grad_last)

    @staticmethod
    def _backward(ctx, grad_y, grad_last):
        *inputs, entering = ctx.saved_tensors
        u, delta, A, Bm, Cm, D, z, bias = inputs
        Bsz, Dn, L = u.shape
        N, chunk, dt = A.shape[1], ctx.chunk, entering.dtype
        new = lambda *shape, dtype=dt: u.new_empty(*shape, dtype=dtype)  # noqa: E731
        # gradients of the (B, X, L) inputs in each input's memory layout (the ops upstream of the scan run
        # their backward several times slower on gradients whose strides differ from their inputs');
        # rows(g) is the (B, L, X) view that the chunks write
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_B, grad_C = torch.empty_like(Bm), torch.empty_like(Cm)
        grad_z = None if z is None else torch.empty_like(z)
        rows = lambda g: g.transpose(1, 2)  # noqa: E731
        grad_D = None if D is None else D.new_zeros(D.shape, dtype=dt)
        grad_bias = None if bias is None else bias.new_zeros(bias.shape, dtype=dt)
        acc_A = u.new_zeros(Bsz, N, Dn, dtype=dt)  # d/dA, summed over the batch at the end
        states = new(min(chunk, L), Bsz, N, Dn)  # one chunk's states, recomputed
        # per-step results of one chunk: d/dC, d/dB, d/d(delta u), d/d(delta A) summed over n
        gC, gB = new(chunk, Bsz, N, 1), new(chunk, Bsz, N, 1)
        gdu, gdA = new(chunk, Bsz, 1, Dn), new(chunk, Bsz, Dn)
        # carry = dLoss/dh through the next step (times its decay); at first, the last state's gradient
        carry = grad_last.to(dt).transpose(1, 2).contiguous().clone()  # updated in place below
        a = torch.empty_like(carry)
        for i, s in reversed(list(enumerate(range(0, L, chunk)))):
            e = min(s + chunk, L)
            Q = e - s
            c = _StepChunk(inputs, s, e, dt, ctx.softplus)
            h0 = entering[i]
            for t in range(Q):  # the chunk's states again, from the state that entered it
                c.step(t, states[t - 1] if t else h0, states[t], a)
            gy = _rows(grad_y, s, e, dt)  # (B, Q, D)
            if c.z is not None:  # y = ungated * silu(z); ungated = C . h + D u again
                torch.bmm(c.C.transpose(0, 1)[:, :, None, :].flatten(0, 1), states[:Q].flatten(0, 1),
                          out=gdu[:Q].flatten(0, 1))
                ungated = _time_major_rows(gdu, Q).clone()
                if c.D is not None:
                    ungated.addcmul_(c.u, c.D)
                sig = torch.sigmoid(c.z)
                rows(grad_z)[:, s:e] = gy * ungated * sig * (1 + c.z * (1 - sig))
                gy = gy * c.z * sig
            for t in range(Q - 1, -1, -1):
                c.decay(t, a)
                g = carry.addcmul_(c.C[:, t, :, None], gy[:, t, None, :])  # dLoss/dh_t in total
                torch.bmm(states[t], gy[:, t, :, None], out=gC[t])
                torch.bmm(c.B[:, t, None, :], g, out=gdu[t])
                torch.bmm(g, c.du[:, t, :, None], out=gB[t])
                carry = g.mul_(a)
                ga = torch.mul(carry, states[t - 1] if t else h0, out=a)  # d/d(delta_t A), in a's storage
                acc_A.addcmul_(ga, c.delta[:, t, None, :])
                torch.sum(ga.mul_(c.A), 1, out=gdA[t])
            g_du = _time_major_rows(gdu, Q)
            gdelta = _time_major_rows(gdA, Q).addcmul(g_du, c.u)
            g_u = g_du * c.delta
            if c.D is not None:
                g_u.addcmul_(gy, c.D)
                grad_D += (gy * c.u).sum((0, 1))
            if ctx.softplus:  # softplus' slope: sigmoid, exactly 1 above the threshold (as autograd)
                gdelta.mul_(torch.where(c.pre > SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(c.pre)))
            if grad_bias is not None:
                grad_bias += gdelta.sum((0, 1))
            rows(grad_u)[:, s:e], rows(grad_delta)[:, s:e] = g_u, gdelta
            rows(grad_B)[:, s:e], rows(grad_C)[:, s:e] = _time_major_rows(gB, Q), _time_major_rows(gC, Q)
        cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
        grad_h0 = carry.transpose(1, 2).to(entering.dtype) if ctx.has_h0 and ctx.needs_input_grad[8] else None
        return (grad_u, grad_delta, cast(acc_A.sum(0).t(), A), grad_B, grad_C, cast(grad_D, D), grad_z,
                cast(grad_bias, bias), grad_h0, None, None)


# Under torch.compile (trainer.compile) the scan stays eager, a graph break around it: dynamo would unroll its
# per-token loop (measured, d=64 L=64 batch 64: 181 s to compile, then 3.4x slower than eager).
@torch.compiler.disable
def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    fused: bool = True,
) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan in ``selective_scan_fn``'s layout (plus ``initial_state``, which it lacks).

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,);
    initial_state: (B, D, N). Computes in at least float32 (float64 stays float64), ``chunk_size``
    tokens at a time (None: ``STEPPED_CHUNK`` or ``VECTOR_CHUNK``, by method). Returns y (B, D, L) in
    u's dtype, and the last state (B, D, N) if ``return_last_state``. Inputs may be any strided views;
    (B, L, X)-contiguous ones (transposed views) are read without copies. ``fused``: float32 CPU inputs run
    the fused C scan (models/native_scan.py) where it built; False (model.kernel=torch) keeps this file's
    PyTorch scans, the reference it is tested against.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1 or None")
    if fused and native_scan.usable(u, delta, A, B, C, D, z, delta_bias, initial_state):
        y, last = native_scan.NativeScan.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
        return (y, last) if return_last_state else y
    Bsz, state = u.shape[0], u.shape[1] * A.shape[1]
    if Bsz * state < STEP_MIN_STATE:
        y, last = _ChunkedScan.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                     chunk_size or VECTOR_CHUNK)
    else:  # batch tiles whose states stay in cache, one scan each
        rows = max(1, STEP_MAX_TILE // state)
        n = -(-Bsz // rows)
        # split (not slicing): its backward concatenates the tiles' gradients once
        tiles = lambda t: [None] * n if t is None else t.split(rows)  # noqa: E731
        parts = [_SteppedScan.apply(u_, dl_, A, B_, C_, D, z_, delta_bias, h0_, delta_softplus,
                                    chunk_size or STEPPED_CHUNK)
                 for u_, dl_, B_, C_, z_, h0_ in zip(*(tiles(t) for t in (u, delta, B, C, z, initial_state)))]
        y, last = parts[0] if n == 1 else (torch.cat(p, dim=0) for p in zip(*parts))
    return (y, last) if return_last_state else y
