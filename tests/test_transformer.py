"""The transformer meets the model contract and matches the HF Llama reference."""

import pytest
import torch
from conftest import target_device

from models.caches import CacheConfig
from models.families.transformer import Transformer, TransformerConfig


def tiny(**kw) -> Transformer:
    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, **kw)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("kv", [4, 2, 1])
def test_shapes(kv):
    m = tiny(n_kv_heads=kv)
    assert m(torch.randint(0, 64, (3, 17))).shape == (3, 17, 64)


def test_causality_changing_token_t_never_changes_earlier_logits():
    m = tiny()
    x = torch.randint(0, 64, (2, 24))
    base = m(x)
    for t in (0, 7, 23):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % 64
        out = m(y)
        assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6)
        assert not torch.allclose(out[:, t:], base[:, t:], atol=1e-6)


@pytest.mark.parametrize("kv", [4, 1])
@pytest.mark.parametrize("prefill", [1, 9, 20])
def test_decode_through_full_cache_equals_teacher_forced(kv, prefill):
    m = tiny(n_kv_heads=kv).to(target_device())
    x = torch.randint(0, 64, (2, 20), device=target_device())
    full = m(x)
    cache = m.new_cache(2, CacheConfig("full"))
    outs = [m(x[:, :prefill], cache)]
    outs += [m(x[:, t : t + 1], cache) for t in range(prefill, 20)]
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-5)
    assert cache.seen == 20


def test_chunked_prefill_equals_one_shot():
    m = tiny()
    x = torch.randint(0, 64, (2, 30))
    cache = m.new_cache(2)
    chunks = [m(x[:, s : s + 8], cache) for s in range(0, 30, 8)]
    assert torch.allclose(torch.cat(chunks, 1), m(x), atol=1e-5)


def test_full_cache_bytes_are_exact():
    m = tiny(n_kv_heads=2)
    cache = m.new_cache(3)
    m(torch.randint(0, 64, (3, 11)), cache)
    # 2 layers x (k, v) x B=3 x Hkv=2 x T=11 x hd=8 x fp32
    assert cache.nbytes() == 2 * 2 * 3 * 2 * 11 * 8 * 4


def test_tied_embeddings_share_storage():
    m = tiny(tie_embeddings=True)
    assert m.lm_head.weight.data_ptr() == m.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize(
    "bad, field",
    [
        (dict(d_model=30, n_heads=4), "n_heads"),
        (dict(n_kv_heads=3), "n_kv_heads"),
        (dict(n_layers=0), "n_layers"),
        (dict(d_model=12, n_heads=4), "head dim"),
    ],
)
def test_bad_config_names_the_field(bad, field):
    args = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4)
    args.update(bad)
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**args)


def test_matches_hf_llama_reference():
    """Same weights in transformers' LlamaForCausalLM give the same logits (RoPE, GQA, RMSNorm, SwiGLU)."""
    transformers = pytest.importorskip("transformers")
    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=48,
                            norm_eps=1e-6)
    ours = Transformer(cfg).eval()
    hf_cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=256, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attention_bias=False, mlp_bias=False)
    hf_cfg._attn_implementation = "eager"
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    state = {k if k.startswith("lm_head") else "model." + k: v for k, v in ours.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)
    x = torch.randint(0, 64, (2, 40))
    with torch.no_grad():
        ref = hf(input_ids=x).logits
    assert torch.allclose(ours(x), ref, atol=1e-5)


def test_reserved_full_cache_equals_growing_cache_and_holds_the_reserved_bytes():
    m = tiny(n_kv_heads=2)
    x = torch.randint(0, 64, (2, 20))
    grow, fixed = m.new_cache(2), m.new_cache(2)
    fixed.reserve(20)
    a = [m(x[:, :7], grow)] + [m(x[:, t : t + 1], grow) for t in range(7, 20)]
    b = [m(x[:, :7], fixed)] + [m(x[:, t : t + 1], fixed) for t in range(7, 20)]
    assert torch.allclose(torch.cat(a, 1), torch.cat(b, 1), atol=1e-6)
    assert grow.nbytes() == fixed.nbytes() == 2 * 2 * 2 * 2 * 20 * 8 * 4
    over = m.new_cache(2)
    over.reserve(10)  # more tokens than reserved: falls back to growing
    out = [m(x[:, :7], over)] + [m(x[:, t : t + 1], over) for t in range(7, 20)]
    assert torch.allclose(torch.cat(out, 1), torch.cat(a, 1), atol=1e-6)
