"""Config nodes to typed dataclasses, with errors that name the field, the value and what is allowed.

Every section of a run's config (model, task, data, optim, eval, a stage's own section ...) becomes its
dataclass through ``OmegaConf.structured``: an unknown key or a wrong type is an error, then the
dataclass's ``__post_init__`` checks values. This module imports nothing of the project.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError


class ConfigError(ValueError):
    """A config value that cannot run; the message names field, value and what is allowed."""


def to_dataclass(cls: type, node: Any, prefix: str) -> Any:
    """Merge ``node`` into the schema of ``cls`` and instantiate it, with errors that name fields."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    node = dict(node or {})
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, node)
        return OmegaConf.to_object(merged)
    except ConfigKeyError as err:
        key = getattr(err, "key", None) or str(err).split("'")[1]
        allowed = sorted(f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"{prefix}.{key} is not a field of {prefix} ({cls.__name__}); allowed: {allowed}") from None
    except ValidationError as err:
        raise ConfigError(_wrong_type(cls, err, prefix)) from None
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _wrong_type(cls: type, err: ValidationError, prefix: str) -> str:
    key = getattr(err, "full_key", None) or "?"
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    top = str(key).split(".")[0]
    name = f"{prefix}.{key}" if prefix else str(key)
    return f"{name}={getattr(err, 'value', None)!r} has the wrong type; expected {types.get(top, '?')}"


def reraise_as_config_error(check: Any, *args: Any) -> Any:
    """``check(*args)``, its ValueError turned into a ConfigError (same message)."""
    try:
        return check(*args)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_finite(node: Any, prefix: str = "") -> None:
    """No NaN or infinity anywhere in the config (comparisons with NaN pass every bound check)."""
    if isinstance(node, DictConfig):
        for key in node:
            if prefix == "" and key == "hydra":
                continue
            try:
                value = node[key]
            except Exception:  # an interpolation only the running job can resolve (run_dir)
                continue
            check_finite(value, f"{prefix}{key}.")
    elif isinstance(node, (list, tuple)) or OmegaConf.is_list(node):
        for i, value in enumerate(node):
            check_finite(value, f"{prefix[:-1]}[{i}].")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{prefix[:-1]}={node} is not a finite number; allowed: finite values")
