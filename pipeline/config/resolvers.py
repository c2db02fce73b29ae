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


def sweep_jobs(threads: int | str) -> int:
    """``${sweep_jobs:${trainer.threads}}``: parallel sweep jobs so that jobs x threads per job = the usable
    cores (conf/hydra/launcher/parallel.yaml). ``auto`` threads are one per job in a sweep, unless
    ``OMP_NUM_THREADS`` says otherwise (pipeline/config/threads.py)."""
    import os

    from pipeline.config.threads import AUTO, check_threads, usable_cores

    check_threads(threads)
    env = os.environ.get("OMP_NUM_THREADS", "")
    per_job = threads if threads != AUTO else (int(env) if env.isdigit() and int(env) >= 1 else 1)
    return max(1, int(usable_cores() // per_job))


if not OmegaConf.has_resolver("sweep_jobs"):
    OmegaConf.register_new_resolver("sweep_jobs", sweep_jobs)
