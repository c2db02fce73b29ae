"""RoPE rules: each rule against transformers' ROPE_INIT_FUNCTIONS, the anchors of REFERENCES.md §1,
RoPE's relative-position property, config validation, and every rule inside a Transformer."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from models.families.transformer import Transformer, TransformerConfig
from models.pos import POS_RULES
from models.pos.alibi import alibi_slopes
from models.pos.base import PosConfig, base_inv_freq, rope_frequencies
from models.pos.positional import Positional
from models.pos.yarn import yarn_correction_range

hf_rope = pytest.importorskip("transformers.modeling_rope_utils")
from transformers import LlamaConfig, logging  # noqa: E402

logging.set_verbosity_error()  # HF warns (not raises) on e.g. factor vs max_position ratios



pytestmark = pytest.mark.usefixtures("one_thread")


# The rules shipped in models/pos/ (test plugins add their own; tests/test_model_contracts.py covers every rule).
BUILTIN = {name: r for name, r in POS_RULES.items() if r.frequencies.__module__.startswith("models.pos.")}
RULES = sorted(BUILTIN)
NON_ROTARY = {name for name, r in BUILTIN.items() if not r.rotary}
LENGTH_DEPENDENT = {name for name, r in BUILTIN.items() if r.length_dependent}
ROTARY = sorted(set(RULES) - NON_ROTARY)
HF_TYPE = {"linear": "linear", "dynamic_ntk": "dynamic", "yarn": "yarn", "llama3": "llama3",
           "longrope": "longrope"}


def ours(cfg: PosConfig, head_dim: int, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """The path models/pos/positional.py takes: rope_frequencies(rule, head_dim, base, **params)."""
    params = cfg.params()
    if seq_len is not None:
        params["seq_len"] = seq_len
    return rope_frequencies(cfg.rule, head_dim, cfg.base, **params)


def hf(cfg: PosConfig, head_dim: int, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """The same PosConfig translated to a v5 LlamaConfig.rope_parameters and run through HF."""
    params: dict = {"rope_type": HF_TYPE[cfg.rule], "rope_theta": cfg.base,
                    "partial_rotary_factor": cfg.partial_rotary_factor}
    if cfg.rule != "longrope" or cfg.factor != 1.0:  # longrope without factor: s = L_max / L_orig
        params["factor"] = cfg.factor
    if cfg.original_max_position_embeddings is not None:
        params["original_max_position_embeddings"] = cfg.original_max_position_embeddings
    if cfg.rule == "yarn":
        params.update(beta_fast=cfg.beta_fast, beta_slow=cfg.beta_slow, truncate=cfg.truncate)
        for key in ("mscale", "mscale_all_dim", "attention_factor"):
            if getattr(cfg, key) is not None:
                params[key] = getattr(cfg, key)
    if cfg.rule == "llama3":
        params.update(low_freq_factor=cfg.low_freq_factor, high_freq_factor=cfg.high_freq_factor)
    if cfg.rule == "longrope":
        params.update(short_factor=cfg.short_factor, long_factor=cfg.long_factor)
        if cfg.attention_factor is not None:
            params["attention_factor"] = cfg.attention_factor
    max_pos = cfg.max_position_embeddings or int((cfg.original_max_position_embeddings or 4096) * cfg.factor)
    config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                         max_position_embeddings=max_pos, rope_parameters=params)
    inv_freq, factor = hf_rope.ROPE_INIT_FUNCTIONS[params["rope_type"]](config, None, seq_len=seq_len)
    return inv_freq.double(), float(factor)


def ramp(n: int, lo: float, hi: float) -> list[float]:
    """Monotone per-pair factors, LongRoPE-shaped (fast pairs ~lo, slow pairs ~hi)."""
    return [lo + (hi - lo) * (i / max(n - 1, 1)) ** 2 for i in range(n)]


# (head_dim, base, factor, L_orig, partial_rotary_factor): several dims, bases, factors, lengths.
GRID = [
    (64, 1e4, 2.0, 2048, 1.0),
    (128, 1e4, 16.0, 4096, 1.0),
    (128, 5e5, 8.0, 8192, 1.0),
    (96, 1e6, 4.0, 4096, 1.0),
    (128, 1e4, 32.0, 4096, 0.5),
    (80, 5e5, 3.5, 2048, 1.0),
]
GRID_IDS = [f"hd{h}-b{b:g}-s{s:g}-L{L}-p{p:g}" for h, b, s, L, p in GRID]


def grid_configs(rule: str, head_dim: int, base: float, s: float, L: int, p: float) -> list[PosConfig]:
    """The PosConfig variants of ``rule`` exercised at one grid point."""
    common = dict(rule=rule, base=base, partial_rotary_factor=p)
    if rule == "linear":
        return [PosConfig(factor=s, **common)]
    if rule == "dynamic_ntk":
        return [PosConfig(factor=s, max_position_embeddings=L, **common)]
    if rule == "yarn":
        yarn = PosConfig(factor=s, original_max_position_embeddings=L, **common)
        return [yarn, replace(yarn, truncate=False), replace(yarn, beta_fast=16.0, beta_slow=2.0),
                replace(yarn, mscale=0.707, mscale_all_dim=1.0), replace(yarn, attention_factor=1.5)]
    if rule == "llama3":
        llama = PosConfig(factor=s, original_max_position_embeddings=L, **common)
        return [llama, replace(llama, low_freq_factor=2.0, high_freq_factor=8.0)]
    if rule == "longrope":
        half = int(head_dim * p) // 2
        lists = dict(short_factor=ramp(half, 1.0, 1.5), long_factor=ramp(half, 1.0, s * 1.2))
        return [PosConfig(max_position_embeddings=int(L * s), original_max_position_embeddings=L,
                          **lists, **common),
                PosConfig(factor=s, original_max_position_embeddings=L, **lists, **common),
                PosConfig(factor=s, original_max_position_embeddings=L, attention_factor=1.1, **lists,
                          **common)]
    raise AssertionError(rule)


def seq_lens(cfg: PosConfig) -> list[int | None]:
    """None, and lengths at, just over, and far over the length where a dynamic rule switches."""
    if cfg.rule not in LENGTH_DEPENDENT:
        return [None]
    L = cfg.max_position_embeddings if cfg.rule == "dynamic_ntk" else cfg.original_max_position_embeddings
    return [None, 1, L // 2, L, L + 1, 3 * L + 7]


@pytest.mark.parametrize("point", GRID, ids=GRID_IDS)
@pytest.mark.parametrize("rule", sorted(HF_TYPE))
def test_rule_matches_transformers(rule: str, point: tuple) -> None:
    head_dim = point[0]
    for cfg in grid_configs(rule, *point):
        for seq_len in seq_lens(cfg):
            inv_freq, factor = ours(cfg, head_dim, seq_len)
            ref_freq, ref_factor = hf(cfg, head_dim, seq_len)
            assert inv_freq.dtype == torch.float64
            assert inv_freq.shape == (int(head_dim * cfg.partial_rotary_factor) // 2,)
            torch.testing.assert_close(inv_freq, ref_freq, rtol=1e-6, atol=0.0,
                                       msg=lambda m, c=cfg, n=seq_len: f"{c} seq_len={n}: {m}")
            assert factor == pytest.approx(ref_factor, rel=1e-6), (cfg, seq_len)


def test_rope_is_theta() -> None:
    inv_freq, factor = rope_frequencies("rope", 128, 5e5)
    expected = torch.tensor([5e5 ** (-2 * i / 128) for i in range(64)], dtype=torch.float64)
    torch.testing.assert_close(inv_freq, expected, rtol=1e-12, atol=0.0)
    assert factor == 1.0


# --- anchors of REFERENCES.md §1 -------------------------------------------------------------


def test_anchor_dynamic_ntk_base() -> None:
    # s=2, L=16384, L_max=4096, dim 128 -> base' = 1e4 * 7^(128/126) ~ 72195.9
    inv_freq, _ = rope_frequencies("dynamic_ntk", 128, 1e4, factor=2.0, max_position_embeddings=4096,
                                   seq_len=16384)
    new_base = inv_freq[1].item() ** (-128 / 2)  # theta_1 = base'^(-2/dim)
    assert new_base == pytest.approx(72195.9, abs=0.05)


def test_anchor_yarn_range_and_factor() -> None:
    assert yarn_correction_range(128, 1e4, 4096, 32.0, 1.0, truncate=True) == (20, 46)
    inv_freq, factor = rope_frequencies("yarn", 128, 1e4, factor=16.0, original_max_position_embeddings=4096)
    assert factor == pytest.approx(1.277259, abs=1e-6)
    theta = base_inv_freq(128, 1e4)
    torch.testing.assert_close(inv_freq[:21], theta[:21])  # fast pairs keep their frequency
    torch.testing.assert_close(inv_freq[46:], theta[46:] / 16)  # slow pairs fully interpolated
    assert ((inv_freq[21:46] < theta[21:46]) & (inv_freq[21:46] > theta[21:46] / 16)).all()


def test_anchor_llama3_bands() -> None:
    inv_freq, factor = rope_frequencies("llama3", 128, 5e5, factor=8.0, original_max_position_embeddings=8192,
                                        low_freq_factor=1.0, high_freq_factor=4.0)
    theta = base_inv_freq(128, 5e5)
    kept = torch.isclose(inv_freq, theta, rtol=1e-12, atol=0)
    divided = torch.isclose(inv_freq, theta / 8, rtol=1e-12, atol=0)
    assert (kept.sum().item(), divided.sum().item(), (~kept & ~divided).sum().item()) == (29, 29, 6)
    assert factor == 1.0


def test_anchor_longrope_factor() -> None:
    cfg = PosConfig(rule="longrope", original_max_position_embeddings=4096, max_position_embeddings=131072,
                    short_factor=[1.0] * 64, long_factor=[4.0] * 64)
    assert ours(cfg, 128)[1] == pytest.approx(1.190238, abs=1e-6)
    by_factor = replace(cfg, max_position_embeddings=None, factor=32.0)
    assert ours(by_factor, 128)[1] == pytest.approx(1.190238, abs=1e-6)


def test_ntk_interpolates_slowest_pair_exactly() -> None:
    # The dim/(dim-2) exponent is chosen so the slowest pair becomes theta/s and the fastest is untouched.
    inv_freq, _ = rope_frequencies("ntk", 128, 1e4, factor=8.0)
    theta = base_inv_freq(128, 1e4)
    assert inv_freq[0].item() == theta[0].item()
    assert inv_freq[-1].item() == pytest.approx(theta[-1].item() / 8, rel=1e-12)
    torch.testing.assert_close(inv_freq, base_inv_freq(128, 1e4 * 8.0 ** (128 / 126)), rtol=1e-12, atol=0.0)


# --- length-dependent rules switch at the original length and back --------------------------------


def test_dynamic_ntk_switches_at_and_back_under_original_length() -> None:
    rope = base_inv_freq(64, 1e4)
    call = dict(factor=4.0, max_position_embeddings=512)
    for seq_len in (None, 1, 100, 512):
        torch.testing.assert_close(rope_frequencies("dynamic_ntk", 64, 1e4, **call, seq_len=seq_len)[0], rope,
                                   rtol=0, atol=0)
    longer = rope_frequencies("dynamic_ntk", 64, 1e4, **call, seq_len=513)[0]
    assert (longer[1:] < rope[1:]).all()  # past L_max every pair but the fastest slows down
    assert (rope_frequencies("dynamic_ntk", 64, 1e4, **call, seq_len=2048)[0][1:] < longer[1:]).all()


def test_length_dependent_rules_switch_through_positional() -> None:
    L = 16
    dyn = PosConfig(rule="dynamic_ntk", factor=4.0, max_position_embeddings=L)
    lng = PosConfig(rule="longrope", original_max_position_embeddings=L, max_position_embeddings=4 * L,
                    short_factor=[1.0] * 4, long_factor=[1.0, 2.0, 3.0, 4.0])
    dyn, lng, rope = (Positional(c, head_dim=8, n_heads=2) for c in (dyn, lng, PosConfig(rule="rope")))
    pos = torch.arange(L)
    for seq_len in (L, 3 * L, L, 5):  # at, over, back at, and under the original length
        cos_r, sin_r = rope.cos_sin(pos, seq_len)
        over = seq_len > L
        cos_d, sin_d = dyn.cos_sin(pos, seq_len)
        assert torch.equal(cos_d, cos_r) != over and torch.equal(sin_d, sin_r) != over
        cos_l, sin_l = lng.cos_sin(pos, seq_len)
        factor = math.sqrt(1 + math.log(4) / math.log(L))
        # Short factors are all 1, so under L_orig longrope is rope times its attention factor.
        assert torch.allclose(cos_l, cos_r * factor, atol=1e-6) != over
        assert torch.allclose(sin_l, sin_r * factor, atol=1e-6) != over


# --- ALiBi -------------------------------------------------------------------------------------


def test_alibi_slopes_power_of_two() -> None:
    expected = torch.tensor([2.0 ** -(i + 1) for i in range(8)])  # 2^-1 .. 2^-8 (Press et al.)
    torch.testing.assert_close(alibi_slopes(8), expected)
    torch.testing.assert_close(alibi_slopes(16), torch.tensor([2.0 ** -(0.5 * (i + 1)) for i in range(16)]))


def test_alibi_slopes_non_power_of_two() -> None:
    # n heads: the slopes for the largest power of 2 below n, then every other slope of 2x that count.
    six = [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(six))
    twelve = [2.0 ** -(i + 1) for i in range(8)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(twelve))


# --- no-op settings equal RoPE ------------------------------------------------------------------

NO_OP = {
    "linear": PosConfig(rule="linear", factor=1.0),
    "ntk": PosConfig(rule="ntk", factor=1.0),
    "dynamic_ntk": PosConfig(rule="dynamic_ntk", factor=1.0, max_position_embeddings=64),
    "yarn": PosConfig(rule="yarn", factor=1.0, original_max_position_embeddings=4096),
    "llama3": PosConfig(rule="llama3", factor=1.0, original_max_position_embeddings=8192),
    "longrope": PosConfig(rule="longrope", original_max_position_embeddings=4096,
                          short_factor=[1.0] * 32, long_factor=[1.0] * 32),
}


@pytest.mark.parametrize("rule", sorted(NO_OP))
def test_factor_one_equals_rope(rule: str) -> None:
    rope = base_inv_freq(64, 1e4)
    # dynamic_ntk's bracket is s*L'/L_max - (s-1) = L'/L_max at s=1: it still stretches past L_max.
    for seq_len in (None, 64) if rule == "dynamic_ntk" else (None, 100_000):
        inv_freq, factor = ours(NO_OP[rule], 64, seq_len)
        torch.testing.assert_close(inv_freq, rope, rtol=1e-12, atol=0.0)
        assert factor == 1.0


# --- RoPE's relative-position property ------------------------------------------------------------

EXTENDED = {
    "rope": PosConfig(rule="rope"),
    "linear": PosConfig(rule="linear", factor=4.0),
    "ntk": PosConfig(rule="ntk", factor=4.0),
    "dynamic_ntk": PosConfig(rule="dynamic_ntk", factor=4.0, max_position_embeddings=12),
    "yarn": PosConfig(rule="yarn", factor=4.0, original_max_position_embeddings=12),
    "llama3": PosConfig(rule="llama3", factor=4.0, original_max_position_embeddings=12),
    "longrope": PosConfig(rule="longrope", original_max_position_embeddings=12, max_position_embeddings=48,
                          short_factor=ramp(8, 1.0, 1.2), long_factor=ramp(8, 1.0, 5.0)),
    "none": PosConfig(rule="none"),
    "alibi": PosConfig(rule="alibi"),
}
assert set(EXTENDED) == set(RULES), "every rule is exercised by the model tests below"


@pytest.mark.parametrize("rule", ROTARY)
def test_score_depends_only_on_position_difference(rule: str) -> None:
    pos = Positional(EXTENDED[rule], head_dim=16, n_heads=1)
    q, k = torch.randn(2, 1, 1, 1, 16, dtype=torch.float64).unbind(0)  # (B, H, t, D) each
    seq_len = 100  # past every original length in EXTENDED, so length-dependent rules are extended

    def score(m: int, n: int) -> float:
        qm = pos.rotate(q, torch.tensor([m]), seq_len)
        kn = pos.rotate(k, torch.tensor([n]), seq_len)
        return (qm * kn).sum().item()

    for m, n in ((5, 2), (40, 3), (17, 17)):
        for shift in (1, 13, 50):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), rel=1e-5, abs=1e-6)
    assert score(3, 0) != pytest.approx(score(9, 0), rel=1e-3)  # and it does depend on the difference
    # The attention factor multiplies cos and sin, so at equal positions q.k scales by its square.
    factor = pos.cos_sin(torch.tensor([0]), seq_len)[0][0, 0].item()
    assert score(7, 7) == pytest.approx(factor**2 * (q * k).sum().item(), rel=1e-5)


# --- validation ---------------------------------------------------------------------------------

LISTS = dict(short_factor=[1.0] * 4, long_factor=[2.0] * 4)
L64 = dict(original_max_position_embeddings=64)
BAD = [
    (dict(rule="ropey"), "rule"),
    (dict(rule="linear", factor=0.5), "factor"),
    (dict(rule="dynamic_ntk", factor=2.0), "max_position_embeddings"),
    (dict(rule="dynamic_ntk", factor=2.0, max_position_embeddings=0), "max_position_embeddings"),
    (dict(rule="yarn", factor=4.0), "original_max_position_embeddings"),
    (dict(rule="yarn", factor=4.0, original_max_position_embeddings=64, beta_fast=1.0, beta_slow=32.0),
     "beta_fast"),
    (dict(rule="yarn", factor=4.0, original_max_position_embeddings=64, beta_slow=0.0), "beta_slow"),
    (dict(rule="yarn", factor=4.0, original_max_position_embeddings=64, mscale=1.0), "mscale_all_dim"),
    (dict(rule="yarn", factor=4.0, original_max_position_embeddings=64, mscale=-1.0, mscale_all_dim=1.0),
     "mscale"),
    (dict(rule="yarn", factor=4.0, original_max_position_embeddings=64, attention_factor=0.0),
     "attention_factor"),
    (dict(rule="llama3", factor=8.0), "original_max_position_embeddings"),
    (dict(rule="llama3", factor=8.0, original_max_position_embeddings=64, low_freq_factor=4.0,
          high_freq_factor=1.0), "low_freq_factor"),
    (dict(rule="llama3", factor=8.0, **L64, low_freq_factor=0.0), "low_freq_factor"),
    (dict(rule="longrope", **LISTS), "original_max_position_embeddings"),
    (dict(rule="longrope", original_max_position_embeddings=64, long_factor=[1.0] * 4), "short_factor"),
    (dict(rule="longrope", original_max_position_embeddings=64, short_factor=[1.0] * 4), "long_factor"),
    (dict(rule="longrope", **L64, short_factor=[1.0] * 4, long_factor=[1.0] * 3),
     "long_factor"),
    (dict(rule="longrope", **L64, short_factor=[1.0, 0.0], long_factor=[1.0] * 2),
     "short_factor"),
    (dict(rule="longrope", **L64, max_position_embeddings=256, factor=8.0, **LISTS),
     "factor"),
]


@pytest.mark.parametrize("kwargs,field", BAD, ids=[f"{k['rule']}-{f}" for k, f in BAD])
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"model\.pos\.{field}="):
        PosConfig(**kwargs)


def test_longrope_list_length_checked_against_head_dim() -> None:
    cfg = PosConfig(rule="longrope", original_max_position_embeddings=64, **LISTS)  # 4 pairs
    ours(cfg, head_dim=8)
    with pytest.raises(ValueError, match=r"model\.pos\.short_factor=.*length 4.* 8 factors"):
        ours(cfg, head_dim=16)
    with pytest.raises(ValueError, match=r"short_factor"):
        Transformer(TransformerConfig(d_model=64, n_heads=4, pos=cfg))  # head_dim 16 -> needs 8


def test_ntk_rules_need_more_than_one_pair() -> None:
    for rule, extra in (("ntk", {}), ("dynamic_ntk", {"max_position_embeddings": 8})):
        with pytest.raises(ValueError, match="rotary dim"):
            rope_frequencies(rule, 2, 1e4, factor=2.0, **extra)


# --- every rule inside a Transformer ---------------------------------------------------------------


def tiny_model(rule: str, pos: PosConfig | None = None) -> Transformer:
    cfg = TransformerConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256,
                            pos=pos or EXTENDED[rule])  # head_dim 16: 8 rotary pairs
    return Transformer(cfg).eval()


def decode_logits(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    cache = model.new_cache(ids.shape[0])
    return torch.cat([model(ids[:, t : t + 1], cache) for t in range(ids.shape[1])], dim=1)  # (B, T, V)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_transformer_forward_with_each_rule(rule: str) -> None:
    model = tiny_model(rule)
    ids = torch.randint(0, 64, (2, 20))  # past every original length in EXTENDED (12)
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (2, 20, 64) and torch.isfinite(logits).all()


@pytest.mark.parametrize("rule", sorted(set(RULES) - LENGTH_DEPENDENT))
def test_decode_equals_teacher_forced(rule: str) -> None:
    model = tiny_model(rule)
    ids = torch.randint(0, 64, (2, 20))  # past the original length, where the extensions differ from rope
    with torch.no_grad():
        torch.testing.assert_close(decode_logits(model, ids), model(ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rule", sorted(LENGTH_DEPENDENT))
def test_length_dependent_decode_equals_teacher_forced_within_original_length(rule: str) -> None:
    # Past the original length teacher forcing uses one frequency set for every token while decode
    # grows it step by step (as in HF), so only the regime under it is token-for-token identical.
    model = tiny_model(rule)
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(decode_logits(model, ids), model(ids), rtol=1e-4, atol=1e-5)
