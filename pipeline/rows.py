"""Results rows: one JSON line per run x task x eval length x depth x cache policy.

Each row is written and flushed as one line (fsync'd), so a crash loses at most the row being
measured. Later issues add columns; the ones in ``ROW_FIELDS`` are never renamed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

ROW_FIELDS = (
    "run_id", "model", "pos", "attention", "cache", "task", "train_len", "eval_len", "depth", "seed",
    "n_examples", "accuracy", "token_accuracy", "peak_mem_bytes", "cache_bytes", "tokens_per_s",
    "status", "error", "config_hash",
)
STATUSES = ("ok", "oom", "error")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _clean(value.item())
    return value


def make_row(**fields: Any) -> dict[str, Any]:
    """A row with every required field present (missing ones None) plus any extra columns."""
    row = {name: None for name in ROW_FIELDS}
    row.update({k: _clean(v) for k, v in fields.items()})
    if row["status"] not in STATUSES:
        raise ValueError(f"row status={row['status']!r}; allowed: {STATUSES}")
    return row


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=False, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete row; a torn last line (a crash mid-write) is skipped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
