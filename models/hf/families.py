"""Hugging Face architectures and our families: config.json fields and tensor names, both ways.

Llama, Mistral and Qwen2 are our ``transformer`` (same block: pre-RMSNorm, GQA attention with RoPE,
SwiGLU; Qwen2 adds q/k/v biases, Mistral may add a sliding window); transformers'
``MambaForCausalLM`` is our ``mamba`` and ``Mamba2ForCausalLM`` our ``mamba2`` (the mixers' parameter names
are the reference's in both).
Our tensor names differ from transformers' only by a prefix and two renames.
"""

from __future__ import annotations

import math
from typing import Any

from models.hf.errors import HFFormatError
from models.hf.rope import pos_from_hf, pos_to_hf

# config.json "architectures" entry -> model_type, our family
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", "transformer"),
    "MistralForCausalLM": ("mistral", "transformer"),
    "Qwen2ForCausalLM": ("qwen2", "transformer"),
    "MambaForCausalLM": ("mamba", "mamba"),
    "Mamba2ForCausalLM": ("mamba2", "mamba2"),
}
MODEL_TYPES = {model_type: arch for arch, (model_type, _) in ARCHITECTURES.items()}
# transformers' defaults when config.json omits tie_word_embeddings
TIE_DEFAULT = {"llama": False, "mistral": False, "qwen2": False, "mamba": True, "mamba2": False}


def architecture_of(config: dict[str, Any], where: str) -> str:
    archs = config.get("architectures") or []
    known = [a for a in archs if a in ARCHITECTURES]
    if known:
        return known[0]
    if config.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[config["model_type"]]
    raise HFFormatError(f"{where}: architectures={archs}, model_type={config.get('model_type')!r} is not "
                        f"importable; allowed: {sorted(ARCHITECTURES)}")


def _require(config: dict[str, Any], key: str, where: str) -> int:
    """A size config.json must give: a positive integer."""
    value = config.get(key)
    if value is None:
        raise HFFormatError(f"{where}: config.json has no {key!r}")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise HFFormatError(f"{where}: config.json has {key}={value!r}; allowed: a positive integer")
    return value


def _silu(config: dict[str, Any], where: str, key: str = "hidden_act") -> None:
    act = config.get(key, "silu")
    if act not in ("silu", "swish"):
        raise HFFormatError(f"{where}: {key}={act!r}; our blocks use SiLU (allowed: 'silu')")


def model_fields(config: dict[str, Any], where: str) -> dict[str, Any]:
    """Our ``model`` config fields (family included) for a transformers config dict; a value of the wrong
    type (``rms_norm_eps: "e"``, ``rope_parameters: "x"``) is an HFFormatError naming the directory."""
    try:
        return _model_fields(config, where)
    except HFFormatError:
        raise
    except (ValueError, TypeError, AttributeError) as err:
        raise HFFormatError(f"{where}: config.json has a value of the wrong type "
                            f"({type(err).__name__}: {err})") from None


def _model_fields(config: dict[str, Any], where: str) -> dict[str, Any]:
    arch = architecture_of(config, where)
    model_type, family = ARCHITECTURES[arch]
    tie = bool(config.get("tie_word_embeddings", TIE_DEFAULT[model_type]))
    if family == "mamba":
        return _mamba_fields(config, where, tie)
    if family == "mamba2":
        return _mamba2_fields(config, where, tie)
    return _transformer_fields(config, where, model_type, tie)


def _transformer_fields(c: dict[str, Any], where: str, model_type: str, tie: bool) -> dict[str, Any]:
    _silu(c, where)
    hidden, heads = _require(c, "hidden_size", where), _require(c, "num_attention_heads", where)
    head_dim = c.get("head_dim") or hidden // heads
    if head_dim * heads != hidden:
        raise HFFormatError(f"{where}: head_dim={head_dim} x num_attention_heads={heads} != hidden_size={hidden}; "
                            "our attention needs head_dim = hidden_size / num_attention_heads")
    if model_type in ("llama", "mistral"):
        for key in ("attention_bias", "mlp_bias"):
            if c.get(key):
                raise HFFormatError(f"{where}: {key}=true is not supported (o_proj / MLP biases); allowed: false")
    fields: dict[str, Any] = {
        "family": "transformer", "vocab_size": _require(c, "vocab_size", where), "d_model": hidden,
        "n_layers": _require(c, "num_hidden_layers", where), "n_heads": heads,
        "n_kv_heads": c.get("num_key_value_heads") or heads,
        "mlp_hidden": _require(c, "intermediate_size", where), "tie_embeddings": tie,
        "norm_eps": float(c.get("rms_norm_eps", 1e-6)), "qkv_bias": model_type == "qwen2",
        "pos": pos_from_hf(c, where),
    }
    if c.get("max_position_embeddings"):
        fields["max_seq_len"] = int(c["max_position_embeddings"])
    if model_type == "qwen2":
        layer_types = c.get("layer_types") or []
        if c.get("use_sliding_window") or any(t != "full_attention" for t in layer_types):
            raise HFFormatError(f"{where}: Qwen2 with use_sliding_window=true (per-layer windows) is not supported")
    window = c.get("sliding_window") if model_type == "mistral" else None
    if window is not None and window < fields.get("max_seq_len", math.inf):
        # Mistral's window (kv > q - W) is our sink_window pattern with no sinks
        fields["attention"] = {"train": "sink_window", "eval": "sink_window", "sink": 0, "window": int(window)}
    return fields


def _mamba_fields(c: dict[str, Any], where: str, tie: bool) -> dict[str, Any]:
    _silu(c, where)
    hidden = _require(c, "hidden_size", where)
    expand = int(c.get("expand", 2))
    if c.get("intermediate_size") not in (None, expand * hidden):
        raise HFFormatError(f"{where}: intermediate_size={c['intermediate_size']} != expand x hidden_size = "
                            f"{expand * hidden}")
    rank = c.get("time_step_rank", "auto")
    return {
        "family": "mamba", "vocab_size": _require(c, "vocab_size", where), "d_model": hidden,
        "n_layers": _require(c, "num_hidden_layers", where), "d_state": int(c.get("state_size", 16)),
        "d_conv": int(c.get("conv_kernel", 4)), "expand": expand,
        "dt_rank": math.ceil(hidden / 16) if rank == "auto" else int(rank),
        "dt_min": float(c.get("time_step_min", 0.001)), "dt_max": float(c.get("time_step_max", 0.1)),
        "dt_init_floor": float(c.get("time_step_floor", 1e-4)), "conv_bias": bool(c.get("use_conv_bias", True)),
        "bias": bool(c.get("use_bias", False)), "tie_embeddings": tie,
        "norm_eps": float(c.get("layer_norm_epsilon", 1e-5)),
    }


def _mamba2_fields(c: dict[str, Any], where: str, tie: bool) -> dict[str, Any]:
    _silu(c, where)
    hidden, expand = _require(c, "hidden_size", where), int(c.get("expand", 2))
    heads, head_dim = _require(c, "num_heads", where), _require(c, "head_dim", where)
    if heads * head_dim != expand * hidden:
        raise HFFormatError(f"{where}: num_heads={heads} x head_dim={head_dim} != expand x hidden_size = "
                            f"{expand * hidden}; our mamba2 has n_heads = expand * d_model / headdim")
    # transformers writes inf into config.json as {"__float__": "Infinity"}
    limit = tuple(float(x["__float__"] if isinstance(x, dict) else x)
                  for x in c.get("time_step_limit", (0.0, math.inf)))
    if limit != (0.0, math.inf):
        raise HFFormatError(f"{where}: time_step_limit={list(limit)} clamps dt; allowed: [0.0, inf] (no clamp)")
    return {
        "family": "mamba2", "vocab_size": _require(c, "vocab_size", where), "d_model": hidden,
        "n_layers": _require(c, "num_hidden_layers", where), "d_state": int(c.get("state_size", 128)),
        "d_conv": int(c.get("conv_kernel", 4)), "expand": expand, "headdim": int(head_dim),
        "ngroups": int(c.get("n_groups", 8)), "dt_min": float(c.get("time_step_min", 0.001)),
        "dt_max": float(c.get("time_step_max", 0.1)), "dt_init_floor": float(c.get("time_step_floor", 1e-4)),
        "conv_bias": bool(c.get("use_conv_bias", True)), "bias": bool(c.get("use_bias", False)),
        "tie_embeddings": tie, "norm_eps": float(c.get("layer_norm_epsilon", 1e-5)),
    }


def hf_config(cfg: Any, dtype: str) -> dict[str, Any]:
    """config.json for one of our model configs (transformer -> Llama / Qwen2 / Mistral, mamba -> Mamba,
    mamba2 -> Mamba2)."""
    if cfg.family == "mamba2":
        body = {
            "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "num_heads": cfg.n_heads, "head_dim": cfg.headdim, "expand": cfg.expand,
            "state_size": cfg.d_state, "n_groups": cfg.ngroups, "num_hidden_layers": cfg.n_layers,
            "conv_kernel": cfg.d_conv, "layer_norm_epsilon": cfg.norm_eps, "time_step_min": cfg.dt_min,
            "time_step_max": cfg.dt_max, "time_step_floor": cfg.dt_init_floor,
            "use_bias": cfg.bias, "use_conv_bias": cfg.conv_bias, "hidden_act": "silu", "residual_in_fp32": True,
            "tie_word_embeddings": cfg.tie_embeddings, "chunk_size": cfg.chunk_size or 256,
        }  # time_step_limit left at transformers' default (0, inf): no clamp, as ours
    elif cfg.family == "mamba":
        body = {
            "architectures": ["MambaForCausalLM"], "model_type": "mamba", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "intermediate_size": cfg.expand * cfg.d_model, "state_size": cfg.d_state,
            "num_hidden_layers": cfg.n_layers, "layer_norm_epsilon": cfg.norm_eps, "expand": cfg.expand,
            "conv_kernel": cfg.d_conv, "time_step_rank": cfg.dt_rank, "time_step_min": cfg.dt_min,
            "time_step_max": cfg.dt_max, "time_step_floor": cfg.dt_init_floor, "use_bias": cfg.bias,
            "use_conv_bias": cfg.conv_bias, "hidden_act": "silu", "residual_in_fp32": True,
            "tie_word_embeddings": cfg.tie_embeddings, "use_mambapy": False,
        }
    elif cfg.family == "transformer":
        body = _transformer_config(cfg)
    else:
        raise HFFormatError(f"model.family={cfg.family!r} has no transformers architecture; allowed: transformer, "
                            "mamba, mamba2")
    return {**body, "dtype": dtype, "torch_dtype": dtype, "use_cache": True}


def _transformer_config(cfg: Any) -> dict[str, Any]:
    attn = cfg.attention
    window = None
    if attn.eval == "sink_window" and attn.sink == 0:
        window = attn.window  # no sinks: exactly Mistral's sliding window
    elif attn.eval != "full":
        raise HFFormatError(
            f"model.attention.eval={attn.eval!r} (sink={attn.sink}) has no transformers equivalent; export the "
            "dense model with model.attention.eval=full (cache policies such as sink_window and duo are applied "
            "at decode time, not stored in the weights)")
    model_type = "qwen2" if cfg.qkv_bias else "mistral" if window is not None else "llama"
    if cfg.qkv_bias and window is not None:
        raise HFFormatError("q/k/v biases with a sliding window match no transformers architecture (Qwen2 has "
                            "biases, Mistral the window)")
    rope = pos_to_hf(cfg.pos, cfg.head_dim)
    body = {
        "architectures": [MODEL_TYPES[model_type]], "model_type": model_type, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_hidden, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.pos.max_position_embeddings or cfg.max_seq_len,
        "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std,
        "rope_parameters": rope, "rope_theta": rope["rope_theta"],
    }
    if rope["rope_type"] != "default":  # transformers 4.x reads rope_scaling (5.x reads either)
        body["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if model_type == "llama":
        body.update(attention_bias=False, mlp_bias=False)
    elif model_type == "qwen2":
        body.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    else:
        body["sliding_window"] = window
    return body


def hf_name(family: str, name: str) -> str:
    """transformers' name of our tensor ``name``."""
    if name == "lm_head.weight":
        return name
    if family in ("mamba", "mamba2"):
        if name == "norm.weight":
            return "backbone.norm_f.weight"
        return "backbone." + name.replace("embed_tokens.", "embeddings.", 1)
    return "model." + name
