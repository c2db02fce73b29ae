"""What a results row measured, as columns, built here and nowhere else; labels are derived from them.

A row's identity is the architecture (``model``, the ``pos_*`` knobs its positional rule reads, the
``attention_*`` patterns, the hybrid's ``model_layers``, the size), the decode-time cache policy
(``cache_policy`` and that policy's knobs as ``cache_*``, ``cache_scope`` on a hybrid) and the study arm
(``variant``, ``stage``, ``finetuned``, the ``lora_*`` adapter of a fine-tuned arm, ``train_len``).
The label columns ``pos``, ``attention`` and ``cache`` stay for older readers: each is the label its own
config writes (``PosConfig.name``, ``CacheConfig.label``), taken from the same object as the columns.

``identity_keys`` is what tables and figures group by, so two arms that differ in one knob are never
averaged together; ``labels`` names each group from its columns, adding only what tells apart groups
that would otherwise share a name. Rows written before these columns existed get them from
``legacy_identity``, the one place that reads a label string back (scripts/figures/results.py calls it).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Iterable
from typing import Any

# Identity columns with a name of their own; every ``pos_*``, ``attention_*``, ``cache_*``, ``lora_*``
# and ``model_*`` column is identity too, except measurements that happen to share a prefix.
IDENTITY_COLUMNS = ("model", "pos", "attention", "cache", "variant", "stage", "finetuned", "train_task", "train_len",
                    "train_curriculum", "prefill", "prefix_cache", "protocol", "lm_mode", "corpus", "start_token",
                    "tokenizer")
IDENTITY_PREFIXES = ("pos_", "attention_", "cache_", "lora_", "model_")
MEASURED = frozenset({"cache_bytes"})
# Shown as their own table column or a line style, not in a label (a fine-tuned arm's zero-shot rows).
STYLED = ("stage", "finetuned")
# Cache-config fields that are not a policy's knobs: its name, how the prompt is prefilled (rows carry
# ``prefill``), where learned gates live (a location), and a hybrid's scope (``cache_scope``).
CACHE_COMMON = ("policy", "prefill", "chunk_size", "gates_path", "scope")
MODEL_SIZE = ("d_model", "n_layers", "d_state", "window")  # window: sliding_window's state


def _knob_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def pos_columns(pos: Any) -> dict[str, Any]:
    """``pos`` (the rule's label), ``pos_rule``, ``pos_base`` and every knob the rule reads as ``pos_<knob>``."""
    if pos is None:
        return {"pos": None}
    out = {"pos": pos.name, "pos_rule": pos.rule, "pos_base": getattr(pos, "base", None)}
    for knob in rule_knobs(pos):
        out[f"pos_{knob}"] = _knob_value(getattr(pos, knob, None))
    return out


def rule_knobs(pos: Any) -> tuple[str, ...]:
    """The knobs of ``pos.rule``: its own ``knobs`` if it declares them, else the keyword-only parameters of
    the rule function (``factor``, ``original_max_position_embeddings``, ...; not the runtime ``seq_len``),
    else every field of its config but the rule's name and base."""
    own = getattr(pos, "knobs", None)
    if own is not None:
        return tuple(own() if callable(own) else own)
    fn = _rule_function(pos.rule)
    if inspect.isfunction(fn):
        params = inspect.signature(fn).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "seq_len")
    return tuple(f.name for f in dataclasses.fields(pos) if f.name not in ("rule", "base"))


def _rule_function(rule: str) -> Any:
    return rule_functions().get(rule)


def rule_functions() -> dict[str, Any]:
    """Every registered positional rule's frequency function by name (one module per rule in models/pos/)."""
    from models.pos import POS_RULES

    return {name: POS_RULES.get(name).frequencies for name in POS_RULES.names()}


def cache_columns(policy: Any) -> dict[str, Any]:
    """``cache_policy``, the policy's knobs as ``cache_<knob>`` and, on a hybrid, ``cache_scope``."""
    if policy is None:
        return {}
    out: dict[str, Any] = {"cache_policy": getattr(policy, "policy", None) or getattr(policy, "name", None)}
    for knob in policy_knobs(policy):
        out[f"cache_{knob}"] = _knob_value(getattr(policy, knob))
    if getattr(policy, "prefill", None) == "policy":  # chunks only exist when the prompt goes through the policy
        out["cache_chunk_size"] = policy.chunk_size
    if getattr(policy, "scope", None):
        out["cache_scope"] = policy.scope
    return out


def policy_knobs(policy: Any) -> tuple[str, ...]:
    own = getattr(policy, "knobs", None)
    if own is not None:  # declared by the policy; a location (gates_path) is never identity
        return tuple(k for k in (own() if callable(own) else own) if k not in CACHE_COMMON)
    return tuple(f.name for f in dataclasses.fields(policy) if f.name not in CACHE_COMMON)


def model_columns(model_cfg: Any) -> dict[str, Any]:
    """``model``, ``attention`` (the label), ``attention_train/eval``, ``model_layers`` (a hybrid), the size."""
    attn = getattr(model_cfg, "attention", None)
    layers = getattr(model_cfg, "schedule", None)  # a hybrid's: letters ("MMA"), or mixer names joined by commas
    label = None
    if attn is not None:
        label = attn.eval if attn.train == attn.eval else f"{attn.train}->{attn.eval}"
    if isinstance(layers, str):  # hybrid schedule
        label = f"{layers}:{label}" if label else layers
    out = {"model": model_cfg.family, **pos_columns(getattr(model_cfg, "pos", None)),
           "attention": label or model_cfg.family}
    if attn is not None:
        out.update(attention_train=attn.train, attention_eval=attn.eval)
    if isinstance(layers, str):
        out["model_layers"] = layers
    for name in MODEL_SIZE:
        value = getattr(model_cfg, name, None)
        if isinstance(value, int):
            out[f"model_{name}"] = value
    return out


def lora_columns(lora: Any) -> dict[str, Any]:
    """The adapter a fine-tuned arm trained (LoRA vs LoRA+ differ in ``lora_trainable``); none without LoRA."""
    if lora is None or not getattr(lora, "enabled", False):
        return {}
    return {"lora_r": lora.r, "lora_alpha": lora.alpha, "lora_trainable": "+".join(lora.trainable) or "none"}


def run_identity(model_cfg: Any, policy: Any, lora: Any = None) -> dict[str, Any]:
    """Every identity column of a run's rows but the stage and arm names its caller knows."""
    return {**model_columns(model_cfg), **cache_columns(policy), **lora_columns(lora)}


def is_identity(column: str) -> bool:
    return column in IDENTITY_COLUMNS or (column.startswith(IDENTITY_PREFIXES) and column not in MEASURED)


def identity_keys(columns: Iterable[str]) -> list[str]:
    """The identity columns among ``columns``: named ones in their order, then prefixed ones sorted."""
    cols = set(columns)
    named = [c for c in IDENTITY_COLUMNS if c in cols]
    return named + sorted(c for c in cols - set(IDENTITY_COLUMNS) if is_identity(c))


def present(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return str(value) not in ("", "nan", "None", "<NA>")


def key_value(value: Any) -> str:
    """A hashable, NaN-safe form of a cell (lists of longrope factors included) for grouping."""
    if not present(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def failure_identity(cfg: Any) -> dict[str, Any]:
    """What can be read of a config that failed (error rows): the ``pos`` and ``cache`` identity columns of
    the parts that still validate, else the bare rule and policy names."""
    from omegaconf import OmegaConf

    from models.caches import policy_knobs as split_cache_node
    from models.pos.base import PosConfig
    from pipeline.config.schema import to_dataclass

    def part(cls: type, key: str) -> Any:
        try:
            return to_dataclass(cls, OmegaConf.select(cfg, key, default=None), key)
        except Exception:  # the failure may be this very node
            return None

    def cache_part() -> Any:  # the policy's own config class, as pipeline/config/resolve.py builds it
        try:
            cls, knobs = split_cache_node(OmegaConf.to_container(OmegaConf.select(cfg, "cache"), resolve=True))
            return to_dataclass(cls, knobs, "cache")
        except Exception:  # the failure may be this very node
            return None

    pos, policy = part(PosConfig, "model.pos"), cache_part()
    def select(key: str) -> Any:
        try:
            return OmegaConf.select(cfg, key, default=None)
        except Exception:  # an interpolation that cannot resolve is part of what failed
            return None

    rule, factor = select("model.pos.rule"), select("model.pos.factor")
    out = {"pos_rule": rule, "cache_policy": select("cache.policy")}
    out["pos"] = None if rule is None else rule if factor in (None, 1, 1.0) else f"{rule}x{factor:g}"
    if pos is not None and select("model.pos") is not None:
        out.update(pos_columns(pos))
    if policy is not None and out["cache_policy"] is not None:
        out.update(cache_columns(policy))
    return out
