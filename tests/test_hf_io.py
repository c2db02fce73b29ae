"""Hugging Face import/export, checked against transformers (the independent reference).

Tiny random models are built with transformers and saved with ``save_pretrained``; imported here
they give transformers' logits (float32, 1e-5); exported back, transformers loads them and gives
ours; an imported transformer decodes through every cache policy; loading is strict.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

from models.caches import CacheConfig  # noqa: E402
from models.duo import save_gates  # noqa: E402
from models.hf import HFFormatError, load_model, model_fields_from, save_pretrained  # noqa: E402
from pipeline.config.resolve import build_model_config  # noqa: E402
from pipeline.train.hf_init import with_hf_model  # noqa: E402

transformers.logging.set_verbosity_error()
V, T = 96, 40
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


def hf_llama(**kw):
    args = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, rope_parameters=LLAMA3_ROPE,
                tie_word_embeddings=True)
    args.update(kw)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**args))


def hf_qwen2():
    cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # biases start at zero; make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


def hf_mistral():
    cfg = transformers.MistralConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
                                     sliding_window=12)  # < T: the window changes the logits
    return transformers.MistralForCausalLM(cfg)


def hf_mamba():
    cfg = transformers.MambaConfig(vocab_size=V, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                                   conv_kernel=4, use_mambapy=False)
    return transformers.MambaForCausalLM(cfg)


def hf_mamba2():
    # 2 groups of 4 heads; chunk 16 does not divide T = 40 (transformers pads the last chunk)
    cfg = transformers.Mamba2Config(vocab_size=V, hidden_size=32, num_heads=8, head_dim=8, expand=2, state_size=8,
                                    n_groups=2, num_hidden_layers=2, conv_kernel=4, chunk_size=16)
    return transformers.Mamba2ForCausalLM(cfg)


BUILDERS = {"llama": hf_llama, "qwen2": hf_qwen2, "mistral": hf_mistral, "mamba": hf_mamba, "mamba2": hf_mamba2}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Each family's tiny random model, saved by transformers."""
    out = {}
    for name, build in BUILDERS.items():
        torch.manual_seed(1)
        path = tmp_path_factory.mktemp(name)
        build().save_pretrained(path)
        out[name] = path
    return out


def reference_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model(ids).logits


def imported(path: Path, **overrides):
    fields = model_fields_from(path)
    fields.update(overrides)
    return load_model(build_model_config(fields), path).eval()


def ids(n: int = 2) -> torch.Tensor:
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", list(BUILDERS))
def test_import_gives_transformers_logits(saved, family):
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(imported(saved[family])(x), reference_logits(saved[family], x), rtol=0, atol=1e-5)


def test_import_translates_the_config(saved):
    llama = model_fields_from(saved["llama"])
    assert llama["pos"]["rule"] == "llama3" and llama["pos"]["factor"] == 8.0 and llama["n_kv_heads"] == 2
    assert llama["tie_embeddings"] and llama["dtype"] == "float32" and not llama["qkv_bias"]
    assert model_fields_from(saved["qwen2"])["qkv_bias"]
    assert model_fields_from(saved["mistral"])["attention"] == {"train": "sink_window", "eval": "sink_window",
                                                                "sink": 0, "window": 12}
    model = imported(saved["llama"])
    assert model.lm_head.weight is model.embed_tokens.weight  # tied, one parameter


@pytest.mark.parametrize("family", list(BUILDERS))
def test_export_reloads_in_transformers_with_equal_logits(saved, family, tmp_path):
    ours = imported(saved[family])
    save_pretrained(ours, tmp_path)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(reference_logits(tmp_path, x), ours(x), rtol=0, atol=1e-5)
    assert model_fields_from(tmp_path) == model_fields_from(saved[family])  # the config round-trips too


def test_yarn_on_an_imported_model_equals_transformers_yarn(saved, tmp_path):
    """model.pos.rule=yarn model.pos.factor=4 on an imported Llama == transformers' Llama with that rope."""
    from conftest import compose_config

    ov = [f"init_from=hf:{saved['llama']}", "model.pos.rule=yarn", "model.pos.factor=4"]
    cfg = with_hf_model(compose_config(ov, config_name="eval", run_dir=str(tmp_path)), ov)
    assert cfg.model.d_model == 32 and cfg.model.pos.rule == "yarn" and cfg.model.pos.factor == 4
    assert cfg.model.pos.original_max_position_embeddings == 16  # from the llama3 rope settings
    ours = load_model(build_model_config(cfg.model), saved["llama"]).eval()
    rope = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0, "original_max_position_embeddings": 16}
    torch.manual_seed(1)
    ref = hf_llama(rope_parameters=rope)
    ref.load_state_dict(transformers.AutoModelForCausalLM.from_pretrained(saved["llama"]).state_dict())
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref.eval()(x).logits, rtol=0, atol=1e-5)
    save_pretrained(ours, tmp_path / "out")  # and the extension goes back out as transformers' yarn
    rope_out = json.loads((tmp_path / "out" / "config.json").read_text())["rope_parameters"]
    assert rope_out["rope_type"] == "yarn" and rope_out["factor"] == 4.0
    torch.testing.assert_close(reference_logits(tmp_path / "out", x), ours(x).detach(), rtol=0, atol=1e-5)


def test_sharded_directory_equals_single_file(saved, tmp_path):
    torch.manual_seed(1)
    transformers.AutoModelForCausalLM.from_pretrained(saved["qwen2"]).save_pretrained(tmp_path,
                                                                                      max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    x = ids()
    with torch.no_grad():
        assert torch.equal(imported(tmp_path)(x), imported(saved["qwen2"])(x))


def test_bf16_loads_in_bf16_and_model_dtype_overrides(saved, tmp_path, monkeypatch):
    """A bf16 directory becomes a bf16 model with no float32 copy: the model is built on the meta device
    (its random init touches no memory) and allocated empty in bf16 before the stored tensors go in."""
    transformers.AutoModelForCausalLM.from_pretrained(saved["llama"], dtype=torch.bfloat16).save_pretrained(tmp_path)
    assert model_fields_from(tmp_path)["dtype"] == "bfloat16"
    initialised = []
    normal = torch.nn.init.normal_

    def spy(*args, **kwargs):
        initialised.append((args[0] if args else kwargs["tensor"]).device.type)
        return normal(*args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", spy)
    model = imported(tmp_path)
    assert initialised and set(initialised) == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    x = ids()
    with torch.no_grad():
        ref = reference_logits(tmp_path, x).float()
        torch.testing.assert_close(model(x).float(), ref, rtol=0, atol=0.05)
        as_fp32 = imported(tmp_path, dtype="float32")
        assert {p.dtype for p in as_fp32.parameters()} == {torch.float32}


def test_imported_transformer_decodes_through_every_cache_policy(saved, tmp_path):
    """Prefill + one token at a time through each policy: with a budget covering the context, each equals
    transformers' logits; with a tight budget each still decodes (finite, and not the full answer)."""
    model = imported(saved["llama"])
    x = ids(1)
    ref = reference_logits(saved["llama"], x)
    ones, mixed = str(tmp_path / "ones.pt"), str(tmp_path / "mixed.pt")
    save_gates(torch.ones(2, 2), ones)
    save_gates(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), mixed)
    covering = [CacheConfig(policy="full"), CacheConfig(policy="sink_window", sink=4, window=T),
                CacheConfig(policy="duo", gates_path=ones, threshold=0.5, sink=4, window=8),
                CacheConfig(policy="quest", budget=T, page_size=4, dense_layers=0, selection="kernel")]
    tight = [CacheConfig(policy="sink_window", sink=2, window=6),
             CacheConfig(policy="duo", gates_path=mixed, threshold=0.5, sink=2, window=6),
             CacheConfig(policy="quest", budget=8, page_size=4, dense_layers=0)]
    prompt = 20
    for policy in covering + tight:
        cache = model.new_cache(1, policy)
        with torch.no_grad():
            out = [model(x[:, :prompt], cache)] + [model(x[:, t : t + 1], cache) for t in range(prompt, T)]
        logits = torch.cat(out, dim=1)
        assert torch.isfinite(logits).all(), policy.label
        if policy in covering:
            torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5, msg=policy.label)
        else:
            assert not torch.allclose(logits[:, prompt:], ref[:, prompt:], atol=1e-3), policy.label


def test_mistral_window_decodes_exactly_through_a_sinkless_window_cache(saved):
    """Mistral's sliding window W at decode time: cache=sink_window with sink=0, window=W-1 (the query itself
    is the W-th key) and absolute positions, token by token."""
    model = imported(saved["mistral"])
    x = ids(1)
    cache = model.new_cache(1, CacheConfig(policy="sink_window", sink=0, window=11, positions="absolute"))
    with torch.no_grad():
        logits = torch.cat([model(x[:, t : t + 1], cache) for t in range(T)], dim=1)
    torch.testing.assert_close(logits, reference_logits(saved["mistral"], x), rtol=0, atol=1e-5)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(extra=torch.zeros(3)), r"not in the model: \['extra'\]"),
    (lambda s: s.pop("model.layers.1.mlp.up_proj.weight"), r"missing from .*model.layers.1.mlp.up_proj.weight"),
    (lambda s: s.update({"model.norm.weight": torch.ones(31)}), r"shape mismatch: \['model.norm.weight: \(31,\)"),
], ids=["extra", "missing", "misshaped"])
def test_import_is_strict_and_names_the_tensor(saved, tmp_path, edit, message):
    path = _rewrite(saved["qwen2"], tmp_path / "bad", edit)
    with pytest.raises(HFFormatError, match=message):
        imported(path)


def test_unsupported_directory_errors_are_clear(saved, tmp_path):
    with pytest.raises(HFFormatError, match="has no config.json"):
        model_fields_from(tmp_path)
    cfg = json.loads((saved["llama"] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"],
                                                      "model_type": "gpt2"}))
    with pytest.raises(HFFormatError, match="GPT2LMHeadModel"):
        model_fields_from(tmp_path)


def test_model_dtype_builds_in_that_dtype_and_rejects_unknown_names():
    from models.families.transformer import TransformerConfig
    from models.registry import build_model

    model = build_model(TransformerConfig(vocab_size=64, d_model=32, n_heads=4, dtype="bfloat16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # restored
    with pytest.raises(ValueError, match="model.dtype='fp8'"):
        TransformerConfig(dtype="fp8")


def test_a_stored_head_beside_tied_embeddings_must_equal_them(saved, tmp_path):
    def copy_head(state):
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()

    same = _rewrite(saved["llama"], tmp_path / "same", copy_head)
    imported(same)  # accepted: transformers ignores it too
    other = _rewrite(saved["llama"], tmp_path / "other", lambda s: s.update({"lm_head.weight": torch.zeros(V, 32)}))
    with pytest.raises(HFFormatError, match="lm_head.weight differs"):
        imported(other)


def test_export_refuses_what_transformers_cannot_express(saved, tmp_path):
    from models.families.hybrid import Hybrid, HybridConfig

    with pytest.raises(HFFormatError, match="model.family='hybrid'"):
        save_pretrained(Hybrid(HybridConfig(vocab_size=64, d_model=32)), tmp_path / "hybrid")
    model = imported(saved["llama"])
    model.cfg.attention.eval = "duo"
    with pytest.raises(HFFormatError, match="model.attention.eval='duo'"):
        save_pretrained(model, tmp_path / "duo")
    assert not (tmp_path / "duo").exists()  # nothing half-written


ROPE_RULES = {
    "rope": {}, "linear": {"factor": 2.0}, "ntk": {"factor": 2.0},
    "dynamic_ntk": {"factor": 2.0, "max_position_embeddings": 16},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {"factor": 4.0, "original_max_position_embeddings": 16},
    "longrope": {"original_max_position_embeddings": 16, "max_position_embeddings": 64,
                 "short_factor": [1.0, 1.0, 1.1, 1.2], "long_factor": [1.0, 1.5, 2.5, 4.0]},
}


@pytest.mark.parametrize("rule", list(ROPE_RULES))
def test_every_rope_rule_exports_to_transformers_with_equal_logits(rule, tmp_path):
    """Our rule -> transformers' rope_parameters (static NTK as plain RoPE with its raised base): same logits
    at T=40, past every rule's original length (dynamic and longrope switch to their long form)."""
    from models.families.transformer import TransformerConfig
    from models.pos.base import PosConfig
    from models.registry import build_model

    cfg = TransformerConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=48,
                            max_seq_len=64, init_std=0.2, pos=PosConfig(rule=rule, base=1000.0, **ROPE_RULES[rule]))
    ours = build_model(cfg).eval()
    save_pretrained(ours, tmp_path)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(reference_logits(tmp_path, x), ours(x), rtol=0, atol=1e-5)
    back = model_fields_from(tmp_path)["pos"]  # and back: the same rule (ntk reads as rope with its base)
    assert back["rule"] == ("rope" if rule == "ntk" else rule)


def test_v4_style_config_json_reads_like_v5(saved, tmp_path):
    """Hub configs written by transformers 4.x: rope_theta at the top, rope_scaling with "type" or "rope_type"."""
    cfg = json.loads((saved["llama"] / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = {**{k: v for k, v in rope.items() if k != "rope_type"}, "type": rope["rope_type"]}
    tmp_path.joinpath("config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").symlink_to(saved["llama"] / "model.safetensors")
    assert model_fields_from(tmp_path) == model_fields_from(saved["llama"])
