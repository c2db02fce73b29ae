"""Every figure kind behind one switch: ``render(df, out, kinds, dirs)`` draws what the data allows.

A kind the data cannot support is skipped with the reason (no depth column, no slice_hops, ...),
never an error, so one ``plot.py`` call over a mixed sweep yields every figure it can.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .cost import COST_COLUMNS, plot_cost
from .curves import plot_training_curves, read_metrics
from .gates import load_gates, plot_gates
from .heatmap import plot_heatmaps
from .lines import plot_accuracy_vs_length, plot_memory_vs_length
from .lm_positions import plot_nll_by_position
from .pareto import plot_pareto
from .results import find_files, make_palette, run_dir_of
from .sinks import plot_sinks
from .slices import plot_slice
from .style import Palette, save_options, slug

log = logging.getLogger(__name__)


@dataclass
class Context:
    df: pd.DataFrame
    out: Path
    palette: Palette
    dirs: list[Path] = field(default_factory=list)  # searched for metrics.csv and gates.pt


def _table_kind(fn: Callable[[pd.DataFrame, Path, Palette], list[Path]], needs: str) -> Callable:
    def draw(ctx: Context) -> list[Path] | str:
        if ctx.df.empty:
            return "no results rows"
        paths = fn(ctx.df, ctx.out, ctx.palette)
        return paths or f"no data for it ({needs})"
    return draw


def _slice_kind(knob: str) -> Callable[[Context], list[Path] | str]:
    def draw(ctx: Context) -> list[Path] | str:
        col = f"slice_{knob}"
        if col not in ctx.df.columns or ctx.df[col].notna().sum() == 0:
            return f"no {col} column"
        return plot_slice(ctx.df, ctx.out, ctx.palette, knob) or f"{col} has fewer than 2 values per task"
    return draw


def _cost(ctx: Context) -> list[Path] | str:
    if not any(c in ctx.df.columns and ctx.df[c].notna().any() for c in COST_COLUMNS):
        return f"none of the columns {', '.join(COST_COLUMNS)}"
    return plot_cost(ctx.df, ctx.out, ctx.palette)


def _run_labels(df: pd.DataFrame) -> dict[str, str]:
    if df.empty:
        return {}
    first = df.dropna(subset=["run_dir"]).drop_duplicates("run_dir")
    return {str(Path(d).resolve()): lb for d, lb in zip(first["run_dir"], first["label"])}


def _curves(ctx: Context) -> list[Path] | str:
    files = find_files(ctx.dirs, "metrics.csv")
    if not files:
        return "no metrics.csv under the given directories"
    metrics = read_metrics(files)
    return plot_training_curves(metrics, _run_labels(ctx.df), ctx.out, ctx.palette) or \
        "metrics.csv files have no loss or accuracy columns"


def _gates(ctx: Context) -> list[Path] | str:
    files = find_files(ctx.dirs, "gates.pt")
    if not files:
        return "no gates.pt under the given directories"
    labels = _run_labels(ctx.df)
    paths: list[Path] = []
    skipped = []
    for f in files:
        run = run_dir_of(f)
        title = labels.get(str(run), run.name)
        try:
            gates = load_gates(f)
        except Exception as err:  # truncated, not a tensor, wrong shape: one bad file never stops the rest
            log.warning("skipped unreadable %s: %s", f, f"{type(err).__name__}: {err}"[:200])
            skipped.append(f)
            continue
        paths += plot_gates(gates, ctx.out, f"gates_{slug(run.name)}", title=title)
    return paths or f"no readable gates.pt ({len(skipped)} unreadable)"


KINDS: dict[str, Callable[[Context], list[Path] | str]] = {
    "heatmap": _table_kind(plot_heatmaps, "rows with a depth"),
    "accuracy": _table_kind(plot_accuracy_vs_length, "ok rows at 2+ eval lengths"),
    "memory": _table_kind(plot_memory_vs_length, "peak_mem_bytes / cache_bytes at 2+ eval lengths"),
    "pareto": _table_kind(plot_pareto, "2+ labels with cache_bytes at one eval length"),
    "lost_in_middle": _slice_kind("gold_index"),
    "hops": _slice_kind("hops"),
    "similarity": _slice_kind("similarity"),
    "family": _slice_kind("family"),
    "cost": _cost,
    "curves": _curves,
    "gates": _gates,
    "nll_position": _table_kind(plot_nll_by_position, "eval=lm rows"),
    "sinks": _table_kind(plot_sinks, "eval=sinks rows"),
}


def render(df: pd.DataFrame, out: str | Path, kinds: Iterable[str] | None = None,
           dirs: Iterable[str | Path] = (), palette: Palette | None = None,
           formats: Iterable[str] = ("png", "pdf"), dpi: int = 300) -> dict[str, list[Path] | str]:
    """Draw each kind; returns kind -> written paths, or the reason it was skipped."""
    kinds = list(kinds or KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown figure kinds {unknown}; allowed: {list(KINDS)}")
    ctx = Context(df, Path(out), palette or make_palette(df), [Path(d) for d in dirs])
    with save_options(formats, dpi):
        return {kind: KINDS[kind](ctx) for kind in kinds}
