"""bf16, as the GPU runs it: a bf16 model (``model.dtype=bfloat16``, inference) decodes like it forwards
under every cache policy and family, and training's mixed precision (autocast) stays near float32.

Each bf16 result is compared with the float32 model of the same weights (the reference), and bf16 decode
with bf16 forward, as a fraction of the reference logits' largest magnitude: on CPU, seeds 0-2, the worst
family is at 0.067 (bf16 vs fp32, gated_deltanet) and 0.040 (decode vs forward), while decoding without
the context is off by 0.8-1.6 (0.08-0.14 for the tiny Mamba, whose logits barely depend on context).
Runs on ``--device`` (tests/conftest.py); scripts/gpu_check.py runs it on CUDA.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import target_device
from test_model_contracts import decode, policy

from models.caches import CACHE_POLICIES
from models.families import FAMILIES
from models.registry import build_model, config_class

FAMILY_NAMES = [f for f in FAMILIES.names() if not f.startswith("toy")]
KNOBS = dict(vocab_size=64, d_model=32, n_heads=2, n_layers=2, window=5, init_std=0.2)  # each family takes its own
TOL = 0.15  # bf16 vs fp32, of the reference logits' largest magnitude: bf16 keeps ~3 significant digits per op
TOL_DECODE = 0.1  # bf16 decode vs bf16 forward (the same rounding on both sides, mostly)
TOL_GRAD = 0.15  # autocast gradients vs fp32 gradients, of the largest fp32 gradient


def pair(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(float32 reference, bf16 copy with the same weights) on the target device."""
    torch.manual_seed(0)
    cls = config_class(family)
    knobs = {k: v for k, v in KNOBS.items() if k in {f.name for f in dataclasses.fields(cls)}}
    ref = build_model(cls(**knobs)).to(target_device()).eval()
    low = build_model(cls(**knobs, dtype="bfloat16"))
    low.load_state_dict(ref.state_dict())
    return ref, low.to(target_device()).eval()


def assert_near(got: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor, tol: float = TOL) -> None:
    err = (got.float() - ref.float()).abs().max().item()
    assert err <= tol * scale.abs().max().item(), f"max difference {err:.4g} vs scale {scale.abs().max():.4g}"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_bf16_model_forward_and_decode_follow_float32(family):
    ref, low = pair(family)
    ids = torch.randint(0, 64, (2, 20), device=target_device())
    with torch.no_grad():
        expected, forward = ref(ids), low(ids)
        assert forward.dtype == torch.bfloat16
        stepped = decode(low, ids, prompt=8)
    assert_near(forward, expected, expected)
    assert_near(stepped, expected, expected)
    assert_near(stepped, forward, expected, TOL_DECODE)


@pytest.mark.parametrize("name", CACHE_POLICIES.names())
def test_bf16_lossless_cache_policy_decode_follows_float32(name, tmp_path):
    ref, low = pair("transformer")
    ids = torch.randint(0, 64, (2, 24), device=target_device())
    with torch.no_grad():
        expected = ref(ids)
    for prompt in (0, 16):
        got = decode(low, ids, policy(name, tmp_path, lossless=True), prompt=prompt)
        assert torch.isfinite(got).all()
        assert_near(got, expected, expected)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_bf16_autocast_training_step_follows_float32(family):
    """Lightning's bf16-mixed: fp32 weights, autocast forward; loss and gradients near float32's."""
    ref, _ = pair(family)
    ref.train()
    ids = torch.randint(0, 64, (2, 16), device=target_device())
    loss = lambda: F.cross_entropy(ref(ids)[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())  # noqa: E731
    exact = loss()
    g_exact = torch.autograd.grad(exact, list(ref.parameters()))
    with torch.autocast(target_device().type, dtype=torch.bfloat16):
        mixed = loss()
    g_mixed = torch.autograd.grad(mixed, list(ref.parameters()))
    assert abs(mixed.item() - exact.item()) <= 0.05 * exact.item()
    scale = max(g.abs().max().item() for g in g_exact)
    worst = max((a.float() - b).abs().max().item() for a, b in zip(g_mixed, g_exact))
    assert worst <= TOL_GRAD * scale, f"max gradient difference {worst:.4g} vs scale {scale:.4g}"
