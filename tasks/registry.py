"""Every task family, registered by name (``task.name``) and found by importing each module of ``tasks/``.

A family is one module that decorates its ``Task`` dataclass with ``@register`` (plus, where it has
knobs, ``conf/task/<name>.yaml``). Families that set ``suite_rank`` join the synthetic suite (the
default components of ``task=mix`` and the tasks of ``eval=ruler``) with no other edit.
"""

from __future__ import annotations

from registries import Registry

# modules of tasks/ that hold infrastructure, not families
INFRASTRUCTURE = ("base", "vocab", "dataset", "datamodule", "registry", "baselines", "common", "sampler",
                  "curriculum")
TASKS: Registry[type] = Registry("task", "task.name", package="tasks", skip=INFRASTRUCTURE)
register = TASKS.register()  # @register on a Task subclass: registered under its ``name``


def suite_families() -> list[str]:
    """The synthetic suite's families in ``suite_rank`` order (the order a default mix draws its rows in)."""
    ranked = [(cls.suite_rank, name) for name, cls in TASKS.items() if getattr(cls, "suite_rank", None) is not None]
    return [name for _, name in sorted(ranked)]
