"""Every task family, found by importing each module of this package (a new task = a new file)."""

from __future__ import annotations

import importlib
import pkgutil

import tasks
from tasks.base import TASKS, Task

_INFRASTRUCTURE = {"base", "vocab", "dataset", "datamodule", "registry", "baselines", "common", "sampler"}


def load_all() -> dict[str, type[Task]]:
    for info in pkgutil.iter_modules(tasks.__path__):
        if info.name not in _INFRASTRUCTURE:
            importlib.import_module(f"tasks.{info.name}")
    return TASKS


load_all()
