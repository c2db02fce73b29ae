"""A rich summary table of results rows, printed at the end of train.py / eval.py and of a sweep.

One line per identity (pipeline/results/identity.py: every ``pos_*``, ``cache_*``, ``attention_*``, ``lora_*``
column, the arm's variant and stage ...), task and eval length: rows of two arms that differ in one knob
are never averaged together; the label names what tells them apart (pipeline/results/labels.py).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.results.identity import key_value
from pipeline.results.labels import labels

TEXT = ("label", "stage", "task", "status")
COLUMNS = ("label", "stage", "task", "eval_len", "cells", "accuracy", "floor", "min acc", "tf acc", "peak MiB",
           "cache MiB/seq", "tok/s", "status")


def _mb(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:.2f}"


def group_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, int], list[dict[str, Any]]]:
    """(label, stage, task, eval_len) -> rows; the label differs wherever an identity column does."""
    groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for label, row in zip(labels(rows), rows):
        key = (label, key_value(row.get("stage")), str(row.get("task")), row.get("eval_len") or 0)
        groups.setdefault(key, []).append(row)
    return groups


def _line(rs: list[dict[str, Any]]) -> list[str]:
    ok = [r for r in rs if r.get("status") == "ok"]
    n = sum(r.get("n_examples") or 0 for r in ok)
    acc = sum((r.get("accuracy") or 0) * (r.get("n_examples") or 0) for r in ok) / n if n else None
    tf = [r["tf_accuracy"] for r in ok if r.get("tf_accuracy") is not None]
    floored = [r for r in ok if r.get("floor") is not None]
    nf = sum(r.get("n_examples") or 0 for r in floored)
    floor = sum(r["floor"] * (r.get("n_examples") or 0) for r in floored) / nf if nf else None
    accs = [r["accuracy"] for r in ok if r.get("accuracy") is not None]
    speed = ok[0].get("tokens_per_s") if ok else None
    return [
        str(len(rs)),
        "-" if acc is None else f"{acc:.3f}",
        "-" if floor is None else f"{floor:.3f}",
        "-" if not accs else f"{min(accs):.3f}",
        "-" if not tf else f"{sum(tf) / len(tf):.3f}",
        _mb(max((r.get("peak_mem_bytes") or 0) for r in ok) if ok else None),
        _mb(max((r.get("cache_bytes") or 0) for r in ok) if ok else None),
        "-" if speed is None else f"{speed:.0f}",
        ",".join(sorted({str(r.get("status")) for r in rs})),
    ]


def summary_table(rows: list[dict[str, Any]], title: str = "results") -> Table:
    """One line per (identity, stage, task, eval_len): accuracy averaged over depths, slices and seeds,
    beside the mean floor of the same cells (the best prompt-only baseline on the same examples)."""
    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in TEXT else "right", overflow="fold")
    for (label, stage, task, length), rs in sorted(group_rows(rows).items()):
        # escaped: "[lora]", "[attn layers 1/2]" are text, not Rich markup
        table.add_row(escape(label), stage or "-", escape(task), str(length), *_line(rs))
    return table


def print_summary(rows: list[dict[str, Any]], title: str = "results") -> None:
    console = Console()
    if console.width < 150:  # logs and narrow terminals: never squeeze numbers into ellipses
        console = Console(width=150)
    console.print(summary_table(rows, title))
