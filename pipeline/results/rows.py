"""Results rows: one JSON line per run x task x eval length x depth x cache policy.

Each row is written and flushed as one line (fsync'd), so a crash loses at most the row being
measured. A crash or a full disk can leave a torn last line (no newline); the next append repairs it
first (a complete JSON object gets its newline, a fragment is cut off with a warning), so the next
good row never lands on the fragment. Later issues add columns; the ones in ``ROW_FIELDS`` are
never renamed. What a row measured (rule, policy and their knobs, the study arm) is a set of columns built
in pipeline/results/identity.py; tables and figures group by them (pipeline/results/labels.py).
"""

from __future__ import annotations

import json
import logging
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
# What makes two rows the same measurement: a resumed evaluation skips cells already written
# under these, and scripts/collect.py reports any cell written twice.
CELL_KEYS = ("run_id", "config_hash", "stage", "task", "eval_len", "depth", "cache", "prefill", "prefix_cache")
log = logging.getLogger(__name__)


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


def repair_torn_tail(path: str | os.PathLike) -> None:
    """End the file on a newline: keep a last line that is a whole JSON row, cut off a fragment."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        start, chunk = end, 1 << 16
        while start > 0:  # find the last newline, reading backwards
            start = max(0, start - chunk)
            f.seek(start)
            at = f.read(min(chunk, end - start)).rfind(b"\n")
            if at >= 0:
                start += at + 1
                break
        f.seek(start)
        tail = f.read()
        try:
            complete = isinstance(json.loads(tail), dict)
        except ValueError:
            complete = False
        if complete:
            f.seek(end)
            f.write(b"\n")
        else:
            log.warning("%s: cut off a torn last line (a crash or full disk mid-write): %r", path, tail[:120])
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())


def append_rows(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Append rows as JSON lines in one write, fsync'd, after repairing a torn last line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        repair_torn_tail(path)
    text = "".join(json.dumps(row, sort_keys=False, default=str) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    append_rows(path, [row])


def cell_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in CELL_KEYS)


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
