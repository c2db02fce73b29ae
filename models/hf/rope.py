"""RoPE settings between a Hugging Face config.json and our ``model.pos`` (models/pos/base.py ``PosConfig``).

Both directions are exact: the frequencies our rule computes from the translated fields equal those
transformers computes from the original (tests/test_hf_io.py checks the logits). Reads both layouts
transformers has written: v5 ``rope_parameters`` (rope_theta inside) and v4 ``rope_theta`` +
``rope_scaling``.
"""

from __future__ import annotations

from typing import Any

from models.hf.errors import HFFormatError

TO_RULE = {"default": "rope", "linear": "linear", "dynamic": "dynamic_ntk", "yarn": "yarn", "llama3": "llama3",
           "longrope": "longrope"}
TO_HF = {rule: hf for hf, rule in TO_RULE.items()}
# rope-parameter keys copied one to one (our PosConfig uses transformers' names)
SHARED_KEYS = ("beta_fast", "beta_slow", "truncate", "mscale", "mscale_all_dim", "attention_factor",
               "low_freq_factor", "high_freq_factor", "short_factor", "long_factor")
RULE_KEYS = {"yarn": ("beta_fast", "beta_slow", "truncate", "mscale", "mscale_all_dim", "attention_factor"),
             "llama3": ("low_freq_factor", "high_freq_factor"),
             "longrope": ("short_factor", "long_factor", "attention_factor")}


def pos_from_hf(config: dict[str, Any], where: str) -> dict[str, Any]:
    """Our ``model.pos`` fields from a transformers config dict.

    ``original_max_position_embeddings`` defaults to the model's ``max_position_embeddings`` (as
    transformers does), so an extension rule set on top (``model.pos.rule=yarn model.pos.factor=4``)
    extends from the length the model was trained at.
    """
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if params and all(isinstance(v, dict) for v in params.values()):
        raise HFFormatError(f"{where}: rope_parameters per layer type {sorted(params)} are not supported "
                            "(one rule for every layer)")
    hf_type = params.get("rope_type", params.get("type", "default"))
    if hf_type not in TO_RULE:
        raise HFFormatError(f"{where}: rope_type={hf_type!r} has no model.pos.rule here; allowed: {sorted(TO_RULE)}")
    max_pos = config.get("max_position_embeddings")
    original = (params.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
                or max_pos)
    pos: dict[str, Any] = {
        "rule": TO_RULE[hf_type],
        "base": float(params.get("rope_theta", config.get("rope_theta", 10000.0))),
        "partial_rotary_factor": float(params.get("partial_rotary_factor",
                                                  config.get("partial_rotary_factor") or 1.0)),
        "original_max_position_embeddings": original,
        "max_position_embeddings": max_pos,
    }
    if params.get("factor") is not None:
        pos["factor"] = float(params["factor"])
    elif hf_type == "yarn" and max_pos and original:  # transformers: s = L_max / L_orig
        pos["factor"] = max_pos / original
    for key in SHARED_KEYS:
        if params.get(key) is not None:
            value = params[key]
            pos[key] = [float(x) for x in value] if isinstance(value, list) else value
    return pos


def pos_to_hf(pos: Any, head_dim: int) -> dict[str, Any]:
    """transformers v5 ``rope_parameters`` for our ``PosConfig`` (rope_theta inside).

    Static NTK has no transformers type; it is plain RoPE with base * s^(d/(d-2)), so it is written
    as ``default`` with that theta (identical frequencies).
    """
    if pos.rule in ("none", "alibi"):
        raise HFFormatError(f"model.pos.rule={pos.rule!r} has no transformers equivalent (Llama/Qwen2/Mistral "
                            "are rotary); allowed for export: rope, linear, ntk, dynamic_ntk, yarn, llama3, longrope")
    dim = int(head_dim * pos.partial_rotary_factor)
    out: dict[str, Any] = {"rope_type": TO_HF.get(pos.rule, "default"), "rope_theta": float(pos.base)}
    if pos.rule == "ntk":
        out["rope_theta"] = float(pos.base * pos.factor ** (dim / (dim - 2)))
    elif pos.rule != "rope" and not (pos.rule == "longrope" and pos.factor == 1.0):  # longrope: s = L_max/L_orig
        out["factor"] = float(pos.factor)
    if pos.rule in ("yarn", "llama3", "longrope"):
        out["original_max_position_embeddings"] = pos.original_max_position_embeddings
    for key in RULE_KEYS.get(pos.rule, ()):
        value = getattr(pos, key)
        if value is not None:
            out[key] = [float(x) for x in value] if isinstance(value, (list, tuple)) else value
    if pos.partial_rotary_factor != 1.0:
        out["partial_rotary_factor"] = float(pos.partial_rotary_factor)
    return out
