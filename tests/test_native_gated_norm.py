"""The fused C gated RMSNorm (models/native_gated_norm.py): Mamba-2's and Gated DeltaNet's output norms.

Specification: on float32 CPU inputs, ``gate_first`` gives rmsnorm(y silu(z)) w per group (Mamba-2's
norm_before_gate=False) and ``norm_first`` rmsnorm(y) w silu(z) (fla's FusedRMSNormGated), and the gradients of
y, z and w, equal autograd through F.rms_norm and F.silu in float64 (an independent reference) to float32
precision, for one and several groups, row widths 1-64, z a strided slice of a wider projection; threads give the
one-thread result bit for bit; Mamba-2 and Gated DeltaNet train the same with ``kernel=auto`` (which runs the
fused norm) as with ``kernel=torch``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import native_gated_norm as native
from tests.fused_paths import assert_matches_float64, assert_trains_the_same
from tests.test_mixers_linear import tiny

pytestmark = pytest.mark.skipif(not native.usable(), reason="no C compiler: the fused kernel did not build")


def reference(y, z, w, eps, gate_first):
    """(B, T, G, C) inputs, w (G C): torch's rms_norm and silu."""
    G, C = y.shape[2:]
    if gate_first:
        return F.rms_norm(y * F.silu(z), (C,), eps=eps) * w.view(G, C)
    return F.rms_norm(y, (C,), eps=eps) * w.view(G, C) * F.silu(z)


def norm_inputs(B, T, G, C, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    wide = r(B, T, 3 * G * C)  # z a slice of a projection's output, as Mamba-2's in_proj gives it
    return dict(y=r(B, T, G, C) * 3, z=wide[..., G * C : 2 * G * C].unflatten(-1, (G, C)) * 2, w=r(G * C))


@pytest.mark.parametrize("G,C", [(1, 1), (1, 7), (2, 24), (4, 64)], ids=lambda v: str(v))
@pytest.mark.parametrize("gate_first", [True, False], ids=["gate_first", "norm_first"])
def test_values_and_gradients_equal_float64_torch(G, C, gate_first):
    ref = {n: t.requires_grad_(True) for n, t in norm_inputs(3, 5, G, C).items()}
    xs = {n: t.detach().float().requires_grad_(True) for n, t in ref.items()}
    out_ref = reference(ref["y"], ref["z"], ref["w"], 1e-5, gate_first)
    out = native.fused_gated_rms_norm(xs["y"], xs["z"], xs["w"], 1e-5, gate_first)
    go = torch.randn_like(out_ref)
    g_ref = torch.autograd.grad((out_ref * go).sum(), list(ref.values()))
    g = torch.autograd.grad((out * go.float()).sum(), list(xs.values()))
    assert_matches_float64([out], [out_ref], g, g_ref, list(ref))


def test_threads_give_the_one_thread_result_bit_for_bit():
    xs = {n: t.float().requires_grad_(True) for n, t in norm_inputs(8, 9, 2, 16).items()}
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = native.fused_gated_rms_norm(xs["y"], xs["z"], xs["w"], 1e-5, True)
            results.append([out, *torch.autograd.grad((out * out).sum(), list(xs.values()))])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["mamba2", "gated_deltanet"])
def test_each_family_with_a_gated_norm_trains_the_same_on_either_path(family, monkeypatch):
    """Five AdamW steps (batch 4, L 40): kernel=auto (which runs the fused norm) equals kernel=torch."""
    from models.registry import build_model, config_class

    if family == "mamba2":
        build = lambda kernel: tiny("mamba2", kernel=kernel)  # noqa: E731
    else:  # d_model 32: see tests/test_native_short_conv.py
        build = lambda kernel: build_model(config_class(family)(vocab_size=64, n_layers=2, d_model=32,  # noqa: E731
                                                                 n_heads=2, kernel=kernel))
    assert_trains_the_same(build, native.FusedGatedRMSNorm, monkeypatch)
