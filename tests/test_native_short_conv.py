"""The fused C short convolution + SiLU (models/native_short_conv.py): Mamba's, Mamba-2's and Gated DeltaNet's.

Specification: on float32 CPU inputs, y = silu(depthwise causal conv1d) and the gradients of x, the weight, the
bias and the left context equal autograd through F.conv1d in float64 (an independent reference: PyTorch's
convolution over the left context then x) to float32 precision, for widths 2-4, lengths shorter and longer than
the width, with and without bias and left context, x a strided view of a wider projection; threads give the
one-thread result bit for bit; the last W inputs returned for the conv state equal the PyTorch path's; every
family with a short conv (mamba, mamba2, gated_deltanet, gla with convs) trains the same with ``kernel=auto``
as with ``kernel=torch``; the build key covers the headers the sources include.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import native_build
from models import native_short_conv as native
from models.short_conv import causal_conv_silu
from tests.fused_paths import assert_matches_float64, assert_trains_the_same

pytestmark = pytest.mark.skipif(not native.usable(), reason="no C compiler: the fused kernel did not build")


def reference(x, weight, bias, left):
    """F.conv1d over [left or zeros, x] in (B, D, T), then SiLU: (B, T, D)."""
    W = weight.shape[-1]
    before = x.new_zeros(x.shape[0], W - 1, x.shape[2]) if left is None else left
    ctx = torch.cat((before, x), dim=1).transpose(1, 2)
    return F.silu(F.conv1d(ctx, weight, bias, groups=x.shape[2])).transpose(1, 2)


def conv_inputs(B, T, D, W, with_bias, with_left, seed=0):
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(B, T, 3 * D, generator=gen, dtype=torch.float64)  # x a slice of a projection's output
    return dict(x=wide[..., D:2 * D], weight=torch.randn(D, 1, W, generator=gen, dtype=torch.float64) / W,
                bias=torch.randn(D, generator=gen, dtype=torch.float64) if with_bias else None,
                left=torch.randn(B, W - 1, D, generator=gen, dtype=torch.float64) if with_left else None)


@pytest.mark.parametrize("T,W", [(1, 4), (3, 4), (37, 4), (20, 2), (9, 3)], ids=lambda v: str(v))
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_left", [True, False], ids=["left", "zeros"])
def test_values_and_gradients_equal_float64_conv1d(T, W, with_bias, with_left):
    ref = {n: None if t is None else t.requires_grad_(True) for n, t in conv_inputs(3, T, 24, W, with_bias,
                                                                                     with_left).items()}
    xs = {n: None if t is None else t.detach().float().requires_grad_(True) for n, t in ref.items()}
    names = [n for n, t in ref.items() if t is not None]
    y_ref = reference(ref["x"], ref["weight"], ref["bias"], ref["left"])
    y, last = causal_conv_silu(xs["x"], xs["weight"], xs["bias"], xs["left"], fused=True)
    w = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad((y_ref * w).sum(), [ref[n] for n in names])
    g = torch.autograd.grad((y * w.float()).sum(), [xs[n] for n in names])
    assert_matches_float64([y], [y_ref], g, g_ref, names)
    _, last_torch = causal_conv_silu(xs["x"], xs["weight"], xs["bias"], xs["left"], fused=False)
    assert last.shape == (3, W, 24)
    torch.testing.assert_close(last, last_torch, rtol=0, atol=0)


def test_threads_give_the_one_thread_result_bit_for_bit():
    xs = {n: t.float().requires_grad_(True) for n, t in conv_inputs(8, 33, 40, 4, True, True).items()}
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y, _ = causal_conv_silu(xs["x"], xs["weight"], xs["bias"], xs["left"], fused=True)
            results.append([y, *torch.autograd.grad((y * y).sum(), list(xs.values()))])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_fused_path_runs_for_float32_and_fused_only(monkeypatch):
    calls = []
    real = native.FusedConvSilu.apply
    monkeypatch.setattr(native.FusedConvSilu, "apply", lambda *a: calls.append(1) or real(*a))
    xs = conv_inputs(2, 5, 8, 4, True, False)
    causal_conv_silu(xs["x"], xs["weight"], xs["bias"], fused=True)
    assert not calls  # float64
    f32 = {n: None if t is None else t.float() for n, t in xs.items()}
    causal_conv_silu(f32["x"], f32["weight"], f32["bias"], fused=False)
    assert not calls  # kernel=torch
    causal_conv_silu(f32["x"], f32["weight"], f32["bias"], fused=True)
    assert calls


@pytest.mark.parametrize("family", ["mamba", "mamba2", "gated_deltanet", "gla"])
def test_each_family_with_a_short_conv_trains_the_same_on_either_path(family, monkeypatch):
    """Five AdamW steps (batch 4, L 40): kernel=auto (which runs the fused conv) equals kernel=torch."""
    from models.registry import build_model, config_class

    # d_model 32 for Gated DeltaNet as in tests/test_native_delta_rule.py: at 16 one weight's Adam update differs
    # by 1.4e-5 after 5 steps although the first step's gradients agree to 1e-6 (float32 rounding amplified)
    extra = {"mamba": dict(d_model=16), "mamba2": dict(d_model=16, headdim=8, d_state=6),
             "gated_deltanet": dict(d_model=32, n_heads=2), "gla": dict(d_model=16, n_heads=2, use_short_conv=True)}
    assert_trains_the_same(lambda kernel: build_model(config_class(family)(
        vocab_size=64, n_layers=2, kernel=kernel, **extra[family])), native.FusedConvSilu, monkeypatch)


def test_the_build_key_covers_the_included_headers(monkeypatch, tmp_path):
    """A changed header (models/native/exp_fast.h) rebuilds every library: a cached one is never stale."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "k.c").write_text('#include "h.h"\nint f(void) { return VALUE; }\n')
    monkeypatch.setattr(native_build, "SOURCES", str(src))
    monkeypatch.setenv("LONGCTX_NATIVE_CACHE", str(tmp_path / "cache"))
    compiler = native_build.shutil.which("cc") or native_build.shutil.which("gcc")
    paths = []
    for value in (1, 2):
        (src / "h.h").write_text(f"#define VALUE {value}\n")
        paths.append(native_build._build(compiler, "k"))
        assert native_build.ctypes.CDLL(paths[-1]).f() == value
    assert paths[0] != paths[1]
