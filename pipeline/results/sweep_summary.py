"""A Hydra callback: at the end of a multirun, one summary table of every job's rows.

Hydra skips ``on_multirun_end`` when any job failed (the sweeper re-raises the first failure after
all jobs ran), which is exactly when a summary matters most; so the summary is also registered to
print at interpreter exit, once, with the failed jobs listed.
"""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console

from pipeline.results.rows import read_rows
from pipeline.results.summary import print_summary


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.sweep: Path | None = None
        self.failed: list[tuple[str, str]] = []  # (overrides, error) of jobs run in this process
        self.printed = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep = Path(config.hydra.sweep.dir)
        atexit.register(self.print)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value  # the exception; .return_value would re-raise it
            self.failed.append((" ".join(job_return.overrides or []), f"{type(err).__name__}: {err}"[:200]))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep = Path(config.hydra.sweep.dir)
        self.print()

    def print(self) -> None:
        if self.printed or self.sweep is None:
            return
        self.printed = True
        files = sorted(self.sweep.rglob("results.jsonl"))
        rows = [row for path in files for row in read_rows(path)]
        if rows:
            print_summary(rows, title=f"sweep {self.sweep}: {len(rows)} rows")
        console = Console()
        for overrides, err in self.failed:
            console.print(f"[red]failed job[/] {overrides or '(no overrides)'}: {err}")
        if self.failed:
            console.print(f"{len(self.failed)} job(s) failed; rows of every job are in {self.sweep}")
