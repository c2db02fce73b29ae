"""Mamba-2's own chunked SSD (models/ssd_chunked.py) and its fused decay mask (models/native_decay_mask.py).

Specification: ``ssd_chunked`` equals the SSD recurrence written from the equations, token by token in float64
(H_t = exp(g_t) H_{t-1} + B_t^T v_t, y_t = C_t H_t, B and C shared by a group's heads), outputs, final state and
the gradients of C, B, v, g and the initial state, for one and several groups, lengths shorter than, equal to,
and not a multiple of the chunk, with and without an initial state; in float64 (the torch mask) exactly, in
float32 (the fused C mask) to float32 precision. The fused mask alone equals its torch form and gives the
one-thread result bit for bit on two threads. A Mamba-2 LM trains the same with ``kernel=auto`` (which runs the
fused mask) as with ``kernel=torch`` (the generic decayed attention, models/linear_attention.py), for one group
and several; past one chunk ``kernel=auto`` runs the fused recurrence (lean memory) and trains the same too.
"""

from __future__ import annotations

import pytest
import torch

from models import native_decay_mask as native
from models import native_linear_attention
from models.ssd_chunked import ssd_chunked
from tests.fused_paths import assert_matches_float64, assert_trains_the_same
from tests.test_mixers_linear import tiny

F64 = torch.float64


def ssd_recurrence(C, Bk, v, g, H0):
    """Token by token: C, Bk (batch, T, G, N), v (batch, T, H, P), g (batch, T, H), H0 (batch, H, N, P)."""
    R = v.shape[2] // C.shape[2]
    Ch, Bh = C.repeat_interleave(R, dim=2), Bk.repeat_interleave(R, dim=2)  # (batch, T, H, N)
    state, ys = H0, []
    for t in range(v.shape[1]):
        state = torch.exp(g[:, t])[..., None, None] * state + Bh[:, t, :, :, None] * v[:, t, :, None, :]
        ys.append(torch.einsum("bhn,bhnp->bhp", Ch[:, t], state))
    return torch.stack(ys, dim=1), state


def ssd_inputs(T, G=2, R=3, N=6, P=4, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    H = G * R
    # decays from ~0 to strong (dt A down to -3 per token): the masks span many orders of magnitude
    g = -torch.rand(batch, T, H, generator=gen, dtype=F64) * torch.linspace(0.01, 3.0, H, dtype=F64)
    return dict(C=r(batch, T, G, N), Bk=r(batch, T, G, N), v=r(batch, T, H, P), g=g, H0=r(batch, H, N, P))


CASES = [(1, 1, 8), (5, 2, 8), (8, 1, 8), (21, 2, 8), (64, 1, None), (70, 2, None)]  # (T, G, chunk)


@pytest.mark.parametrize("T,G,chunk", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("with_state", [True, False], ids=["H0", "zeros"])
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64_torch_mask", "float32_fused_mask"])
def test_values_and_gradients_equal_the_float64_recurrence(T, G, chunk, with_state, dtype):
    if dtype == torch.float32 and not native.usable():
        pytest.skip("no C compiler: the fused mask did not build")
    ref = {n: t.requires_grad_(True) for n, t in ssd_inputs(T, G=G).items()}
    if not with_state:
        ref["H0"] = torch.zeros_like(ref["H0"]).requires_grad_(True)
    xs = {n: t.detach().to(dtype).requires_grad_(True) for n, t in ref.items()}
    y_ref, H_ref = ssd_recurrence(ref["C"], ref["Bk"], ref["v"], ref["g"], ref["H0"])
    y, H_T = ssd_chunked(xs["C"], xs["Bk"], xs["v"], xs["g"], xs["H0"] if with_state else None, chunk,
                         final_state=True)
    w_y, w_H = torch.randn_like(y_ref), torch.randn_like(H_ref)
    names = ["C", "Bk", "v", "g", *(["H0"] if with_state else [])]
    g_ref = torch.autograd.grad((y_ref * w_y).sum() + (H_ref * w_H).sum(), [ref[n] for n in names])
    g = torch.autograd.grad((y * w_y.to(dtype)).sum() + (H_T * w_H.to(dtype)).sum(), [xs[n] for n in names])
    if dtype == F64:
        for out, want in zip([y, H_T, *g], [y_ref, H_ref, *g_ref]):
            torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    else:
        assert_matches_float64([y, H_T], [y_ref, H_ref], g, g_ref, names)


def test_without_a_state_to_return_the_output_is_the_same():
    """Training (one chunk, no cache) skips the state pass: the output must not depend on that."""
    xs = ssd_inputs(40, G=1)
    y_full, _ = ssd_chunked(xs["C"], xs["Bk"], xs["v"], xs["g"], None, 64, final_state=True)
    y_lean, none = ssd_chunked(xs["C"], xs["Bk"], xs["v"], xs["g"], None, 64)
    assert none is None
    torch.testing.assert_close(y_lean, y_full, rtol=0, atol=1e-12)


@pytest.mark.skipif(not native.usable(), reason="no C compiler: the fused mask did not build")
def test_the_fused_product_equals_its_torch_form_and_threads_agree_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    inputs = dict(S=torch.randn(6, 17, 17, generator=gen), b=(-torch.rand(6, 3, 17, generator=gen) * 2).cumsum(-1),
                  v=torch.randn(6, 3, 17, 5, generator=gen))
    w = torch.randn(6, 3, 17, 5, generator=gen)
    ref = {n: t.double().requires_grad_(True) for n, t in inputs.items()}
    y_ref = native.decay_mask_product_reference(*ref.values())
    g_ref = torch.autograd.grad((y_ref * w.double()).sum(), list(ref.values()))
    W = native._mask(inputs["S"], inputs["b"])
    assert (W.triu(1) == 0).all()  # nothing above the diagonal
    torch.testing.assert_close(W.double(), native.decay_mask_reference(ref["S"], ref["b"]).detach(),
                               rtol=1e-5, atol=1e-6)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xs = [t.clone().requires_grad_(True) for t in inputs.values()]
            y = native.fused_decay_mask_product(*xs)
            results.append([y, *torch.autograd.grad((y * w).sum(), xs)])
    finally:
        torch.set_num_threads(before)
    assert_matches_float64(results[0][:1], [y_ref], results[0][1:], g_ref, list(inputs))
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, rtol=0, atol=0)


@pytest.mark.skipif(not native.usable(), reason="no C compiler: the fused mask did not build")
@pytest.mark.parametrize("ngroups", [1, 2])
def test_mamba2_trains_the_same_on_its_chunked_form_and_the_generic_path(ngroups, monkeypatch):
    """Five AdamW steps (batch 4, L 40): kernel=auto (the SSD form, the fused mask) equals kernel=torch."""
    assert_trains_the_same(lambda kernel: tiny("mamba2", kernel=kernel, ngroups=ngroups), native.FusedDecayMaskProduct,
                           monkeypatch)


@pytest.mark.skipif(not native_linear_attention.usable(), reason="no C compiler: the fused recurrence did not build")
def test_past_one_chunk_mamba2_trains_on_the_fused_recurrence(monkeypatch):
    """At 70 tokens (chunk 64) kernel=auto runs the lean-memory fused recurrence, and equals kernel=torch."""
    assert_trains_the_same(lambda kernel: tiny("mamba2", kernel=kernel, ngroups=1),
                           native_linear_attention.FusedDecayedAttention, monkeypatch, length=70)
