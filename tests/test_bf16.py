"""bf16, as the GPU runs it: a bf16 model (``model.dtype=bfloat16``, inference) decodes like it forwards
under every cache policy and family, and training's mixed precision (autocast) stays near float32.

Each bf16 result is compared with the float32 model of the same weights (the reference), within bf16's
rounding (a few % of the logits' scale), so a path that silently drops to a wrong dtype, or a cache that
stores keys in lower precision than it attends in, fails. Runs on ``--device`` (tests/conftest.py);
scripts/gpu_check.py runs it on CUDA.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import target_device
from test_model_contracts import decode, policy

from models.cache import CACHE_POLICIES
from models.registry import build_model, config_class

SIZES = {"transformer": dict(n_heads=4, n_kv_heads=2, n_layers=2),
         "mamba": dict(n_layers=2),
         "hybrid": dict(layers="MA", n_heads=4, n_kv_heads=2)}
TOL = 0.05  # of the reference logits' largest magnitude: bf16 keeps ~3 significant digits per op


def pair(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(float32 reference, bf16 copy with the same weights) on the target device."""
    torch.manual_seed(0)
    cls = config_class(family)
    ref = build_model(cls(vocab_size=64, d_model=32, init_std=0.2, **SIZES[family])).to(target_device()).eval()
    low = build_model(cls(vocab_size=64, d_model=32, init_std=0.2, dtype="bfloat16", **SIZES[family]))
    low.load_state_dict(ref.state_dict())
    return ref, low.to(target_device()).eval()


def assert_near(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.dtype == torch.bfloat16 or got.dtype == torch.float32
    err = (got.float() - ref.float()).abs().max().item()
    assert err <= TOL * ref.abs().max().item(), f"max |bf16 - fp32| = {err:.4g} vs scale {ref.abs().max():.4g}"


@pytest.mark.parametrize("family", list(SIZES))
def test_bf16_model_forward_and_decode_follow_float32(family):
    ref, low = pair(family)
    ids = torch.randint(0, 64, (2, 20), device=target_device())
    with torch.no_grad():
        expected = ref(ids)
        assert_near(low(ids), expected)
        assert_near(decode(low, ids, prompt=8), expected)


@pytest.mark.parametrize("name", CACHE_POLICIES.names())
def test_bf16_lossless_cache_policy_decode_follows_float32(name, tmp_path):
    ref, low = pair("transformer")
    ids = torch.randint(0, 64, (2, 24), device=target_device())
    with torch.no_grad():
        expected = ref(ids)
    for prompt in (0, 16):
        got = decode(low, ids, policy(name, tmp_path, lossless=True), prompt=prompt)
        assert_near(got, expected)
        assert torch.isfinite(got).all()


@pytest.mark.parametrize("family", list(SIZES))
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
    assert abs(mixed.item() - exact.item()) <= TOL * exact.item()
    scale = max(g.abs().max().item() for g in g_exact)
    worst = max((a.float() - b).abs().max().item() for a, b in zip(g_mixed, g_exact))
    assert worst <= 2 * TOL * scale, f"max gradient difference {worst:.4g} vs scale {scale:.4g}"
