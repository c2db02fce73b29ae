"""The fused C gated delta rule (models/native_delta_rule.py): fla's naive recurrence in float32.

Specification: on float32 CPU inputs, outputs, the final state and the gradients of q, k, v, g, beta and the
initial state equal autograd through a port of fla's naive recurrence in float64 (tests/test_gated_deltanet.py)
to float32 precision, for lengths on both sides of the backward's 16-token chunk and K <, =, > V; a Gated
DeltaNet trains the same with ``kernel=auto`` (which runs it) as with ``kernel=torch`` (which does not).
"""

from __future__ import annotations

import pytest
import torch

from models import native_delta_rule as native
from models.delta_rule import gated_delta_rule
from tests.fused_paths import assert_matches_float64, assert_trains_the_same
from tests.test_gated_deltanet import fla_naive_recurrent_gated_delta_rule, rule_inputs

pytestmark = pytest.mark.skipif(not native.usable(), reason="no C compiler: the fused kernel did not build")


@pytest.mark.parametrize("T,K,V", [(1, 8, 6), (16, 8, 16), (37, 8, 16), (70, 16, 32), (33, 16, 8)], ids=str)
@pytest.mark.parametrize("with_state", [True, False], ids=["S0", "zeros"])
def test_values_and_gradients_equal_fla_naive_recurrence(T, K, V, with_state):
    ref = rule_inputs(T, K=K, V=V)
    if not with_state:
        del ref["S0"]
    ref = {n: t.requires_grad_(True) for n, t in ref.items()}
    xs = {n: t.detach().float().requires_grad_(True) for n, t in ref.items()}
    o_ref, S_ref = fla_naive_recurrent_gated_delta_rule(ref["q"], ref["k"], ref["v"], ref["beta"], ref["g"], 0.4,
                                                        ref.get("S0"))
    o, S = native.fused_gated_delta_rule(xs["q"], xs["k"], xs["v"], xs["g"], xs["beta"], 0.4, xs.get("S0"))
    w_o, w_s = torch.randn_like(o_ref), torch.randn_like(S_ref)
    g_ref = torch.autograd.grad((o_ref * w_o).sum() + (S_ref * w_s).sum(), list(ref.values()))
    g = torch.autograd.grad((o * w_o.float()).sum() + (S * w_s.float()).sum(), list(xs.values()))
    assert_matches_float64((o, S), (o_ref, S_ref), g, g_ref, list(ref))


def test_the_fused_path_runs_for_float32_and_kernel_auto_only(monkeypatch):
    calls = []
    real = native.FusedGatedDeltaRule.apply
    monkeypatch.setattr(native.FusedGatedDeltaRule, "apply", lambda *a: calls.append(1) or real(*a))
    xs = rule_inputs(9)
    args = [xs[n] for n in ("q", "k", "v", "g", "beta")]
    gated_delta_rule(*args, fused=True)
    assert not calls  # float64
    f32 = [t.float() for t in args]
    gated_delta_rule(*f32, fused=False)
    gated_delta_rule(*f32, fused=True, chunk_size=8)  # an explicit chunk asks for the chunked form
    assert not calls
    gated_delta_rule(*f32, fused=True)
    assert calls


def test_gated_deltanet_trains_the_same_on_the_fused_and_the_pytorch_path(monkeypatch):
    """Five AdamW steps of a 2-layer Gated DeltaNet (batch 4, L 40): kernel=auto equals kernel=torch."""
    from models.registry import build_model, config_class

    assert_trains_the_same(lambda kernel: build_model(config_class("gated_deltanet")(
        vocab_size=64, d_model=32, n_layers=2, n_heads=2, kernel=kernel)), native.FusedGatedDeltaRule, monkeypatch)
