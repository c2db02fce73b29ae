"""The fused C selective scan (models/native_scan.py): the recurrence's values and gradients in float32.

Specification: on float32 CPU inputs, values, last state and the gradients of every input equal autograd
through the float64 token-by-token recurrence (tests/test_scan.py's) to float32 precision, for every optional
input, lengths on both sides of the backward's chunk (32 tokens), state sizes with and without the N = 16
fast path, transposed-view inputs and batch rows split across threads; a Mamba model trains the same with
``kernel=auto`` (the fused scan) as with ``kernel=torch`` (the PyTorch scan); float64 inputs keep the
PyTorch scan; without a C compiler the PyTorch scan runs.
"""

from __future__ import annotations

import pytest
import torch

import models.native_scan as native_scan
from models.scan import selective_scan
from tests.fused_paths import assert_matches_float64, assert_trains_the_same
from tests.test_scan import CASES, inputs, recurrence

pytestmark = pytest.mark.skipif(not native_scan.available(), reason="no C compiler: the fused scan did not build")


def run(xs: dict, softplus: bool, weights=None):
    y, last = selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs.get("D"), xs.get("z"),
                             delta_bias=xs.get("delta_bias"), delta_softplus=softplus, return_last_state=True,
                             initial_state=xs.get("h0"))
    w_y, w_h = weights or (torch.randn_like(y), torch.randn_like(last))
    grads = torch.autograd.grad((y * w_y).sum() + (last * w_h).sum(), list(xs.values()))
    return y, last, grads, (w_y, w_h)


@pytest.mark.parametrize("shape", [(2, 3, 4, 23), (2, 20, 16, 1), (3, 20, 16, 32), (2, 17, 16, 70), (1, 5, 7, 65)],
                         ids=lambda s: "b{}d{}n{}L{}".format(*s))
@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_equal_the_float64_recurrence(case, shape):
    optional, softplus = CASES[case]
    b, d, n, length = shape
    ref = inputs(optional, b=b, d=d, n=n, length=length)
    if not softplus:  # raw negative steps grow the state past float32's range (1e70 over 23 tokens): keep them decays
        ref["delta"] = ref["delta"].detach().abs().requires_grad_(True)
    xs = {k: v.detach().float().requires_grad_(True) for k, v in ref.items()}
    y, last, grads, (w_y, w_h) = run(xs, softplus)
    y_ref, last_ref = recurrence(ref["u"], ref["delta"], ref["A"], ref["B"], ref["C"], ref.get("D"), ref.get("z"),
                                 ref.get("delta_bias"), softplus, ref.get("h0"))
    grads_ref = torch.autograd.grad((y_ref * w_y.double()).sum() + (last_ref * w_h.double()).sum(), list(ref.values()))
    assert y.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    assert_matches_float64((y, last), (y_ref, last_ref), grads, grads_ref, list(xs), f"{case}: ")


def test_the_fused_scan_runs_for_float32_and_not_for_float64(monkeypatch):
    calls = []
    real = native_scan.NativeScan.apply
    monkeypatch.setattr(native_scan.NativeScan, "apply", lambda *a: calls.append(1) or real(*a))
    xs = inputs({"D"})
    selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs["D"])
    assert not calls  # float64: the PyTorch scan (exact reference tests)
    selective_scan(*(xs[k].detach().float() for k in ("u", "delta", "A", "B", "C", "D")))
    assert calls
    calls.clear()
    selective_scan(*(xs[k].detach().float() for k in ("u", "delta", "A", "B", "C", "D")), fused=False)
    assert not calls  # model.kernel=torch


def test_transposed_views_and_threads_give_the_same_values_and_gradients():
    """(B, L, X) tensors passed as transposed views (the mixer's layout) and batch rows split over threads
    give exactly what contiguous inputs on one thread give."""
    ref = inputs({"D", "z", "delta_bias", "h0"}, b=5, d=24, n=16, length=40)
    plain = {k: v.detach().float().requires_grad_(True) for k, v in ref.items()}
    views = {k: (v.detach().float().transpose(1, 2).contiguous().transpose(1, 2) if v.dim() == 3 and k != "h0"
                 else v.detach().float().clone()).requires_grad_(True) for k, v in ref.items()}
    threads = torch.get_num_threads()
    y1, last1, g1, w = run(plain, True)
    try:
        torch.set_num_threads(3)
        y2, last2, g2, _ = run(views, True, w)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(y2, y1, rtol=0, atol=0)
    torch.testing.assert_close(last2, last1, rtol=0, atol=0)
    for name, a, b in zip(plain, g2, g1):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_mamba_model_trains_the_same_on_the_fused_and_the_pytorch_scan(monkeypatch):
    """Five AdamW steps of a 2-layer Mamba LM (batch 8, L 48): kernel=auto (fused) equals kernel=torch."""
    from models.registry import build_model, config_class

    assert_trains_the_same(lambda kernel: build_model(config_class("mamba")(
        family="mamba", d_model=32, n_layers=2, vocab_size=64, kernel=kernel)), native_scan.NativeScan, monkeypatch,
        batch=8, length=48)


def test_without_a_compiler_the_pytorch_scan_runs(monkeypatch):
    monkeypatch.setattr(native_scan, "_library", lambda: None)
    xs = {k: v.detach().float() for k, v in inputs({"D"}).items()}
    monkeypatch.setattr(native_scan.NativeScan, "apply", lambda *a: pytest.fail("the fused scan ran"))
    y = selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs["D"])
    assert y.shape == xs["u"].shape


def test_a_failed_build_warns_and_falls_back(monkeypatch, tmp_path):
    from models import native_build

    native_build.load.cache_clear()
    monkeypatch.setenv("LONGCTX_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    try:
        with pytest.warns(UserWarning, match="did not build"):
            assert not native_scan.available()
    finally:
        native_build.load.cache_clear()
