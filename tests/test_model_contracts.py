"""The contract every registered variant meets, parametrized over the registries (fla's shared harness).

A new positional rule, attention pattern, cache policy or mixer is tested here by being registered:
tests/plugins/toy_models.py adds one of each from outside models/ and they run through the same tests.
Models and inputs live on ``--device`` (tests/conftest.py; scripts/gpu_check.py runs them on CUDA).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import target_device

from models.caches import CACHE_POLICIES, CacheConfig
from models.duo import save_gates
from models.families.hybrid import Hybrid, HybridConfig
from models.families.transformer import Transformer, TransformerConfig
from models.mixers import MIXERS
from models.patterns import PATTERNS, AttentionConfig
from models.pos import POS_RULES
from models.pos.base import PosConfig, rope_frequencies
from models.pos.positional import Positional

HEAD_DIM, N_HEADS, ORIGINAL = 16, 4, 12
# one value for every knob any built-in rule reads; a rule ignores what it does not use
POS_KNOBS = dict(factor=2.0, original_max_position_embeddings=ORIGINAL, max_position_embeddings=2 * ORIGINAL,
                 short_factor=[1.0] * (HEAD_DIM // 2), long_factor=[2.0] * (HEAD_DIM // 2))


def pos_config(rule: str) -> PosConfig:
    return PosConfig(rule=rule, **POS_KNOBS)


@pytest.mark.parametrize("rule", POS_RULES.names())
def test_pos_rule_returns_finite_frequencies_of_the_rotary_shape(rule: str) -> None:
    spec = POS_RULES.get(rule)
    for seq_len in (None, 4 * ORIGINAL):
        params = pos_config(rule).params() | ({"seq_len": seq_len} if seq_len else {})
        inv_freq, factor = rope_frequencies(rule, HEAD_DIM, 1e4, **params)
        assert factor > 0 and torch.isfinite(torch.tensor(factor))
        if not spec.rotary:
            assert inv_freq is None
            continue
        assert inv_freq.shape == (HEAD_DIM // 2,) and inv_freq.dtype == torch.float64
        assert torch.isfinite(inv_freq).all() and (inv_freq > 0).all()
    slopes = Positional(pos_config(rule), HEAD_DIM, N_HEADS).slopes
    assert slopes.numel() == (N_HEADS if spec.slopes else 0)


def tiny_transformer(pos: PosConfig, attention: AttentionConfig | None = None, n_kv_heads: int = 2) -> Transformer:
    cfg = TransformerConfig(vocab_size=64, d_model=HEAD_DIM * N_HEADS, n_heads=N_HEADS, n_kv_heads=n_kv_heads,
                            n_layers=2, pos=pos, attention=attention or AttentionConfig(), init_std=0.2)
    return Transformer(cfg).to(target_device()).eval()


def decode(model: torch.nn.Module, ids: torch.Tensor, policy: CacheConfig | str = "full",
           prompt: int = 0) -> torch.Tensor:
    """Logits (B, T, V): the first ``prompt`` tokens in one call, then one token at a time."""
    cache = model.new_cache(ids.shape[0], policy)
    chunks = [ids[:, :prompt]] if prompt else []
    chunks += [ids[:, t : t + 1] for t in range(prompt, ids.shape[1])]
    with torch.no_grad():
        return torch.cat([model(c, cache) for c in chunks], dim=1)


@pytest.mark.parametrize("rule", POS_RULES.names())
def test_pos_rule_decode_equals_teacher_forced_within_the_original_length(rule: str) -> None:
    model = tiny_transformer(pos_config(rule))
    ids = torch.randint(0, 64, (2, ORIGINAL), device=target_device())  # length-dependent rules switch only past it
    with torch.no_grad():
        torch.testing.assert_close(decode(model, ids), model(ids), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- attention patterns

def pattern_inputs(T: int = 16, H: int = 4, Hkv: int = 2, D: int = 8):
    """q (2, H, T, D), k, v (2, Hkv, T, D); the batch is one sequence twice, as a doubled batch
    (duo_two_way: teacher; student) needs both halves to see the same states."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, H, T, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, Hkv, T, D, generator=g, dtype=torch.float64) for _ in range(2))
    return tuple(t.repeat(2, 1, 1, 1).to(target_device()) for t in (q, k, v))


PATTERN_CFG = AttentionConfig(sink=2, window=5, group_ratio=0.25)
GATE = torch.tensor([0.3, 0.8], dtype=torch.float64, device=target_device())  # per KV head; others ignore it


@pytest.mark.parametrize("pattern", PATTERNS.names())
def test_pattern_never_lets_a_token_see_the_future(pattern: str) -> None:
    q, k, v = pattern_inputs()
    y = PATTERNS.get(pattern)(q, k, v, PATTERN_CFG, gate=GATE)
    assert y.shape == q.shape and torch.isfinite(y).all()
    for t in (3, 9):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, t + 1 :] += 5.0
        v2[:, :, t + 1 :] -= 5.0
        y2 = PATTERNS.get(pattern)(q, k2, v2, PATTERN_CFG, gate=GATE)
        torch.testing.assert_close(y2[:, :, : t + 1], y[:, :, : t + 1])


@pytest.mark.parametrize("pattern", PATTERNS.names())
def test_pattern_lets_the_first_token_see_itself_only(pattern: str) -> None:
    q, k, v = pattern_inputs()
    y = PATTERNS.get(pattern)(q, k, v, PATTERN_CFG, gate=GATE)
    G = q.shape[1] // k.shape[1]
    torch.testing.assert_close(y[:, :, 0], v[:, :, 0].repeat_interleave(G, dim=1))


# ---------------------------------------------------------------- cache policies

def policy(name: str, tmp_path, lossless: bool) -> CacheConfig:
    """The policy with small knobs, or knobs large enough that nothing is dropped (``lossless``)."""
    cls = CACHE_POLICIES.get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    big = 1024
    knobs = {"sink": 2, "window": big if lossless else 6, "budget": big if lossless else 8, "page_size": 4,
             "dense_layers": 0, "sparsity": 0.5, "selection": "kernel" if lossless else "eval"}
    # (quest's eval selection leaves a partial last page unread even when the budget covers it)
    if "gates_path" in fields:
        knobs["gates_path"] = str(tmp_path / "gates.pt")
        save_gates(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), knobs["gates_path"])
    return CacheConfig(policy=name, **{k: v for k, v in knobs.items() if k in fields})


@pytest.mark.parametrize("name", CACHE_POLICIES.names())
def test_lossless_policy_decode_equals_dense_attention(name: str, tmp_path) -> None:
    model = tiny_transformer(PosConfig())
    ids = torch.randint(0, 64, (2, 24), device=target_device())
    with torch.no_grad():
        reference = model(ids)  # naive dense causal attention
    for prompt in (0, 16):
        got = decode(model, ids, policy(name, tmp_path, lossless=True), prompt=prompt)
        torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-5)


def held_bytes(cache) -> int:
    return sum(t.untyped_storage().nbytes() for layer in cache.layers for t in layer.tensors())


@pytest.mark.parametrize("name", CACHE_POLICIES.names())
def test_policy_reports_exact_bytes(name: str, tmp_path) -> None:
    model = tiny_transformer(PosConfig())
    ids = torch.randint(0, 64, (2, 32), device=target_device())
    sizes = {}
    for which, cfg in (("policy", policy(name, tmp_path, lossless=False)), ("full", CacheConfig())):
        cache = model.new_cache(2, cfg)
        with torch.no_grad():
            model(ids[:, :24], cache)
            for t in range(24, 32):
                assert torch.isfinite(model(ids[:, t : t + 1], cache)).all()
        direct = sum(t.numel() * t.element_size() for layer in cache.layers for t in layer.tensors())
        assert cache.nbytes() == direct == held_bytes(cache), "bytes are what the tensors hold, no pinned views"
        sizes[which] = cache.nbytes()
    assert sizes["policy"] > 0 and sizes["full"] > 0
    own = policy(name, tmp_path, lossless=False)
    assert own.label.startswith(name) and own.scoped("attn layers 1/3").label == f"{own.label}[attn layers 1/3]"
    assert set(own.knobs()) == {f.name for f in dataclasses.fields(own)} - {"policy", "prefill", "chunk_size"}


# ---------------------------------------------------------------- mixers

def mixer_block(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = Hybrid(HybridConfig(vocab_size=64, d_model=32, n_heads=4, layers=[name], init_std=0.2))
    return model.layers[0].token_mixer.to(target_device()).eval()


@pytest.mark.parametrize("name", MIXERS.names())
def test_mixer_forward_equals_token_by_token_decode(name: str) -> None:
    mixer = mixer_block(name)
    x = torch.randn(2, 12, 32, device=target_device())
    with torch.no_grad():
        full = mixer(x)
        for prompt in (0, 5):
            cache = mixer.new_layer_cache(2, CacheConfig(), 0, 1)
            parts = [mixer(x[:, :prompt], cache, 0)] if prompt else []
            parts += [mixer(x[:, t : t + 1], cache, t) for t in range(prompt, 12)]
            torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)
        assert cache.nbytes() > 0


@pytest.mark.parametrize("name", MIXERS.names())
def test_mixer_is_causal(name: str) -> None:
    mixer = mixer_block(name)
    x = torch.randn(2, 12, 32, device=target_device())
    x2 = x.clone()
    x2[:, 7:] += 3.0
    with torch.no_grad():
        torch.testing.assert_close(mixer(x2)[:, :7], mixer(x)[:, :7])


@pytest.mark.parametrize("name", MIXERS.names())
def test_mixer_joins_a_hybrid_by_name(name: str) -> None:
    torch.manual_seed(0)
    layers = sorted({"mamba", "attention", name})
    model = Hybrid(HybridConfig(vocab_size=64, d_model=32, n_heads=4, layers=layers + [name]))
    model = model.to(target_device()).eval()
    assert model.cfg.mixers == layers + [name]
    ids = torch.randint(0, 64, (2, 10), device=target_device())
    with torch.no_grad():
        torch.testing.assert_close(decode(model, ids), model(ids), rtol=1e-4, atol=1e-5)


def test_a_mixer_takes_its_own_knobs_in_a_hybrid() -> None:
    cfg = HybridConfig(vocab_size=64, d_model=32, layers=["mamba", "toy_ema"],
                       mixer_args={"toy_ema": {"decay_span": 4.0}})
    assert Hybrid(cfg).layers[1].token_mixer.decay_logit[0].item() == -4.0
    with pytest.raises(ValueError, match="model.mixer_args.toy_ema has \\['spans'\\], not knobs of mixer 'toy_ema'"):
        HybridConfig(layers=["toy_ema"], mixer_args={"toy_ema": {"spans": 1.0}})
    with pytest.raises(ValueError, match="model.mixer_args names mixers \\['attention'\\] that model.layers does not"):
        HybridConfig(layers=["toy_ema"], mixer_args={"attention": {"n_heads": 2}})
