"""LongLoRA, as a specification: S2-Attn (shifted sparse attention) and LoRA+.

S2-Attn: the ``segment`` variant never lets a token see the future; the reference ``roll`` variant
leaks exactly the documented pairs; both equal a naive softmax(QK^T/sqrt(d) + mask)V built from the
explicit block mask. LoRA+: adapters start as a no-op, merge exactly, and train only what they should.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import target_device
from omegaconf import OmegaConf

import models.patterns.shifted_sparse as attention
from models.families.transformer import Transformer, TransformerConfig
from models.lora import LoraPlusConfig, apply_lora, has_lora, merge_lora, trainable_parameters
from models.patterns import PATTERNS, AttentionConfig
from models.pos.base import PosConfig

s2 = PATTERNS.get("shifted_sparse")


@pytest.fixture(autouse=True)
def _quiet_roll(monkeypatch):
    monkeypatch.setattr(attention, "_roll_warned", True)  # the warning has its own test


def qkv(B=2, H=4, Hkv=4, T=16, D=8, dtype=torch.float64):
    return (torch.randn(B, H, T, D, dtype=dtype), torch.randn(B, Hkv, T, D, dtype=dtype),
            torch.randn(B, Hkv, T, D, dtype=dtype))


def block_mask(T: int, G: int, shifted: bool, variant: str = "segment") -> torch.Tensor:
    """(T, T) bool: which key j query i may see, written from the definition, token by token."""
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    if not shifted:
        return (i // G == j // G) & (j <= i)
    if variant == "segment":  # segments [0, G/2), [G/2, 3G/2), ..., [T-G/2, T)
        return ((i + G // 2) // G == (j + G // 2) // G) & (j <= i)
    ri, rj = (i - G // 2) % T, (j - G // 2) % T  # slot of each token after rolling by -G/2
    return (ri // G == rj // G) & (rj <= ri)


def naive(q, k, v, masks, bias=None):
    """softmax(QK^T/sqrt(d) + bias + mask) V with one (T, T) mask per query head; GQA by repetition."""
    H = q.shape[1]
    k, v = k.repeat_interleave(H // k.shape[1], 1), v.repeat_interleave(H // v.shape[1], 1)  # (B, H, T, D)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~masks, float("-inf"))  # masks (H, T, T)
    return scores.softmax(-1) @ v


def s2_masks(H: int, T: int, G: int, variant: str) -> torch.Tensor:
    half = H // 2
    return torch.stack([block_mask(T, G, False)] * half + [block_mask(T, G, True, variant)] * half)


def dependencies(variant: str, T: int = 16, ratio: float = 0.25) -> torch.Tensor:
    """(H, T, T) bool: output (h, i) depends on value (h, j), i.e. its attention weight is > 0."""
    q, k, v = qkv(B=1, H=4, Hkv=4, T=T)
    v.requires_grad_(True)
    y = s2(q, k, v, AttentionConfig(group_ratio=ratio, shift_variant=variant))  # (1, H, T, D)
    rows = [torch.autograd.grad(y[0, :, i].sum(), v, retain_graph=True)[0][0].abs().sum(-1) for i in range(T)]
    return torch.stack(rows, dim=1) > 0  # (H, T, T): d y(h, i) / d v(h, j) = p_ij


# ---------------------------------------------------------------- S2-Attn


def test_segment_never_sees_the_future():
    q, k, v = qkv(H=4, Hkv=2, T=32)
    cfg = AttentionConfig(train="shifted_sparse")
    y = s2(q, k, v, cfg)
    for t in range(32):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        q2[:, :, t:] += 1.0
        k2[:, :, t:] -= 2.0
        v2[:, :, t:] += 3.0
        y2 = s2(q2, k2, v2, cfg)
        torch.testing.assert_close(y2[:, :, :t], y[:, :, :t], rtol=0, atol=0)
        assert not torch.allclose(y2[:, :, t], y[:, :, t])
    leaks = dependencies("segment").triu(1)
    assert not leaks.any()


def test_roll_leaks_exactly_the_documented_pairs():
    dep = dependencies("roll", T=16, ratio=0.25)  # G = 4
    assert not dep[:2].triu(1).any(), "the unshifted half is causal"
    for h in (2, 3):
        leaks = {tuple(p) for p in dep[h].triu(1).nonzero().tolist()}
        assert leaks == {(0, 14), (0, 15), (1, 14), (1, 15)}


def test_roll_warns_once(monkeypatch):
    monkeypatch.setattr(attention, "_roll_warned", False)
    q, k, v = qkv()
    cfg = AttentionConfig(shift_variant="roll")
    with pytest.warns(UserWarning, match="causal leak"):
        s2(q, k, v, cfg)
    assert attention._roll_warned


@pytest.mark.parametrize("variant", ["segment", "roll"])
@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2), (8, 2), (4, 1), (6, 3)], ids=lambda x: str(x))
@pytest.mark.parametrize("bias_heads", [0, 1, "H"], ids=["no_bias", "bias1", "biasH"])
def test_matches_naive_block_mask(variant, H, Hkv, bias_heads):
    """Any additive (H | 1, T, T) bias (ALiBi or not) enters through its block-diagonal entries."""
    T, ratio = 32, 0.25
    q, k, v = qkv(H=H, Hkv=Hkv, T=T)
    bias = torch.randn(H if bias_heads == "H" else 1, T, T, dtype=torch.float64) if bias_heads else None
    cfg = AttentionConfig(group_ratio=ratio, shift_variant=variant)
    expected = naive(q, k, v, s2_masks(H, T, int(ratio * T), variant), bias)
    torch.testing.assert_close(s2(q, k, v, cfg, bias=bias), expected)


@pytest.mark.parametrize("path,variant", [("views", "segment"), ("views", "roll"), ("masked", "segment"),
                                          ("gather", "segment"), ("gather", "roll")], ids=lambda x: str(x))
@pytest.mark.parametrize("H,Hkv", [(4, 4), (4, 2), (4, 1), (6, 3)], ids=lambda x: str(x))
@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
def test_gradients_match_naive_block_mask(path, variant, H, Hkv, ratio, monkeypatch):
    """dq, dk, dv of every code path (CPU views; CPU masked, the segment variant at small sizes; the gather path
    CUDA and ALiBi take) equal the naive reference's, on inputs laid out (B, T, H, D) as the transformer makes
    them, for a random and for an expanded (stride-0, as from ``.sum()``) output gradient."""
    calls = spy_paths(monkeypatch, force=path)
    B, T, D = 2, 16, 8
    cfg = AttentionConfig(group_ratio=ratio, shift_variant=variant)
    masks = s2_masks(H, T, int(ratio * T), variant)
    for grad in (torch.randn(B, H, T, D, dtype=torch.float64), torch.ones(()).expand(B, H, T, D)):
        q, k, v = (torch.randn(B, T, h, D, dtype=torch.float64).transpose(1, 2).requires_grad_()
                   for h in (H, Hkv, Hkv))
        y = s2(q, k, v, cfg)
        got = torch.autograd.grad(y, (q, k, v), grad.to(y.dtype))
        expected = torch.autograd.grad(naive(q, k, v, masks), (q, k, v), grad.to(y.dtype))
        torch.testing.assert_close(y, naive(q, k, v, masks))
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e)
    assert calls == {path}


def spy_paths(monkeypatch, force: str) -> set:
    """Force S2-Attn onto ``force`` (views | masked | gather) and record which path each call took."""
    calls: set = set()
    views_path, masked_path = attention.views_path, attention.masked_path
    monkeypatch.setattr(attention, "MASKED_MAX_WORK", 2**40 if force == "masked" else 0)

    def spied_views(q, bias):
        on = views_path(q, bias) and force != "gather"
        calls.add("views" if on else "gather")
        return on

    def spied_masked(q, segment):
        on = masked_path(q, segment)
        if on:
            calls.discard("views")
            calls.add("masked")
        return on

    monkeypatch.setattr(attention, "views_path", spied_views)
    monkeypatch.setattr(attention, "masked_path", spied_masked)
    return calls


def test_the_masked_call_runs_at_small_sizes_only():
    """Defaults: B=1, T=64, D=64 (B T^2 D = 2^18) takes the masked call; T=512 the views."""
    assert attention.masked_path(torch.empty(1, 8, 64, 64), segment=True)
    assert not attention.masked_path(torch.empty(1, 8, 64, 64), segment=False)
    assert not attention.masked_path(torch.empty(1, 8, 512, 64), segment=True)


@pytest.mark.parametrize("variant", ["segment", "roll"])
def test_compiled_matches_naive_block_mask(variant, monkeypatch):
    """Under torch.compile (AOT autograd's functionalization of the writes into views) output and
    gradients still equal the naive reference (writes into a gapped ``unfold`` view come out wrong
    there, pytorch/pytorch#198102)."""
    monkeypatch.setattr(attention, "MASKED_MAX_WORK", 0)  # the views, whose writes are what is at stake
    B, H, Hkv, T, D = 2, 4, 2, 32, 8
    cfg = AttentionConfig(shift_variant=variant)
    q, k, v = (torch.randn(B, T, h, D, dtype=torch.float64).transpose(1, 2).requires_grad_()
               for h in (H, Hkv, Hkv))
    torch._dynamo.reset()
    y = torch.compile(lambda q, k, v: s2(q, k, v, cfg), backend="aot_eager")(q, k, v)
    masks = s2_masks(H, T, int(cfg.group_ratio * T), variant)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (q, k, v), grad)
    expected = torch.autograd.grad(naive(q, k, v, masks), (q, k, v), grad)
    torch.testing.assert_close(y, naive(q, k, v, masks))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


def test_cpu_autocast_runs_in_the_autocast_dtype():
    """Under bf16 autocast (rotated q, k in fp32 beside a bf16 v, as RoPE leaves them) S2-Attn computes in
    bf16 like SDPA does, and matches the reference on the bf16-rounded inputs."""
    H, T = 4, 32
    q, k, v = qkv(B=2, H=H, Hkv=H, T=T, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = s2(q, k, v.bfloat16(), AttentionConfig())
    assert y.dtype == torch.bfloat16
    q, k, v = (x.bfloat16().double() for x in (q, k, v))
    expected = naive(q, k, v, s2_masks(H, T, T // 4, "segment"))
    torch.testing.assert_close(y.double(), expected, atol=2e-2, rtol=2e-2)


def test_group_of_whole_sequence():
    """Ratio 1: the unshifted half is full causal attention; the shifted half sees [0, T/2), [T/2, T)."""
    T = 16
    q, k, v = qkv(H=4, Hkv=2, T=T)
    y = s2(q, k, v, AttentionConfig(group_ratio=1.0))
    full = PATTERNS.get("full")(q, k, v, AttentionConfig())
    torch.testing.assert_close(y[:, :2], full[:, :2])
    expected = naive(q, k, v, torch.stack([block_mask(T, T, True)] * 4))
    torch.testing.assert_close(y[:, 2:], expected[:, 2:])
    seg = block_mask(T, T, True)
    assert seg[T // 2 - 1, : T // 2].all() and not seg[T // 2 :, : T // 2].any()


@pytest.mark.parametrize("T,ratio", [(10, 0.25), (12, 0.25), (16, 0.3), (4, 0.25)])
def test_bad_group_size_is_a_clear_error(T, ratio):
    q, k, v = qkv(T=T)
    with pytest.raises(ValueError, match=rf"model\.attention\.group_ratio=.*T={T}.*even integer"):
        s2(q, k, v, AttentionConfig(group_ratio=ratio))


def test_odd_head_count_is_a_clear_error():
    q, k, v = qkv(H=3, Hkv=1)
    with pytest.raises(ValueError, match="n_heads=3"):
        s2(q, k, v, AttentionConfig())


@pytest.mark.parametrize("rule", ["rope", "alibi"])
def test_model_with_s2_attn_is_causal_and_trains(rule):
    """Through the whole transformer (train mode): perturbing token t changes no logit before t."""
    cfg = TransformerConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            pos=PosConfig(rule=rule), attention=AttentionConfig(train="shifted_sparse"))
    model = Transformer(cfg).to(target_device(), torch.float64).train()
    ids = torch.randint(0, 32, (2, 16), device=target_device())
    logits = model(ids)
    for t in (0, 3, 8, 15):
        other = ids.clone()
        other[:, t] = (other[:, t] + 1) % 32
        torch.testing.assert_close(model(other)[:, :t], logits[:, :t], rtol=0, atol=0)
    F.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------- LoRA+


def tiny(tie: bool = False) -> Transformer:
    cfg = TransformerConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            tie_embeddings=tie, attention=AttentionConfig(train="shifted_sparse"))
    return Transformer(cfg)


def lora_cfg(**kw) -> LoraPlusConfig:
    return LoraPlusConfig(enabled=True, **kw)


def train_steps(model, n=2, lr=1e-2):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)  # frozen ones included on purpose
    model.train()
    for _ in range(n):
        ids = torch.randint(0, 32, (2, 16))
        loss = F.cross_entropy(model(ids).flatten(0, 1), ids.roll(-1, 1).flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_zero_init_adapters_change_nothing():
    model = tiny().eval()
    ids = torch.randint(0, 32, (2, 16))
    before = model(ids)
    model = apply_lora(model, lora_cfg())
    assert has_lora(model) and isinstance(model, Transformer)
    torch.testing.assert_close(model(ids), before, rtol=0, atol=0)


def test_disabled_config_is_a_no_op():
    model = tiny()
    assert apply_lora(model, LoraPlusConfig()) is model and not has_lora(model)


def test_only_adapters_embeddings_and_norms_train():
    model = apply_lora(tiny(), lora_cfg())
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, n=2)  # step 1 moves B (A's grad is 0 while B = 0), step 2 moves A
    for n, p in model.named_parameters():
        should_train = "lora_" in n or "embed" in n or "norm" in n
        assert p.requires_grad == should_train, n
        assert (not torch.equal(p, start[n])) == should_train, n
    assert not model.lm_head.weight.requires_grad
    assert any("input_layernorm" in n for n, p in model.named_parameters() if p.requires_grad)


def test_trainable_count_closed_form():
    cfg = lora_cfg(r=4)
    model = apply_lora(tiny(), cfg)
    mc = model.cfg
    d, hd, L, r = mc.d_model, mc.head_dim, mc.n_layers, cfg.r
    q_out, kv_out = mc.n_heads * hd, mc.n_kv_heads * hd
    per_layer = r * (d + q_out) + 2 * r * (d + kv_out) + r * (q_out + d)  # q, k, v, o: r * (in + out)
    expected = L * per_layer + mc.vocab_size * d + (2 * L + 1) * d  # + embeddings + 2 norms/layer + final
    assert trainable_parameters(model) == expected


def test_merged_equals_unmerged_after_training():
    model = apply_lora(tiny(), lora_cfg())
    train_steps(model, n=2)
    model.eval()
    ids = torch.randint(0, 32, (2, 16))
    before = model(ids)
    merged = merge_lora(model)
    assert not has_lora(merged) and not hasattr(merged, "peft_config")
    torch.testing.assert_close(merged(ids), before, rtol=1e-5, atol=1e-5)
    plain = tiny()
    assert list(merged.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(merged.state_dict())  # exports as a plain checkpoint
    torch.testing.assert_close(plain.eval()(ids), before, rtol=1e-5, atol=1e-5)


def test_checkpoint_resumes_with_adapters():
    model = apply_lora(tiny(), lora_cfg())
    train_steps(model, n=2)
    state = model.state_dict()
    resumed = apply_lora(tiny(), lora_cfg())
    resumed.load_state_dict(state)  # strict: the same keys
    ids = torch.randint(0, 32, (2, 16))
    torch.testing.assert_close(resumed.eval()(ids), model.eval()(ids), rtol=0, atol=0)


def test_model_api_survives_adapters():
    model = apply_lora(tiny(), lora_cfg()).eval()
    ids = torch.randint(0, 32, (1, 12))
    logits = model(ids)
    assert model.hidden_states(ids).shape == (1, 12, model.cfg.d_model)
    cache = model.new_cache(1)
    steps = [model(ids[:, :8], cache)] + [model(ids[:, t : t + 1], cache) for t in range(8, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), logits, rtol=1e-5, atol=1e-5)


def test_config_validation_and_omegaconf():
    schema = OmegaConf.structured(LoraPlusConfig)
    cfg = OmegaConf.to_object(OmegaConf.merge(schema, {"r": 4, "enabled": True}))
    assert isinstance(cfg, LoraPlusConfig) and cfg.r == 4 and cfg.targets[0] == "q_proj"
    for bad, match in [({"r": 0}, r"lora\.r=0"), ({"dropout": 1.0}, r"lora\.dropout=1\.0"),
                       ({"alpha": 0}, r"lora\.alpha=0"), ({"targets": []}, r"lora\.targets")]:
        with pytest.raises(ValueError, match=match):
            LoraPlusConfig(**bad)
    with pytest.raises(ValueError, match=r"lora\.targets=.*gate_pro.*allowed"):
        apply_lora(tiny(), lora_cfg(targets=["q_proj", "gate_pro"]))
    with pytest.raises(ValueError, match=r"lora\.trainable=.*bias"):
        apply_lora(tiny(), lora_cfg(trainable=["bias"]))
    with pytest.raises(ValueError, match="tie_embeddings"):
        apply_lora(tiny(tie=True), lora_cfg())
    assert trainable_parameters(apply_lora(tiny(tie=True), lora_cfg(trainable=["norm"]))) > 0
