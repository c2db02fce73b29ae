"""The decayed-linear-attention mixers (gla, retention, mamba2): chunked form == recurrence, decode == forward.

Specification, one test each: the chunked core (models/linear_attention.py) equals a token-by-token
recurrence written here from the equations, in values, final state and gradients, for a per-channel
and a scalar decay, T not a multiple of the chunk and T = 1, several heads, an initial state; it equals
ports of the references' own naive implementations (fla's ``naive_recurrent_gla`` and
``naive_retention``, mamba's ``ssd_minimal_discrete``); it stays finite under huge decays; each family's
forward equals step-by-step decode and prefill-then-step through its cache (also with fla's short convs
on q, k, v, and a hybrid of them); a token never changes earlier logits; the state's bytes are constant
and as computed; bad configs name the field; kernel=cuda fails loudly where the kernels cannot run;
on a GPU (``gpu``) each kernel path equals the torch path.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_config, target_device

from models.families.hybrid import HybridConfig
from models.linear_attention import RecurrentStateCache, chunked_decayed_attention, decayed_attention_step
from models.mixers import gla, mamba2, retention
from models.mixers.retention import retention_log_decays
from models.registry import build_model, config_class
from pipeline.run import train

F64 = torch.float64
FAMILIES = ("gla", "retention", "mamba2")


# ---- test references: ports of the references' naive pure-PyTorch code, semantics only (dtype kept) ----

def ref_naive_recurrent_gla(q, k, v, gk, initial_state=None):
    """Port of fla ``fla/ops/gla/naive.py::naive_recurrent_gla`` (inputs (B, T, H, D); scale K^-1/2)."""
    q, k, v, gk = (t.transpose(1, 2) for t in (q, k, v, gk))
    B, H, T, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.clone()
    o = torch.zeros_like(v)
    for i in range(T):
        h = h * gk[:, :, i].exp()[..., None] + k[:, :, i, :, None] * v[:, :, i, None, :]
        o[:, :, i] = ((q[:, :, i] * K**-0.5)[..., None] * h).sum(-2)
    return o.transpose(1, 2), h


def ref_naive_retention(q, k, v):
    """Port of fla ``fla/ops/retention/naive.py::naive_retention`` (inputs (B, H, T, D); its own decays)."""
    _, n_heads, seq_len, d_head = q.shape
    s = (1 - q.new_tensor(2.0).pow(-5.0 - torch.arange(n_heads, dtype=q.dtype))).log2()
    n = torch.arange(seq_len, dtype=q.dtype)
    n = torch.exp2((n[:, None] - n) * s.view(-1, 1, 1)) * (n[:, None] >= n)
    scores = torch.einsum("bhqd,bhkd,hqk->bhqk", q * d_head**-0.5, k, n)
    return torch.einsum("bhqk,bhkd->bhqd", scores, v)


def _segsum(x):
    """Port of mamba ``ssd_minimal.py::segsum``: out[..., i, j] = sum x[j+1..i] for j <= i, else -inf."""
    T = x.size(-1)
    x = x[..., None].expand(*x.shape, T)
    x = x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1), 0)
    out = torch.cumsum(x, dim=-2)
    return out.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=0), -torch.inf)


def ref_ssd_minimal_discrete(X, A, B, C, block_len, initial_states=None):
    """Port of mamba ``mamba_ssm/modules/ssd_minimal.py::ssd_minimal_discrete`` (einops -> reshape).

    X (b, L, h, p), A (b, L, h), B/C (b, L, g, n) with L a multiple of block_len -> Y, final state (b, h, p, n).
    """
    b, length, h, p = X.shape
    g = B.shape[2]
    c = length // block_len
    X, A, B, C = (t.reshape(b, c, block_len, *t.shape[2:]) for t in (X, A, B, C))
    B, C = (t.repeat_interleave(h // g, dim=3) for t in (B, C))  # groups -> heads
    A = A.permute(0, 3, 1, 2)  # b h c l
    A_cumsum = torch.cumsum(A, dim=-1)
    L = torch.exp(_segsum(A))
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L, X)
    decay_states = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X)
    if initial_states is None:
        initial_states = torch.zeros_like(states[:, :1])
    states = torch.cat([initial_states, states], dim=1)
    decay_chunk = torch.exp(_segsum(F.pad(A_cumsum[:, :, :, -1], (1, 0))))
    new_states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, torch.exp(A_cumsum))
    return (Y_diag + Y_off).reshape(b, length, h, p), final_state


# ---- the recurrence, written from the equations (not from models/linear_attention.py) ----

def recurrence(q, k, v, g, scale, S0):
    """S_t = exp(g_t) (per key row) * S_{t-1} + k_t^T v_t; o_t = scale q_t S_t; (B, H, T, .) inputs."""
    S, outs = S0.clone(), []
    for t in range(q.shape[2]):
        a = torch.exp(g[:, :, t])
        S = (a[..., None] if g.dim() == 4 else a[..., None, None]) * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return torch.stack(outs, dim=2), S


def core_inputs(T, per_channel, B=2, H=3, K=4, V=5, requires_grad=False, strength=1.0):
    gen = torch.Generator().manual_seed(T)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    g = -strength * F.softplus(r(B, H, T, K) if per_channel else r(B, H, T))
    xs = dict(q=r(B, H, T, K), k=r(B, H, T, K), v=r(B, H, T, V), g=g, S0=r(B, H, K, V))
    return {n: t.requires_grad_(requires_grad) for n, t in xs.items()}


SHAPES = [(1, None), (1, 4), (37, None), (37, 5), (37, 16), (64, 16), (64, 64)]


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "scalar"])
@pytest.mark.parametrize("T,chunk", SHAPES, ids=lambda v: str(v))
def test_chunked_equals_recurrence_and_steps(T, chunk, per_channel):
    xs = core_inputs(T, per_channel)
    o, S = chunked_decayed_attention(xs["q"], xs["k"], xs["v"], xs["g"], 0.5, xs["S0"], chunk)
    o_ref, S_ref = recurrence(xs["q"], xs["k"], xs["v"], xs["g"], 0.5, xs["S0"])
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(S, S_ref, rtol=0, atol=1e-12)
    state, steps = xs["S0"], []
    for t in range(T):
        o_t, state = decayed_attention_step(*(xs[n][:, :, t] for n in "qkvg"), state, 0.5)
        steps.append(o_t)
    torch.testing.assert_close(torch.stack(steps, dim=2), o_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(state, S_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "scalar"])
def test_chunked_gradients_equal_recurrence_gradients(per_channel):
    xs = core_inputs(23, per_channel, requires_grad=True)
    w_o, w_S = torch.randn(2, 3, 23, 5, dtype=F64), torch.randn(2, 3, 4, 5, dtype=F64)

    def grads(fn):
        o, S = fn(xs["q"], xs["k"], xs["v"], xs["g"], 0.5, xs["S0"])
        return torch.autograd.grad((o * w_o).sum() + (S * w_S).sum(), list(xs.values()))

    ours = grads(lambda *a: chunked_decayed_attention(*a, chunk_size=5))
    for got, want in zip(ours, grads(recurrence)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "scalar"])
def test_huge_decays_stay_finite(per_channel):
    """Log-decays of -1e4 per token: a naive exp(-cumsum) factorisation overflows; ours stays exact."""
    xs = core_inputs(40, per_channel, requires_grad=True, strength=1e4)
    o, S = chunked_decayed_attention(xs["q"], xs["k"], xs["v"], xs["g"], 1.0, xs["S0"], 16)
    (o.sum() + S.sum()).backward()
    o_ref, _ = recurrence(*(xs[n].detach() for n in "qkvg"), 1.0, xs["S0"].detach())
    torch.testing.assert_close(o.detach(), o_ref, rtol=0, atol=1e-9)
    assert all(torch.isfinite(t.grad).all() for t in xs.values())


@pytest.mark.parametrize("T,chunk", [(1, None), (29, 8), (64, 16)], ids=lambda v: str(v))
def test_gla_core_equals_fla_naive_recurrent_gla(T, chunk):
    xs = core_inputs(T, per_channel=True, K=8, V=6)
    K = xs["q"].shape[-1]
    o, S = chunked_decayed_attention(xs["q"], xs["k"], xs["v"], xs["g"], K**-0.5, xs["S0"], chunk)
    o_ref, S_ref = ref_naive_recurrent_gla(*(xs[n].transpose(1, 2) for n in "qkvg"), initial_state=xs["S0"])
    torch.testing.assert_close(o, o_ref.transpose(1, 2), rtol=0, atol=1e-12)
    torch.testing.assert_close(S, S_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("T,chunk", [(1, None), (45, 8), (100, None)], ids=lambda v: str(v))
def test_retention_core_equals_fla_naive_retention(T, chunk):
    """The retention mixer's decays (retention_log_decays) through our core == fla's closed-form retention."""
    B, H, D = 2, 4, 8
    gen = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(B, H, T, D, generator=gen, dtype=F64) for _ in range(3))
    g = retention_log_decays(H)[None, :, None].expand(B, H, T)
    o, _ = chunked_decayed_attention(q, k, v, g, D**-0.5, None, chunk)
    torch.testing.assert_close(o, ref_naive_retention(q, k, v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("T,chunk,groups", [(16, 4, 1), (48, 16, 2), (48, 7, 2)], ids=lambda v: str(v))
def test_ssd_core_equals_mamba_ssd_minimal_discrete(T, chunk, groups):
    """Mamba-2's mapping (q = C, k = B, v = dt x, g = dt A) through our core == the paper's minimal SSD."""
    b, h, p, n = 2, 4, 3, 5
    gen = torch.Generator().manual_seed(T)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    x, dt = r(b, T, h, p), F.softplus(r(b, T, h) - 1)
    A, Bm, Cm, h0 = -torch.exp(r(h)), r(b, T, groups, n), r(b, T, groups, n), r(b, h, p, n)
    per_head = lambda t: t.repeat_interleave(h // groups, dim=2).transpose(1, 2)  # noqa: E731
    y, S = chunked_decayed_attention(per_head(Cm), per_head(Bm), (x * dt[..., None]).transpose(1, 2),
                                     (dt * A).transpose(1, 2), 1.0, h0.transpose(-1, -2), chunk)
    y_ref, S_ref = ref_ssd_minimal_discrete(x * dt[..., None], A * dt, Bm, Cm, 16 if T % 16 == 0 else 4,
                                            h0[:, None])
    torch.testing.assert_close(y.transpose(1, 2), y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(S.transpose(-1, -2), S_ref, rtol=0, atol=1e-12)


# ---- the families ----

def tiny(family, **kw):
    extra = dict(headdim=8, d_state=6, ngroups=2) if family == "mamba2" else dict(n_heads=2)
    return build_model(config_class(family)(vocab_size=64, d_model=16, n_layers=2, **{**extra, **kw}))


def tiny_hybrid(**kw):
    return build_model(HybridConfig(vocab_size=64, d_model=16, layers=["gla", "attention", "retention", "mamba2"],
                                    n_heads=2, mixer_args=dict(mamba2=dict(headdim=8, d_state=6)), **kw))


CONV = dict(use_short_conv=True, conv_size=3)  # fla's short convs on q, k, v (gla, retention: our default)
NO_CONV = dict(use_short_conv=False)  # fla's default
CASES = [("gla", NO_CONV), ("gla", CONV), ("retention", NO_CONV), ("retention", CONV), ("mamba2", {})]
CASE_IDS = ["gla_noconv", "gla", "retention_noconv", "retention", "mamba2"]


@pytest.mark.parametrize("family,kw", [*CASES, ("hybrid", {})], ids=[*CASE_IDS, "hybrid"])
def test_forward_equals_step_decode_and_prefill_then_step(family, kw):
    model = (tiny_hybrid(chunk_size=4) if family == "hybrid" else tiny(family, chunk_size=4, **kw))
    model = model.to(target_device(), F64).eval()
    ids = torch.randint(0, 64, (2, 21), device=target_device())
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


@pytest.mark.parametrize("family,kw", CASES, ids=CASE_IDS)
def test_changing_a_token_never_changes_earlier_logits(family, kw):
    model = tiny(family, chunk_size=4, **kw).to(target_device()).eval()
    ids = torch.randint(0, 64, (1, 24), device=target_device())
    other = ids.clone()
    other[0, 13] = (ids[0, 13] + 1) % 64
    with torch.no_grad():
        a, b = model(ids), model(other)
    torch.testing.assert_close(a[:, :13], b[:, :13], rtol=0, atol=0)
    assert not torch.allclose(a[:, 13:], b[:, 13:])


@pytest.mark.parametrize("family,kw", CASES, ids=CASE_IDS)
def test_state_bytes_are_constant_and_as_computed(family, kw):
    model = tiny(family, **kw).eval()
    cfg, B = model.cfg, 3
    if family == "mamba2":  # state (H, d_state, headdim) + conv inputs (d_inner + 2 G N, d_conv)
        per_layer = cfg.d_inner * cfg.d_state + (cfg.d_inner + 2 * cfg.ngroups * cfg.d_state) * cfg.d_conv
    else:  # (H, d_k, d_v) = key_dim * value_dim / H, + the last conv_size inputs of q, k, v with short convs
        key_dim, value_dim = int(cfg.expand_k * cfg.d_model), int(cfg.expand_v * cfg.d_model)
        per_layer = key_dim * value_dim // cfg.n_heads + cfg.use_short_conv * (2 * key_dim + value_dim) * cfg.conv_size
    cache, sizes = model.new_cache(B), []
    with torch.no_grad():
        for T in (1, 50, 1):
            model(torch.randint(0, 64, (B, T)), cache)
            sizes.append(cache.nbytes())
    assert sizes == [cfg.n_layers * B * per_layer * 4] * 3
    assert all(isinstance(layer, RecurrentStateCache) for layer in cache.layers)


def test_retention_decays_are_retnets():
    gammas = torch.exp(retention_log_decays(4))
    torch.testing.assert_close(gammas, torch.tensor([1 - 2.0**-5, 1 - 2.0**-6, 1 - 2.0**-7, 1 - 2.0**-8], dtype=F64))


def test_parameter_names_follow_the_references():
    """fla's GLA / RetNet layer names, transformers' Mamba2Mixer names (for checkpoint exchange)."""
    kw = {"gla": NO_CONV, "retention": NO_CONV, "mamba2": {}}  # fla's layers as they default (no short convs)
    names = {f: {n.split(".", 2)[2] for n, _ in tiny(f, **kw[f]).named_parameters() if n.startswith("layers.0.")}
             for f in FAMILIES}
    common = {"attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.g_proj.weight",
              "attn.o_proj.weight", "attn.g_norm_swish_gate.weight", "attn_norm.weight", "mlp_norm.weight",
              "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}
    assert names["gla"] == common | {"attn.gk_proj.0.weight", "attn.gk_proj.1.weight", "attn.gk_proj.1.bias"}
    assert names["retention"] == common
    with_conv = {n.split(".", 2)[2] for n, _ in tiny("gla", **CONV).named_parameters() if n.startswith("layers.0.")}
    assert with_conv - names["gla"] == {"attn.q_conv1d.weight", "attn.k_conv1d.weight", "attn.v_conv1d.weight"}
    assert names["mamba2"] == {"norm.weight", *(f"mixer.{n}" for n in (
        "in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"))}


def test_mamba2_init_follows_the_reference():
    cfg = config_class("mamba2")(d_model=64, headdim=16, n_layers=2)
    mixer = build_model(cfg).layers[0].mixer
    dt = F.softplus(mixer.dt_bias)
    assert dt.min() >= cfg.dt_init_floor * 0.999 and dt.max() <= cfg.dt_max * 1.001
    A = torch.exp(mixer.A_log)
    assert A.min() >= cfg.A_init_min and A.max() <= cfg.A_init_max
    assert torch.equal(mixer.D, torch.ones(8)) and mixer.A_log._no_weight_decay and mixer.dt_bias._no_reinit
    assert mixer.in_proj.weight.shape == (2 * 128 + 2 * cfg.d_state + 8, 64)


@pytest.mark.parametrize("family,bad,field", [
    ("gla", dict(kernel="triton"), "model.kernel"),
    ("gla", dict(expand_k=0.3), "model.expand_k"),
    ("gla", dict(gate_logit_normalizer=0), "model.gate_logit_normalizer"),
    ("gla", dict(conv_size=0), "model.conv_size"),
    ("retention", dict(n_heads=3), "model.expand_k"),
    ("retention", dict(chunk_size=0), "model.chunk_size"),
    ("mamba2", dict(headdim=48), "model.headdim"),
    ("mamba2", dict(ngroups=3), "model.ngroups"),
    ("mamba2", dict(family="mamba"), "model.family"),
])
def test_bad_config_names_the_field(family, bad, field):
    with pytest.raises(ValueError, match=field):
        config_class(family)(**bad)


def test_hybrid_mixer_args_reach_the_mixer():
    model = tiny_hybrid()
    assert [type(layer.token_mixer).__name__ for layer in model.layers] == [
        "GatedLinearAttention", "Attention", "MultiScaleRetention", "Mamba2Mixer"]
    assert model.layers[3].token_mixer.cfg.headdim == 8
    with pytest.raises(ValueError, match="mixer_args.gla"):
        HybridConfig(layers=["gla"], mixer_args=dict(gla=dict(headdim=8)))


@pytest.mark.parametrize("overrides", [
    ["model=gla"], ["model=retention"], ["model=mamba2", "model.headdim=16", "model.d_state=8"],
    ["model=hybrid", "model.layers=[gla,attention,mamba2]", "+model.mixer_args.mamba2.headdim=16"],
], ids=["gla", "retention", "mamba2", "hybrid"])
def test_train_py_trains_and_evaluates_each_mixer(overrides, tmp_path):
    """``python train.py model=<mixer>`` end to end: train, then the grid (decoding and teacher forcing)."""
    drop = {"model=mamba2": {"model.n_heads=2"}, "model=hybrid": {"model.n_layers=2"}}.get(overrides[0], set())
    rows = train(compose_config([o for o in TINY if o not in drop] + overrides, run_dir=str(tmp_path)))
    assert rows and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    # an answer is exactly right under greedy decoding iff every token is right under teacher forcing
    assert all(r["accuracy"] == r["tf_accuracy"] for r in rows)
    if overrides[0] != "model=hybrid":  # (its attention layer's KV cache grows)
        assert len({r["cache_bytes"] for r in rows}) == 1  # the state does not grow with the eval length


def test_kv_policies_are_refused_on_recurrent_families(tmp_path):
    from pipeline.config.resolve import ConfigError, validate

    for family in FAMILIES:
        with pytest.raises(ConfigError, match=rf"cache.policy='quest' on model.family='{family}'.*allowed: cache=full"):
            validate(compose_config([f"model={family}", "cache=quest"], run_dir=str(tmp_path)))


@pytest.mark.parametrize("module,family", [(gla, "gla"), (retention, "retention"), (mamba2, "mamba2")])
def test_kernel_cuda_without_kernels_raises(module, family):
    if module.KERNELS_AVAILABLE:
        pytest.skip("the kernels import here")
    with pytest.raises(RuntimeError, match="kernel='cuda'"):
        tiny(family, kernel="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_kernels_equal_torch_path(family):
    module = {"gla": gla, "retention": retention, "mamba2": mamba2}[family]
    if not (torch.cuda.is_available() and module.KERNELS_AVAILABLE):
        pytest.skip("needs CUDA and the kernels")
    torch.manual_seed(0)
    fast = tiny(family, kernel="cuda").cuda()
    slow = tiny(family, kernel="torch").cuda()
    slow.load_state_dict(fast.state_dict())
    ids = torch.randint(0, 64, (2, 100), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(fast(ids), slow(ids), rtol=1e-3, atol=1e-3)
        # the kernel's prefill state continues on the torch step: decode equals the torch path's
        c_fast, c_slow = fast.new_cache(2), slow.new_cache(2)
        fast(ids[:, :90], c_fast), slow(ids[:, :90], c_slow)
        torch.testing.assert_close(fast(ids[:, 90:91], c_fast), slow(ids[:, 90:91], c_slow), rtol=1e-3, atol=1e-3)
    loss_f, loss_s = fast(ids).float().logsumexp(-1).mean(), slow(ids).float().logsumexp(-1).mean()
    loss_f.backward(), loss_s.backward()
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-2, atol=1e-3, msg=name)
