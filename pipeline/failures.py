"""One failed job never stops or contaminates a sweep: it leaves an error row, then re-raises.

Hydra's basic launcher records the failure and runs the remaining jobs; submitit marks the job
failed. The row says which config failed and why, so ``scripts/collect.py`` lists it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config.schema import ConfigError
from pipeline.evaluation.evaluate import is_oom
from pipeline.results.identity import failure_identity
from pipeline.results.rows import append_row, make_row
from registries import PluginError

log = logging.getLogger(__name__)


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=None)
    except Exception:  # an interpolation that cannot resolve is part of what failed
        return None


def failure_row(cfg: DictConfig, err: BaseException) -> dict[str, Any]:
    return make_row(
        **failure_identity(cfg), run_id=_select(cfg, "run_id"), model=_select(cfg, "model.family"),
        attention=_select(cfg, "model.attention.eval"), cache=_select(cfg, "cache.policy"),
        task=_select(cfg, "task.name"), train_len=_select(cfg, "task.train_len"), seed=_select(cfg, "seed"),
        stage=_select(cfg, "stage"), status="oom" if is_oom(err) else "error",
        error=f"{type(err).__name__}: {err}"[:4000], traceback=traceback.format_exc()[-4000:])


def record_failures(main: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Decorate a @hydra.main function: on any exception append an error row, then re-raise."""

    @functools.wraps(main)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return main(cfg)
        except (ConfigError, PluginError) as err:  # bad input: a config value, a file or plugin handed in
            if single_run() and os.environ.get("HYDRA_FULL_ERROR") != "1":
                # A config error in a single run: the message alone, and no run directory left behind
                # (it holds nothing yet). Sweeps keep the error row, so collect.py lists the failed job.
                remove_empty_run_dir(_select(cfg, "run_dir"))
                print(f"config error: {err}", file=sys.stderr)
                sys.exit(2)
            return _record(cfg, err)
        except Exception as err:
            return _record(cfg, err)

    return wrapped


def _record(cfg: DictConfig, err: Exception) -> Any:
    run_dir = _select(cfg, "run_dir")
    if run_dir and not getattr(err, "foreign_run_dir", False):  # never into another run's rows
        append_row(Path(run_dir) / "results.jsonl", failure_row(cfg, err))
    log.error("job failed: %s", err)
    raise err


def single_run() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.RUN
    except Exception:  # called outside Hydra (tests): behave as a sweep job, which raises
        return False


def remove_empty_run_dir(run_dir: str | None) -> None:
    """Delete a run directory that holds only Hydra's bookkeeping (.hydra/, the job log)."""
    if not run_dir or not Path(run_dir).is_dir():
        return
    path = Path(run_dir)
    if all(p.name == ".hydra" or p.suffix == ".log" for p in path.iterdir()):
        shutil.rmtree(path, ignore_errors=True)
        if path.parent.resolve() == Path.cwd().resolve():
            return  # hydra.run.dir=NAME: the parent is where the user stands, never removed
        try:
            path.parent.rmdir()  # the date folder, when this was its only run
        except OSError:
            pass
