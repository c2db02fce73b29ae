"""The memory-lean selective scan: the recurrence's values and gradients, without (B, L, D, N) tensors.

Specification: for every chunking (one chunk, many, a ragged last chunk, one token per chunk) and
every optional input (D, z, delta_bias, softplus, initial state), values and the gradients of all
inputs equal autograd through a token-by-token recurrence in float64; and one forward + backward
never holds anything near the size of the discretised (B, L, D, N) tensors the naive scan needs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models.native_scan
import models.scan
from models.scan import selective_scan
from pipeline.train.memory import measure_peak

F64 = torch.float64


def recurrence(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=True, h0=None):
    """The SSM one token at a time, from the equations; autograd gives the reference gradients."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if softplus:
        delta = F.softplus(delta)
    h = h0 if h0 is not None else u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[:, :, t, None]  # (b, d, 1)
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]  # (b, d, n)
        y = (h * C[:, None, :, t]).sum(-1)  # (b, d)
        ys.append(y if D is None else y + D * u[:, :, t])
    y = torch.stack(ys, dim=-1)
    return (y if z is None else y * F.silu(z)), h


def inputs(optional: set[str], b=2, d=3, n=4, length=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    xs = dict(u=r(b, d, length), delta=r(b, d, length) - 1, A=-torch.exp(r(d, n)), B=r(b, n, length),
              C=r(b, n, length))
    extra = dict(D=r(d), z=r(b, d, length), delta_bias=r(d), h0=r(b, d, n))
    xs.update({k: v for k, v in extra.items() if k in optional})
    return {k: v.requires_grad_(True) for k, v in xs.items()}


CASES = {
    "all": ({"D", "z", "delta_bias", "h0"}, True),
    "bare": (set(), False),
    "no_state": ({"D", "z", "delta_bias"}, True),
    "state_only": ({"h0"}, True),
}


@pytest.fixture(params=["stepped", "stepped_tiles", "vectorised"])
def method(request, monkeypatch):
    """Both implementations, whatever the size: the state-size threshold that picks one moved to 0 or
    infinity; "stepped_tiles": the stepped scan one batch row per tile (tiles of large batches)."""
    # float32 cases run these scans, not the fused one (tests/test_native_scan.py)
    monkeypatch.setattr(models.native_scan, "available", lambda: False)
    monkeypatch.setattr(models.scan, "STEP_MIN_STATE", float("inf") if request.param == "vectorised" else 0)
    if request.param == "stepped_tiles":
        monkeypatch.setattr(models.scan, "STEP_MAX_TILE", 1)
    return request.param


@pytest.mark.parametrize("chunk", [None, 1, 5, 8, 23, 64], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_equal_the_recurrence(case, chunk, method):
    optional, softplus = CASES[case]
    xs = inputs(optional)
    y, last = selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs.get("D"), xs.get("z"),
                             delta_bias=xs.get("delta_bias"), delta_softplus=softplus, return_last_state=True,
                             initial_state=xs.get("h0"), chunk_size=chunk)
    y_ref, last_ref = recurrence(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs.get("D"), xs.get("z"),
                                 xs.get("delta_bias"), softplus, xs.get("h0"))
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, last_ref, rtol=1e-12, atol=1e-12)
    w_y, w_h = torch.randn_like(y), torch.randn_like(last)
    grads = torch.autograd.grad((y * w_y).sum() + (last * w_h).sum(), list(xs.values()))
    grads_ref = torch.autograd.grad((y_ref * w_y).sum() + (last_ref * w_h).sum(), list(xs.values()))
    for name, g, g_ref in zip(xs, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12, msg=f"{case}: grad of {name}")


def test_float32_inputs_give_float32_outputs_and_gradients(method):
    xs = {k: v.detach().float().requires_grad_(True) for k, v in inputs({"D", "z", "delta_bias"}).items()}
    y = selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs["D"], xs["z"],
                       delta_bias=xs["delta_bias"], delta_softplus=True, chunk_size=4)
    y.sum().backward()
    assert y.dtype == torch.float32 and all(v.grad.dtype == torch.float32 for v in xs.values())


def test_training_memory_grows_like_the_activations_not_like_the_states(method):
    """fwd + bwd: each extra token costs well under one (D, N) state; the naive scan holds three per token
    (exp(delta A), delta B u and h). Ours: a few (D,)-sized values per token plus fixed chunk temporaries."""
    b, d, n = 1, 32, 32

    def peak(length: int) -> int:
        xs = {k: v.detach().float().requires_grad_(True)
              for k, v in inputs({"D", "z", "delta_bias"}, b=b, d=d, n=n, length=length).items()}
        with measure_peak(None, "cpu") as reading:
            y = selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs["D"], xs["z"],
                               delta_bias=xs["delta_bias"], delta_softplus=True, chunk_size=64)
            y.sum().backward()
        return reading.region_peak_bytes

    per_token = (peak(2048) - peak(512)) / (2048 - 512)
    state_bytes = b * d * n * 4
    assert per_token < 0.5 * state_bytes, (per_token, state_bytes)


def test_bad_chunk_size_is_refused():
    xs = inputs(set())
    with pytest.raises(ValueError, match="chunk_size=-2"):
        selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], chunk_size=-2)


def test_transposed_view_inputs_give_the_same_values_and_gradients(method):
    """The Mamba mixer passes (B, X, L) inputs as transposed views of (B, L, X) tensors (no copies):
    values and gradients do not depend on the inputs' memory layout."""
    xs = inputs({"D", "z", "delta_bias", "h0"})
    views = {k: (v.detach().transpose(1, 2).contiguous().transpose(1, 2) if v.dim() == 3 and k != "h0"
                 else v.detach().clone()).requires_grad_(True) for k, v in xs.items()}

    def run(t):
        y, last = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                 delta_bias=t["delta_bias"], delta_softplus=True, return_last_state=True,
                                 initial_state=t["h0"], chunk_size=8)
        (y * torch.linspace(-1, 1, y.numel(), dtype=F64).view_as(y)).sum().backward()
        return y

    torch.testing.assert_close(run(views), run(xs), rtol=1e-12, atol=1e-12)
    for name in xs:
        torch.testing.assert_close(views[name].grad, xs[name].grad, rtol=1e-12, atol=1e-12, msg=name)
