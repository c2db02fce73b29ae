"""Gated DeltaNet: the chunked WY form is the recurrence, the layer is fla's, decode is the forward.

Specification, one test each (float64 unless said): the chunked form equals the token loop and an
independent reference (a port of fla's ``naive_recurrent_gated_delta_rule``) in values and gradients, for T
not a multiple of the chunk, T=1 and several heads; the layer equals a from-the-equations reference of fla's
GatedDeltaNet layer (short convs, L2 norm, Mamba-2 decay, sigmoid beta, gated RMSNorm) with the same weights;
the forward equals prefill + token-by-token decode; the state's bytes do not grow with length; kernel=cuda
fails loudly without fla; a bad knob names its field; (gpu) fla's kernel equals the torch path.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import models.delta_rule as delta_rule
from models.delta_rule import chunk_gated_delta_rule, gated_delta_rule, recurrent_gated_delta_rule
from models.families.gated_deltanet import GatedDeltaNetConfig, GatedDeltaNetLM
from models.families.hybrid import Hybrid, HybridConfig
from models.mixers.gated_deltanet import FLA_AVAILABLE, GatedDeltaNet

F64 = torch.float64


def fla_naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=None, initial_state=None):
    """TEST REFERENCE: a port of fla-org/flash-linear-attention ``fla/ops/gated_delta_rule/naive.py::
    naive_recurrent_gated_delta_rule`` (same loop, same argument order: beta before g), keeping the input
    dtype instead of casting to float32 so float64 comparisons stay exact. Layout (B, T, H, K|V)."""
    q, k, v, beta, g = (x.transpose(1, 2) for x in (q, k, v, beta, g))
    B, H, T, K, V = *k.shape, v.shape[-1]
    o = torch.zeros(B, H, T, V, dtype=v.dtype)
    h = torch.zeros(B, H, K, V, dtype=v.dtype) if initial_state is None else initial_state
    q = q * (K**-0.5 if scale is None else scale)
    for i in range(T):
        b_q, b_k, b_v = q[:, :, i], k[:, :, i], v[:, :, i].clone()
        h = h.clone() * g[:, :, i].exp()[..., None, None]
        b_v = b_v - (h.clone() * b_k[..., None]).sum(-2)
        b_v = b_v * beta[:, :, i][..., None]
        h = h.clone() + b_k.unsqueeze(-1) * b_v.unsqueeze(-2)
        o[:, :, i] = torch.einsum("bhd,bhdm->bhm", b_q, h)
    return o.transpose(1, 2), h


def rule_inputs(T, H=3, K=8, V=6, B=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    return dict(q=r(B, T, H, K), k=F.normalize(r(B, T, H, K), dim=-1), v=r(B, T, H, V),
                g=-2 * torch.rand(B, T, H, generator=gen, dtype=F64),  # strong and weak decays
                beta=torch.rand(B, T, H, generator=gen, dtype=F64), S0=r(B, H, K, V))


def grads(fn, xs):
    xs = {n: t.clone().requires_grad_() for n, t in xs.items()}
    o, S = fn(xs)
    w = torch.linspace(-1, 1, o.numel(), dtype=F64).view_as(o)  # a loss that weighs every output differently
    (o * w).sum().add_((S**2).sum()).backward()
    return o.detach(), S.detach(), {n: t.grad for n, t in xs.items()}


@pytest.mark.parametrize("T,chunk", [(1, 32), (7, 3), (37, 8), (64, 32), (70, 32), (5, 64)], ids=str)
def test_chunked_form_equals_the_recurrence_and_fla_reference_values_and_gradients(T, chunk):
    xs = rule_inputs(T)
    runs = {
        "chunked": lambda a: chunk_gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"],
                                                    initial_state=a["S0"], chunk_size=chunk),
        "loop": lambda a: recurrent_gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"], initial_state=a["S0"]),
        "fla": lambda a: fla_naive_recurrent_gated_delta_rule(a["q"], a["k"], a["v"], a["beta"], a["g"],
                                                              initial_state=a["S0"]),
    }
    o_ref, S_ref, g_ref = grads(runs.pop("fla"), xs)
    for name, fn in runs.items():
        o, S, g = grads(fn, xs)
        torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-12, msg=f"{name} output")
        torch.testing.assert_close(S, S_ref, rtol=0, atol=1e-12, msg=f"{name} state")
        for n in g_ref:
            torch.testing.assert_close(g[n], g_ref[n], rtol=0, atol=1e-11, msg=f"{name} d/d{n}")


def test_chunked_form_stays_finite_with_vanishing_decays():
    xs = rule_inputs(40)
    g = torch.full_like(xs["g"], -200.0)  # exp(g) underflows: ratios of cumulative decays must never be formed
    o, S = chunk_gated_delta_rule(xs["q"], xs["k"], xs["v"], g, xs["beta"], chunk_size=16)
    o_ref, _ = fla_naive_recurrent_gated_delta_rule(xs["q"], xs["k"], xs["v"], xs["beta"], g)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-12)


def tiny(**kw) -> GatedDeltaNetLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, init_std=0.2, kernel="torch") | kw
    return GatedDeltaNetLM(GatedDeltaNetConfig(**cfg)).to(F64).eval()


def reference_layer(layer: GatedDeltaNet, x: torch.Tensor) -> torch.Tensor:
    """fla's GatedDeltaNet layer forward, written from its equations with ``layer``'s weights."""
    B, T, _ = x.shape
    H, K, V = layer.n_heads, layer.head_k_dim, layer.head_v_dim

    def conv(name):  # depthwise causal conv (left zero padding) then SiLU
        w = getattr(layer, f"{name}_conv1d").weight  # (D, 1, W)
        h = getattr(layer, f"{name}_proj")(x).transpose(1, 2)
        return F.silu(F.conv1d(F.pad(h, (w.shape[-1] - 1, 0)), w, groups=h.shape[1])).transpose(1, 2)

    q, k, v = conv("q").view(B, T, H, K), conv("k").view(B, T, H, K), conv("v").view(B, T, H, V)
    q, k = (t / torch.sqrt((t * t).sum(-1, keepdim=True) + 1e-6) for t in (q, k))
    g = -layer.A_log.exp() * F.softplus(layer.a_proj(x) + layer.dt_bias)
    beta = layer.b_proj(x).sigmoid()
    o, _ = fla_naive_recurrent_gated_delta_rule(q, k, v, beta, g)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + layer.o_norm.eps) * layer.o_norm.weight
    o = o * F.silu(layer.g_proj(x).view(B, T, H, V))
    return layer.o_proj(o.reshape(B, T, H * V))


@pytest.mark.parametrize("T", [1, 13, 40])
def test_layer_equals_fla_layer_reference(T):
    layer = tiny(chunk_size=8).layers[0].token_mixer
    x = torch.randn(2, T, 32, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference_layer(layer, x), rtol=0, atol=1e-12)


def test_layer_gradients_equal_between_chunked_and_token_loop(monkeypatch):
    model = tiny(chunk_size=None)
    ids = torch.randint(0, 64, (2, 21))

    def param_grads():
        model.zero_grad()
        model(ids).logsumexp(-1).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    chunked = param_grads()  # T=21 > RECURRENT_MAX_T: the WY form
    monkeypatch.setattr(delta_rule, "RECURRENT_MAX_T", 10**6)
    loop = param_grads()
    for name in chunked:
        torch.testing.assert_close(chunked[name], loop[name], rtol=0, atol=1e-11, msg=name)


@pytest.mark.parametrize("prompt", [0, 1, 9, 33])
def test_forward_equals_prefill_then_token_by_token_decode(prompt):
    model = tiny(chunk_size=4)  # T=45 not a multiple of the chunk; the prefill resumes mid-chunk
    ids = torch.randint(0, 64, (3, 45))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(3)
        parts = [model(ids[:, :prompt], cache)] if prompt else []
        parts += [model(ids[:, t : t + 1], cache) for t in range(prompt, 45)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-10)


def test_state_bytes_are_constant_and_exact():
    model = tiny()
    cfg = model.cfg
    per_layer = 2 * cfg.n_heads * cfg.head_dim * cfg.head_v_dim * 8  # the K x V state per head, float64
    per_layer += 2 * (2 * cfg.n_heads * cfg.head_dim + cfg.n_heads * cfg.head_v_dim) * (cfg.d_conv - 1) * 8  # convs
    sizes = []
    for T in (5, 50):
        cache = model.new_cache(2)
        with torch.no_grad():
            model(torch.randint(0, 64, (2, T)), cache)
        sizes.append(cache.nbytes())
    assert sizes == [cfg.n_layers * per_layer] * 2


def test_without_short_conv_or_gate_the_layer_still_decodes_like_it_forwards():
    model = tiny(use_short_conv=False, use_gate=False, expand_v=1.0)
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        cache = model.new_cache(2)
        steps = torch.cat([model(ids[:, t : t + 1], cache) for t in range(12)], dim=1)
        torch.testing.assert_close(steps, model(ids), rtol=0, atol=1e-10)
    assert not hasattr(model.layers[0].token_mixer, "g_proj")


def test_parameter_names_are_fla_checkpoint_keys():
    keys = set(tiny().state_dict())
    for key in ("attn_norm.weight", "attn.q_proj.weight", "attn.q_conv1d.weight", "attn.k_conv1d.weight",
                "attn.v_conv1d.weight", "attn.a_proj.weight", "attn.b_proj.weight", "attn.A_log", "attn.dt_bias",
                "attn.g_proj.weight", "attn.o_norm.weight", "attn.o_proj.weight", "mlp_norm.weight",
                "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"):
        assert f"layers.0.{key}" in keys, key


@pytest.mark.skipif(FLA_AVAILABLE, reason="fla is installed here")
def test_kernel_cuda_without_fla_raises():
    with pytest.raises(RuntimeError, match="model.kernel='cuda' but flash-linear-attention"):
        tiny(kernel="cuda")
    with pytest.raises(RuntimeError, match="model.kernel='cuda'"):
        Hybrid(HybridConfig(layers=["gated_deltanet", "attention"], kernel="cuda"))


@pytest.mark.parametrize("bad,field", [({"kernel": "triton"}, "model.kernel"), ({"d_model": 30}, "model.n_heads"),
                                       ({"expand_v": 0.3}, "model.expand_v"), ({"chunk_size": 0}, "model.chunk_size"),
                                       ({"d_conv": 0}, "model.d_conv")])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        GatedDeltaNetConfig(**bad)


def test_knobs_reach_the_mixer_in_a_hybrid():
    cfg = HybridConfig(vocab_size=64, d_model=32, layers=["gated_deltanet", "attention", "gated_deltanet"],
                       mixer_args={"gated_deltanet": {"expand_v": 1.0, "chunk_size": 8}})
    layer = Hybrid(cfg).layers[0].token_mixer
    assert isinstance(layer, GatedDeltaNet) and layer.head_v_dim == layer.head_k_dim and layer.cfg.chunk_size == 8


def test_gated_delta_rule_picks_the_token_loop_only_for_short_inputs(monkeypatch):
    calls = []
    monkeypatch.setattr(delta_rule, "recurrent_gated_delta_rule", lambda *a: calls.append("loop") or (None, None))
    monkeypatch.setattr(delta_rule, "chunk_gated_delta_rule", lambda *a: calls.append("chunk") or (None, None))
    for T in (1, 2, 3, 64):
        xs = rule_inputs(T)
        gated_delta_rule(xs["q"], xs["k"], xs["v"], xs["g"], xs["beta"])
    gated_delta_rule(xs["q"][:, :1], xs["k"][:, :1], xs["v"][:, :1], xs["g"][:, :1], xs["beta"][:, :1], chunk_size=8)
    assert calls == ["loop", "loop", "chunk", "chunk", "chunk"]


@pytest.mark.gpu
def test_fla_kernel_equals_torch_path():
    if not (FLA_AVAILABLE and torch.cuda.is_available()):
        pytest.skip("fla / CUDA not available")
    torch.manual_seed(0)
    cfg = dict(vocab_size=256, d_model=128, n_layers=2, n_heads=2, init_std=0.05)
    ref = GatedDeltaNetLM(GatedDeltaNetConfig(**cfg, kernel="torch")).cuda()
    fast = GatedDeltaNetLM(GatedDeltaNetConfig(**cfg, kernel="cuda")).cuda()
    fast.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 256, (2, 300), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(fast(ids), ref(ids), rtol=1e-3, atol=1e-3)
    loss = lambda m: m(ids).float().logsumexp(-1).mean()  # noqa: E731
    for a, b in zip(torch.autograd.grad(loss(fast), list(fast.parameters())),
                    torch.autograd.grad(loss(ref), list(ref.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 80), chunk=st.integers(1, 40), H=st.integers(1, 3), K=st.integers(1, 6), V=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_chunked_form_equals_the_fla_reference_for_any_shape(T, chunk, H, K, V, seed):
    xs = rule_inputs(T, H=H, K=K, V=V, B=1, seed=seed)
    o, S = chunk_gated_delta_rule(xs["q"], xs["k"], xs["v"], xs["g"], xs["beta"], initial_state=xs["S0"],
                                  chunk_size=chunk)
    o_ref, S_ref = fla_naive_recurrent_gated_delta_rule(xs["q"], xs["k"], xs["v"], xs["beta"], xs["g"],
                                                        initial_state=xs["S0"])
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(S, S_ref, rtol=0, atol=1e-12)
