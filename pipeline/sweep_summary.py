"""A Hydra callback: at the end of a multirun, one summary table of every job's rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.rows import read_rows
from pipeline.summary import print_summary


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        rows = [row for path in sorted(sweep.rglob("results.jsonl")) for row in read_rows(path)]
        if rows:
            print_summary(rows, title=f"sweep {sweep}: {len(rows)} rows")
