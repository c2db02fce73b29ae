"""The fused C decayed linear attention (models/native_linear_attention.py): the recurrence in float32.

Specification: on float32 CPU inputs, outputs, the final state and the gradients of q, k, v, g and the initial
state equal autograd through the float64 recurrence written from the equations (tests/test_mixers_linear.py's)
to float32 precision, for per-key-channel and per-head decays, both state layouts (K > V stores it V x K),
lengths on both sides of the backward's 16-token chunk, broadcast (stride-0) and transposed inputs; every
family on it (gla, retention, hybrid) trains the same with ``kernel=auto`` as with ``kernel=torch`` (Mamba-2 runs its
own chunked form: tests/test_ssd_chunked.py).
"""

from __future__ import annotations

import pytest
import torch

from models import native_linear_attention as native
from models.recurrent import torch_linear_attention
from tests.fused_paths import assert_matches_float64, assert_trains_the_same
from tests.test_mixers_linear import core_inputs, recurrence, tiny, tiny_hybrid

pytestmark = pytest.mark.skipif(not native.usable(), reason="no C compiler: the fused kernel did not build")

F64 = torch.float64


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "scalar"])
@pytest.mark.parametrize("T,K,V", [(1, 4, 5), (16, 4, 5), (37, 8, 16), (37, 64, 16), (70, 24, 8)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("with_state", [True, False], ids=["S0", "zeros"])
def test_values_and_gradients_equal_the_float64_recurrence(T, K, V, per_channel, with_state):
    ref = core_inputs(T, per_channel, K=K, V=V, requires_grad=True)
    if not with_state:
        ref["S0"] = torch.zeros_like(ref["S0"]).requires_grad_(True)
    xs = {n: t.detach().float().requires_grad_(True) for n, t in ref.items()}
    o_ref, S_ref = recurrence(ref["q"], ref["k"], ref["v"], ref["g"], 0.7, ref["S0"])
    o, S = native.FusedDecayedAttention.apply(xs["q"], xs["k"], xs["v"], xs["g"], 0.7,
                                              xs["S0"] if with_state else None)
    w_o, w_s = torch.randn_like(o_ref), torch.randn_like(S_ref)
    names = [n for n in ref if with_state or n != "S0"]
    g_ref = torch.autograd.grad((o_ref * w_o).sum() + (S_ref * w_s).sum(), [ref[n] for n in names])
    g = torch.autograd.grad((o * w_o.float()).sum() + (S * w_s.float()).sum(), [xs[n] for n in names])
    assert_matches_float64((o, S), (o_ref, S_ref), g, g_ref, names)


def test_broadcast_and_transposed_inputs_equal_contiguous_ones():
    """Mamba-2's B and C shared by every head (stride 0 over heads) and (B, T, H, .) layouts transposed to
    (B, H, T, .) give what contiguous copies give, values and gradients."""
    B, H, T, K, V = 2, 4, 21, 8, 6
    gen = torch.Generator().manual_seed(0)
    shared = torch.randn(B, T, 1, K, generator=gen).requires_grad_(True)
    v = torch.randn(B, T, H, V, generator=gen).requires_grad_(True)
    g = (-torch.rand(B, T, H, generator=gen)).requires_grad_(True)

    def run(copy: bool):
        qk = shared.expand(B, T, H, K).transpose(1, 2)
        vv, gg = v.transpose(1, 2), g.transpose(1, 2)
        if copy:
            qk, vv, gg = qk.contiguous(), vv.contiguous(), gg.contiguous()
        o, S = native.FusedDecayedAttention.apply(qk, qk, vv, gg, 0.5, None)
        return [o, S, *torch.autograd.grad((o * o).sum() + S.sum(), [shared, v, g])]

    for a, b in zip(run(False), run(True)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_the_fused_path_runs_for_float32_and_kernel_auto_only(monkeypatch):
    calls = []
    real = native.FusedDecayedAttention.apply
    monkeypatch.setattr(native.FusedDecayedAttention, "apply", lambda *a: calls.append(1) or real(*a))
    xs = core_inputs(9, False)
    torch_linear_attention(xs["q"], xs["k"], xs["v"], xs["g"], 1.0, None, False, None, fused=True)
    assert not calls  # float64
    f32 = {n: t.float() for n, t in xs.items()}
    torch_linear_attention(f32["q"], f32["k"], f32["v"], f32["g"], 1.0, None, False, None, fused=False)
    assert not calls  # kernel=torch
    torch_linear_attention(f32["q"], f32["k"], f32["v"], f32["g"], 1.0, None, False, None, fused=True)
    assert calls


@pytest.mark.parametrize("family", ["gla", "retention", "hybrid"])
def test_each_family_trains_the_same_on_the_fused_and_the_pytorch_path(family, monkeypatch):
    """Five AdamW steps (batch 4, L 40): kernel=auto (which runs the fused kernel) equals kernel=torch."""

    def build(kernel: str):
        return tiny_hybrid(kernel=kernel) if family == "hybrid" else tiny(family, kernel=kernel)

    assert_trains_the_same(build, native.FusedDecayedAttention, monkeypatch)
