"""``init_from=hf:PATH``: a local Hugging Face directory as the model of a run (train.py, eval.py, any stage).

The architecture comes from PATH/config.json (models/hf); the ``model.*`` settings you chose win
over it: keys given on the command line, and keys an experiment or variant set to something other
than conf/model/<family>.yaml's default. So ``model.pos.rule=yarn model.pos.factor=4`` extends an
imported Llama, while its sizes, vocabulary, norms and rope settings are read from the directory.
The resolved ``model`` node replaces the composed one, so checkpoints, rows and the config hash
describe the real model.

A directory handed in is bad input, not a failed run: a missing directory or config.json, a config
that cannot be translated, or stored tensors whose shapes differ from the model (compared on the meta
device, before any memory is allocated) raise ``HFConfigError``, which train.py / eval.py report as
one ``config error:`` line before a run directory exists.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from models.hf import HFFormatError, check_weights, load_model, model_fields_from
from pipeline.config.model_checks import build_model_config
from pipeline.config.schema import ConfigError

log = logging.getLogger(__name__)
PREFIX = "hf:"
CONF_MODEL = Path(__file__).resolve().parents[2] / "conf" / "model"


class HFConfigError(ConfigError, HFFormatError):
    """``init_from=hf:PATH`` names a directory that cannot be imported: a config error (no run starts)."""


def as_config_error(check: Any, *args: Any) -> Any:
    """``check(*args)``, an HFFormatError from it raised as an HFConfigError (same message)."""
    try:
        return check(*args)
    except HFConfigError:
        raise
    except HFFormatError as err:
        raise HFConfigError(str(err)) from None


def hf_path(init_from: Any) -> Path | None:
    """PATH of ``init_from=hf:PATH``, else None (a checkpoint of this project, or nothing)."""
    if not isinstance(init_from, str) or not init_from.startswith(PREFIX):
        return None
    path = Path(init_from[len(PREFIX):]).expanduser()
    if not path.is_dir():
        raise HFConfigError(f"init_from={init_from!r}: {str(path)!r} is not a directory (a local Hugging Face "
                            "model: config.json + safetensors; nothing is downloaded)")
    return path


def command_line_overrides() -> list[str]:
    """The job's command-line overrides when running under @hydra.main, else []."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def group_yaml(path: Path) -> dict[str, Any]:
    """A group yaml as Hydra composes it: its ``defaults`` (same-group names, or ``/group@key: option``) merged
    under its own keys (conf/model/transformer.yaml takes ``pos`` from conf/pos/)."""
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    merged = OmegaConf.create({})
    for item in node.pop("defaults", []):
        if item == "_self_":
            continue
        if isinstance(item, str):  # a sibling in the same group
            merged = OmegaConf.merge(merged, group_yaml(path.parent / f"{item}.yaml"))
            continue
        (target, option), = item.items()
        group, _, key = target.lstrip("/").partition("@")
        sub = group_yaml(path.parents[1] / group / f"{option}.yaml")
        merged = OmegaConf.merge(merged, {key or group: sub})
    return OmegaConf.to_container(OmegaConf.merge(merged, node), resolve=False)


def chosen_model_keys(model: dict[str, Any], overrides: list[str], task: str | None = None) -> set[str]:
    """Dotted keys under ``model`` that the user chose: overridden, or unlike the family's yaml default
    (a task recipe's width, conf/recipe/<task>.yaml, is the recipe's default, not a choice: the import wins)."""
    keys = {item.split("=", 1)[0].lstrip("+~") for item in overrides}
    chosen = {k[len("model."):] for k in keys if k.startswith("model.")}
    default_file = CONF_MODEL / f"{model.get('family')}.yaml"
    recipe_file = CONF_MODEL.parent / "recipe" / f"{task}.yaml"
    recipe = _leaves(OmegaConf.to_container(OmegaConf.load(recipe_file)).get("model", {})) if (
        task and recipe_file.is_file()) else {}
    if default_file.is_file():
        defaults = _leaves(group_yaml(default_file))
        for key, value in _leaves(model).items():
            default = defaults.get(key)
            if (not (isinstance(default, str) and "${" in default) and key in defaults and value != default
                    and not (key in recipe and value == recipe[key])):
                chosen.add(key)
    return chosen


def imported_model_node(cfg: DictConfig, path: Path, overrides: list[str]) -> dict[str, Any]:
    """The ``model`` node of an import: the directory's fields, under the user's chosen keys."""
    fields = model_fields_from(path)
    composed = OmegaConf.to_container(cfg.model, resolve=True)
    if composed.get("family") == fields["family"]:
        base, chosen = composed, chosen_model_keys(composed, overrides, cfg.task.get("name"))
    else:  # e.g. the default model=transformer with a Mamba directory: that family's defaults
        if any(k.split("=", 1)[0].lstrip("+~") == "model" for k in overrides):
            raise HFFormatError(f"init_from=hf:{path} holds a {fields['family']} model but model="
                                f"{composed.get('family')} was chosen; drop it or use model={fields['family']}")
        base = group_yaml(CONF_MODEL / f"{fields['family']}.yaml")
        chosen = set()
    node = OmegaConf.create(base)
    for key, value in _leaves(fields).items():
        if key not in chosen:
            OmegaConf.update(node, key, value, merge=False)
    return OmegaConf.to_container(node, resolve=False)


def fields_window(node: dict[str, Any]) -> int | None:
    """Mistral's sliding window, when the imported model has one."""
    attn = node.get("attention") or {}
    if attn.get("eval") == "sink_window" and attn.get("sink") == 0:
        return int(attn["window"])
    return None


def with_hf_model(cfg: DictConfig, overrides: list[str] | None = None) -> DictConfig:
    """``cfg`` with its model node resolved from ``init_from=hf:PATH``; unchanged for other runs."""
    path = hf_path(cfg.get("init_from"))
    if path is None:
        return cfg
    node = as_config_error(imported_model_node, cfg, path, command_line_overrides() if overrides is None else overrides)
    try:  # a value config.json gave that our model rejects: say where it came from
        build_model_config(node)
    except ConfigError as err:
        raise HFConfigError(f"init_from=hf:{path} (config.json, under your model.* overrides): {err}") from None
    window = fields_window(node)
    if window is not None:
        log.warning("hf:%s has a sliding window of %d tokens (model.attention sink_window, sink=0); decoding "
                    "keeps it with cache=sink_window cache.sink=0 cache.window=%d cache.positions=absolute",
                    path, window, window - 1)
    out = cfg.copy()
    OmegaConf.set_struct(out, False)
    out.model = node
    return out


def check_hf_weights(model_cfg: Any, init_from: Any) -> None:
    """For ``init_from=hf:PATH``: the stored tensors' names and shapes against the validated ``model_cfg``,
    from the safetensors headers and a meta-device model (no memory); nothing for other runs."""
    path = hf_path(init_from)
    if path is not None:
        as_config_error(check_weights, model_cfg, path)


def load_hf_model(model_cfg: Any, init_from: str, allow_nonfinite: bool = False) -> torch.nn.Module:
    """Our model of the validated ``model_cfg`` holding the weights of ``init_from=hf:PATH``."""
    return load_model(model_cfg, hf_path(init_from), allow_nonfinite)
