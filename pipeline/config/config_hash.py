"""A run's identity: the hash of what it computes, not of where or how visibly it runs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys that say where or how visibly a run goes, not what it computes: outside the config hash.
UNHASHED = ("hydra", "paths", "run_dir", "resume", "logger", "evaluate")
UNHASHED_NESTED = {"data": ("num_workers", "cache_dir"),
                   "trainer": ("enable_progress_bar", "enable_model_summary", "log_every_n_steps", "threads",
                               "compile", "compile_backend")}


def hashed_config(cfg: DictConfig, drop: tuple[str, ...] = UNHASHED) -> dict[str, Any]:
    """The config a run's identity is made of: unresolved, minus the top-level ``drop`` keys (run-location and
    display keys by default) and the nested display / thread knobs."""
    container = OmegaConf.to_container(cfg, resolve=False)
    for volatile in drop:
        container.pop(volatile, None)
    for group, keys in UNHASHED_NESTED.items():
        if isinstance(container.get(group), dict):
            container[group] = {k: v for k, v in container[group].items() if k not in keys}
    return container


def config_hash(cfg: DictConfig) -> str:
    """Hash of ``hashed_config``, so equal experiments hash equal wherever they run."""
    return short_hash(hashed_config(cfg), 12)


def short_hash(obj: Any, n: int) -> str:
    """The first ``n`` hex digits of the md5 of ``obj`` as sorted JSON."""
    return hashlib.md5(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]
