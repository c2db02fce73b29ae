"""A rich summary table of results rows, printed at the end of train.py / eval.py."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _mb(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:.2f}"


def summary_table(rows: list[dict[str, Any]], title: str = "results") -> Table:
    """One line per (model, pos, cache, task, eval_len): accuracy averaged over depths and slices."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row.get("model"), row.get("pos"), row.get("cache"), row.get("task"), row.get("eval_len"))
        groups.setdefault(key, []).append(row)
    table = Table(title=title)
    for col in ("model", "pos", "cache", "task", "eval_len", "cells", "accuracy", "min acc",
                "tf acc", "peak MiB", "cache MiB/seq", "tok/s", "status"):
        table.add_column(col, justify="right" if col not in ("model", "pos", "cache", "task", "status") else "left")
    for key, rs in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0][:4]) + (kv[0][4] or 0,)):
        ok = [r for r in rs if r["status"] == "ok"]
        n = sum(r["n_examples"] or 0 for r in ok)
        acc = sum((r["accuracy"] or 0) * (r["n_examples"] or 0) for r in ok) / n if n else None
        tf = [r.get("tf_accuracy") for r in ok if r.get("tf_accuracy") is not None]
        statuses = sorted({r["status"] for r in rs})
        table.add_row(
            *(str(k) for k in key),
            str(len(rs)),
            "-" if acc is None else f"{acc:.3f}",
            "-" if not ok else f"{min(r['accuracy'] for r in ok):.3f}",
            "-" if not tf else f"{sum(tf) / len(tf):.3f}",
            _mb(max((r["peak_mem_bytes"] or 0) for r in ok) if ok else None),
            _mb(max((r["cache_bytes"] or 0) for r in ok) if ok else None),
            "-" if not ok or ok[0]["tokens_per_s"] is None else f"{ok[0]['tokens_per_s']:.0f}",
            ",".join(statuses),
        )
    return table


def print_summary(rows: list[dict[str, Any]], title: str = "results") -> None:
    console = Console()
    if console.width < 150:  # logs and narrow terminals: never squeeze numbers into ellipses
        console = Console(width=150)
    console.print(summary_table(rows, title))
