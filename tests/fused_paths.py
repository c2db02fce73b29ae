"""Shared checks of the fused CPU kernels (tests/test_native_*.py): float32 outputs and gradients against a float64
reference, and a model that trains the same on either path."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn


def assert_matches_float64(outputs, references, grads, grad_refs, names, label: str = "") -> None:
    """float32 outputs (rtol 1e-5) and gradients (rtol 1e-4) against float64 references, with an absolute slack
    of 1e-5 x the reference's largest magnitude (float32 sums of up to ~70 terms)."""
    slack = lambda t: 1e-5 * max(1.0, t.abs().max().item())  # noqa: E731
    for out, ref in zip(outputs, references):
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=slack(ref))
    for name, g, g_ref in zip(names, grads, grad_refs):
        torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=slack(g_ref), msg=f"{label}grad of {name}")


def assert_trains_the_same(build: Callable[[str], nn.Module], fused_apply, monkeypatch, batch: int = 4,
                           length: int = 40, vocab: int = 64) -> None:
    """Five AdamW steps of ``build(kernel)``: losses and weights with kernel=auto, which must call ``fused_apply``
    (the kernel's autograd Function), equal kernel=torch, which must not."""
    calls = {"auto": 0, "torch": 0}
    real = fused_apply.apply

    def train(kernel: str):
        def counted(*args):
            calls[kernel] += 1
            return real(*args)

        monkeypatch.setattr(fused_apply, "apply", counted)
        torch.manual_seed(0)
        model = build(kernel)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        x = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))
        losses = []
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(x)[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, model.state_dict()

    (fused, w_fused), (ref, w_ref) = train("auto"), train("torch")
    assert calls["auto"] > 0 and calls["torch"] == 0, calls
    assert fused == pytest.approx(ref, rel=1e-5)
    for name in w_ref:
        torch.testing.assert_close(w_fused[name], w_ref[name], rtol=1e-4, atol=1e-5, msg=name)
