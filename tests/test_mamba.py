"""Mamba and the Mamba/attention hybrid: the scan is the recurrence, decode is the forward.

Specification, one test each: the chunked scan equals a token-by-token recurrence (values and
gradients); a full forward equals step-by-step decode and prefill-then-step through the cache; a
token never changes logits before it; the state's bytes do not grow with length; kernel=cuda
fails loudly where the kernels cannot run; the CUDA path equals the torch path (gpu); our model
equals transformers' MambaForCausalLM with the same weights; the hybrid decodes like it forwards.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import target_device

import models.scan
from models.caches.full import FullKVCache
from models.families.hybrid import Hybrid, HybridConfig
from models.families.mamba import MambaConfig, MambaLM
from models.mixers.mamba import KERNELS_AVAILABLE, MambaLayerCache
from models.registry import build_model, config_class
from models.scan import selective_scan

F64 = torch.float64


def recurrence(u, delta, A, B, C, D, z, delta_bias, h0):
    """The SSM one token at a time, written from the equations (not from models/scan.py)."""
    delta = F.softplus(delta + delta_bias[:, None])  # (b, d, l)
    h = h0.clone()  # (b, d, n)
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[:, :, t, None]  # (b, d, 1)
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    y = torch.stack(ys, dim=-1) * F.silu(z)  # (b, d, l)
    return y, h


def scan_inputs(b=2, d=5, n=4, length=37, dtype=F64, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    A = -torch.exp(r(d, n))  # some channels decay fast (|A| up to ~e^2)
    xs = dict(u=r(b, d, length), delta=r(b, d, length), A=A, B=r(b, n, length), C=r(b, n, length),
              D=r(d), z=r(b, d, length), delta_bias=r(d), h0=r(b, d, n))
    return {k: v.requires_grad_(requires_grad) for k, v in xs.items()}


def ours(xs, chunk_size=None):
    return selective_scan(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], xs["D"], xs["z"],
                          delta_bias=xs["delta_bias"], delta_softplus=True, return_last_state=True,
                          initial_state=xs["h0"], chunk_size=chunk_size)


@pytest.mark.parametrize("length,chunk_size", [(1, None), (37, None), (37, 5), (64, None), (64, 64)],
                         ids=lambda v: str(v))
def test_chunked_scan_equals_token_by_token_recurrence(length, chunk_size):
    xs = scan_inputs(length=length)
    y, last = ours(xs, chunk_size)
    y_ref, last_ref = recurrence(**xs)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(last, last_ref, rtol=0, atol=1e-6)


def test_scan_gradients_equal_recurrence_gradients():
    """The hand-written backward (a reverse scan) against autograd through the loop."""
    xs = scan_inputs(length=29, requires_grad=True)
    y, last = ours(xs, chunk_size=4)
    w1, w2 = torch.randn_like(y), torch.randn_like(last)
    grads = torch.autograd.grad((y * w1).sum() + (last * w2).sum(), list(xs.values()))
    y_ref, last_ref = recurrence(**xs)
    grads_ref = torch.autograd.grad((y_ref * w1).sum() + (last_ref * w2).sum(), list(xs.values()))
    for name, g, g_ref in zip(xs, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-6, msg=f"grad of {name}")


def test_scan_stays_finite_with_huge_decays():
    """delta * |A| in the hundreds: exact zeros of exp(delta A), never inf/nan."""
    xs = scan_inputs(length=40)
    xs["delta_bias"] = torch.full_like(xs["delta_bias"], 200.0)
    y, last = ours(xs, chunk_size=8)
    y_ref, _ = recurrence(**xs)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-6)


def tiny(family: str, **kw):
    if family == "mamba":
        return MambaLM(MambaConfig(d_model=32, n_layers=2, **kw))
    return Hybrid(HybridConfig(d_model=32, layers="MAMA", n_heads=4, n_kv_heads=2, **kw))


@pytest.mark.parametrize("scan", ["auto", "stepped"])
@pytest.mark.parametrize("family", ["mamba", "hybrid"])
def test_forward_equals_step_decode_and_prefill_then_step(family, scan, monkeypatch):
    if scan == "stepped":  # the scan method large batches use, whatever the size here (models/scan.py)
        monkeypatch.setattr(models.scan, "STEP_MIN_STATE", 0)
    model = tiny(family).to(target_device(), F64).eval()
    ids = torch.randint(0, 256, (2, 21), device=target_device())
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2)
        stepped = torch.cat([model(ids[:, t:t + 1], cache) for t in range(21)], dim=1)
        assert cache.seen == 21
        cache = model.new_cache(2)
        # prefill, a second multi-token chunk continuing the state, then single steps
        parts = [model(ids[:, :6], cache), model(ids[:, 6:13], cache)]
        parts += [model(ids[:, t:t + 1], cache) for t in range(13, 21)]
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", ["mamba", "hybrid"])
def test_changing_a_token_never_changes_earlier_logits(family):
    model = tiny(family, chunk_size=4).to(target_device()).eval()
    ids = torch.randint(0, 256, (1, 24), device=target_device())
    t = 13
    other = ids.clone()
    other[0, t] = (ids[0, t] + 1) % 256
    with torch.no_grad():
        a, b = model(ids), model(other)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=0)
    assert not torch.allclose(a[:, t:], b[:, t:])


def test_state_bytes_are_constant_in_length():
    model = tiny("mamba").eval()
    cfg = model.cfg
    cache = model.new_cache(3)
    expected = cfg.n_layers * 3 * cfg.d_inner * (cfg.d_conv + cfg.d_state) * 4
    sizes = []
    with torch.no_grad():
        model(torch.randint(0, 256, (3, 1)), cache)
        sizes.append(cache.nbytes())
        model(torch.randint(0, 256, (3, 50)), cache)
        sizes.append(cache.nbytes())
        for _ in range(5):
            model(torch.randint(0, 256, (3, 1)), cache)
        sizes.append(cache.nbytes())
    assert sizes == [expected] * 3
    assert all(isinstance(layer, MambaLayerCache) for layer in cache.layers)


def test_cloned_cache_decodes_independently():
    """Prefix caching: advancing a clone leaves the original state untouched."""
    model = tiny("mamba").to(F64).eval()
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        cache = model.new_cache(1)
        model(ids[:, :8], cache)
        fork = cache.clone()
        model(ids[:, 8:11], fork)
        torch.testing.assert_close(model(ids[:, 8:9], cache), model(ids[:, :9])[:, -1:], rtol=0, atol=1e-10)


def test_init_follows_the_reference():
    cfg = MambaConfig(d_model=64, n_layers=4)
    mixer = MambaLM(cfg).layers[0].mixer
    assert cfg.dt_rank == 4 and mixer.d_inner == 128
    torch.testing.assert_close(mixer.A_log, torch.log(torch.arange(1.0, 17.0)).repeat(128, 1))
    assert torch.equal(mixer.D, torch.ones(128))
    assert mixer.A_log.dtype == mixer.D.dtype == torch.float32
    assert mixer.A_log._no_weight_decay and mixer.D._no_weight_decay
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= cfg.dt_init_floor * 0.999 and dt.max() <= cfg.dt_max * 1.001
    assert mixer.dt_proj.weight.abs().max() <= cfg.dt_rank**-0.5
    assert mixer.in_proj.bias is None and mixer.conv1d.bias is not None


def test_kernel_cuda_without_kernels_raises():
    if KERNELS_AVAILABLE:
        pytest.skip("the CUDA kernels import here")
    with pytest.raises(RuntimeError, match="kernel='cuda'"):
        tiny("mamba", kernel="cuda")
    with pytest.raises(RuntimeError, match="kernel='cuda'"):
        tiny("hybrid", kernel="cuda")


@pytest.mark.parametrize("bad,field", [
    (dict(kernel="triton"), "model.kernel"),
    (dict(d_state=0), "model.d_state"),
    (dict(dt_min=0.2, dt_max=0.1), "model.dt_min"),
    (dict(family="transformer"), "model.family"),
])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        MambaConfig(**bad)


def test_hybrid_config_and_caches():
    with pytest.raises(ValueError, match="model.layers"):
        HybridConfig(layers="MAXA")
    with pytest.raises(ValueError, match="n_heads"):
        HybridConfig(d_model=30, n_heads=4)
    model = build_model(config_class("hybrid")(layers="MAAM", d_model=32))
    kinds = [type(layer).__name__ for layer in model.new_cache(2).layers]
    assert kinds == ["MambaLayerCache", "FullKVCache", "FullKVCache", "MambaLayerCache"]
    assert isinstance(model.new_cache(1, "full").layers[1], FullKVCache)
    assert isinstance(build_model(config_class("mamba")(d_model=32)), MambaLM)


def test_logits_equal_transformers_mamba():
    transformers = pytest.importorskip("transformers")
    model = tiny("mamba").eval()
    cfg = model.cfg
    hf_cfg = transformers.MambaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, state_size=cfg.d_state,
        num_hidden_layers=cfg.n_layers, layer_norm_epsilon=cfg.norm_eps, expand=cfg.expand,
        conv_kernel=cfg.d_conv, time_step_rank=cfg.dt_rank, use_bias=cfg.bias, use_conv_bias=cfg.conv_bias,
        tie_word_embeddings=cfg.tie_embeddings, residual_in_fp32=True, use_cache=False, use_mambapy=False,
    )
    hf = transformers.MambaForCausalLM(hf_cfg).eval()
    hf.load_state_dict(hf_state_dict(model), strict=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=0, atol=1e-5)


def hf_state_dict(model: MambaLM) -> dict[str, torch.Tensor]:
    """Our names -> transformers' (the mixer's parameter names are the reference's in both)."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "norm.weight":
            name = "norm_f.weight"
        name = name.replace("embed_tokens.", "embeddings.")
        out[name if name == "lm_head.weight" else f"backbone.{name}"] = tensor
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["mamba", "hybrid"])
def test_cuda_kernels_equal_torch_path(family):
    if not KERNELS_AVAILABLE:
        pytest.skip("mamba_ssm / causal_conv1d not installed")
    ref = tiny(family, kernel="torch").cuda().eval()
    fast = tiny(family, kernel="cuda").cuda().eval()
    fast.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 256, (2, 300), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(fast(ids), ref(ids), rtol=1e-4, atol=1e-4)
        c_ref, c_fast = ref.new_cache(2), fast.new_cache(2)
        torch.testing.assert_close(fast(ids, c_fast), ref(ids, c_ref), rtol=1e-4, atol=1e-4)
        step = ids[:, :1]
        torch.testing.assert_close(fast(step, c_fast), ref(step, c_ref), rtol=1e-4, atol=1e-4)
    loss = lambda m: m(ids).float().logsumexp(-1).mean()  # noqa: E731
    g_ref = torch.autograd.grad(loss(ref), list(ref.parameters()))
    g_fast = torch.autograd.grad(loss(fast), list(fast.parameters()))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_dt_rank_default_is_ceil_d_model_over_16():
    assert MambaConfig(d_model=40).dt_rank == math.ceil(40 / 16)
    assert HybridConfig(d_model=40, n_heads=4).dt_rank == 3


def test_blocked_no_grad_prefill_equals_one_shot_prefill():
    from models.families.mamba import MambaConfig, MambaLM

    torch.manual_seed(0)
    model = MambaLM(MambaConfig(vocab_size=64, d_model=32, n_layers=2, prefill_block=7)).eval()
    x = torch.randint(0, 64, (2, 30))
    with torch.no_grad():
        blocked_cache = model.new_cache(2)
        blocked = model(x, blocked_cache)
        reference = model(x)  # no cache: one parallel pass
        nxt = model(x[:, :1], blocked_cache)
        one = model.new_cache(2)
        model.cfg.prefill_block = 10_000
        model(x, one)
        assert torch.allclose(nxt, model(x[:, :1], one), atol=1e-5)
    assert torch.allclose(blocked, reference, atol=1e-5)
