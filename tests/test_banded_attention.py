"""Windowed attention in blocks (models/patterns/banded.py): Mistral's sliding window and StreamingLLM's sink window.

Specification: ``banded_sdpa`` equals softmax attention under the token-exact mask (j <= i and (i - j < W or
j < sink)), written out naively in float64, values and gradients, for lengths that are and are not multiples of
the window, shorter than it, W = 1, sinks inside and beyond the length, grouped-query heads; the sliding-window
LM and the ``sink_window`` pattern take it from a few windows on (and the masked call below, or with ALiBi) with
the same outputs and gradients as the masked call, at a fraction of its memory.
"""

from __future__ import annotations

import pytest
import torch

from models.patterns import PATTERNS, AttentionConfig
from models.patterns import banded as banded_module
from models.patterns.banded import banded_sdpa, worth_blocking
from pipeline.train.memory import measure_peak


def naive(q, k, v, window, sink):
    T = q.shape[2]
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & ((i - j < window) | (j < sink))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v


@pytest.mark.parametrize("T,W,sink,H,Hkv", [(10, 3, 0, 2, 2), (37, 8, 0, 4, 2), (37, 8, 4, 4, 4), (64, 16, 4, 2, 1),
                                            (5, 8, 2, 2, 2), (40, 1, 0, 2, 2), (40, 1, 3, 2, 2), (33, 32, 40, 2, 2)],
                         ids=str)
def test_equals_the_masked_softmax_in_float64(T, W, sink, H, Hkv):
    gen = torch.Generator().manual_seed(T + W + sink)
    ref = [torch.randn(2, h, T, 8, generator=gen, dtype=torch.float64, requires_grad=True) for h in (H, Hkv, Hkv)]
    ours = [t.detach().clone().requires_grad_(True) for t in ref]
    out, expected = banded_sdpa(*ours, W, sink), naive(*ref, W, sink)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad((out * w).sum(), ours), torch.autograd.grad((expected * w).sum(), ref)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_blocks_from_a_few_windows_on():
    assert not worth_blocking(255, 32) and worth_blocking(256, 32) and not worth_blocking(256, 32, sink=4)
    assert not worth_blocking(1023, 256) and worth_blocking(1024, 256)


def sliding_lm(window: int = 8):
    from models.registry import build_model, config_class

    torch.manual_seed(0)
    return build_model(config_class("sliding_window")(vocab_size=64, d_model=32, n_heads=4, n_layers=2,
                                                      window=window))


@pytest.mark.parametrize("blocked", [True, False], ids=["blocked", "masked"])
def test_the_sliding_window_lm_is_the_same_either_way(blocked, monkeypatch):
    """At T = 300, W = 8 the LM runs the blocks; forced onto the (T, T) mask it gives the same logits and grads."""
    model = sliding_lm()
    ids = torch.randint(0, 64, (2, 300), generator=torch.Generator().manual_seed(0))
    calls = []
    real = banded_module.banded_sdpa
    monkeypatch.setattr(banded_module, "banded_sdpa", lambda *a: calls.append(1) or real(*a))
    if not blocked:
        monkeypatch.setattr(banded_module, "worth_blocking", lambda *a: False)
    logits = model(ids)
    grads = torch.autograd.grad(logits.square().mean(), list(model.parameters()))
    assert bool(calls) == blocked
    monkeypatch.setattr(banded_module, "worth_blocking", lambda *a: False)
    ref = model(ids)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, torch.autograd.grad(ref.square().mean(), list(model.parameters()))):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_the_sink_window_pattern_takes_the_blocks_with_the_same_result(monkeypatch):
    cfg = AttentionConfig(train="sink_window", sink=4, window=16)
    gen = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 4, 300, 8, generator=gen), torch.randn(1, 2, 300, 8, generator=gen), torch.randn(
        1, 2, 300, 8, generator=gen)
    calls = []
    real = banded_module.banded_sdpa
    monkeypatch.setattr(banded_module, "banded_sdpa", lambda *a: calls.append(1) or real(*a))
    out = PATTERNS.get("sink_window")(q, k, v, cfg)
    assert calls
    monkeypatch.setattr(banded_module, "worth_blocking", lambda *a: False)
    torch.testing.assert_close(out, PATTERNS.get("sink_window")(q, k, v, cfg), rtol=1e-5, atol=1e-6)


def test_memory_grows_with_the_window_not_the_square_of_the_length(monkeypatch):
    """One forward at T = 2048, W = 32: the blocks' peak is a fraction of the masked call's."""
    model = sliding_lm(window=32)
    ids = torch.randint(0, 64, (1, 2048))
    peaks = []
    for blocked in (True, False):
        if not blocked:
            monkeypatch.setattr(banded_module, "worth_blocking", lambda *a: False)
        with torch.no_grad(), measure_peak() as reading:
            model(ids)
        peaks.append(reading.region_peak_bytes)
    assert peaks[0] < peaks[1] / 4, peaks
