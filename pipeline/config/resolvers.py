"""OmegaConf resolvers used in conf/ (registered on import by train.py and eval.py)."""

from __future__ import annotations

from omegaconf import ListConfig, OmegaConf


def run_path(run_id: str | None, stamp: str, root: str = "outputs") -> str:
    """A named run has a stable directory (re-running its command resumes it); others a timestamp."""
    return f"{root}/runs/{run_id}" if run_id else f"{root}/{stamp}"


if not OmegaConf.has_resolver("run_path"):
    OmegaConf.register_new_resolver("run_path", run_path)


def times(base: int, factors: list[float] | float) -> ListConfig | int:
    """``${times:${task.train_len},[1,2,4,8]}``: lengths relative to the training length, so an
    evaluation grid follows whatever task (and minimum length) a run trains on."""
    if isinstance(factors, (int, float)):
        return int(round(float(base) * factors))
    return ListConfig([int(round(float(base) * f)) for f in factors])  # a node: OmegaConf.resolve keeps it


if not OmegaConf.has_resolver("times"):
    OmegaConf.register_new_resolver("times", times)


def task_suite() -> ListConfig:
    """``${task_suite:}``: the registered families of the synthetic suite (``eval=ruler``), so a new
    family joins it without an edit here."""
    from tasks.registry import suite_families

    return ListConfig(suite_families())


if not OmegaConf.has_resolver("task_suite"):
    OmegaConf.register_new_resolver("task_suite", task_suite)
