"""NIAH-style heatmap: accuracy by eval length (x, ascending) x depth (y, 0 at the top).

Follows gkamradt/LLMTest_NeedleInAHaystack's visualisation (colormap #F0496E -> #EBB839 -> #0CD79F),
with exact match on a fixed 0..1 scale, the value in each cell, and a vertical line at the training
length. A cell with no ok row but an oom/error row is drawn grey and marked, never as accuracy 0.
A cell whose accuracy lies within the 95% Wilson interval of its floor (rows' ``floor``: the best
prompt-only baseline on the same examples) or below it is outlined with a dotted frame and its value
marked "~f": there the model is not distinguishable from a shortcut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .base import FIGURES, table_kind
from .results import accuracy_by, legend_names, phase_column
from .stats import wilson
from .style import NIAH_CMAP, SINGLE_COL, Palette, paper_style, save

MAX_TEXT_COLS = 12  # beyond this the cell numbers no longer fit a column-width figure


def heatmap_pivot(df: pd.DataFrame) -> pd.DataFrame:
    """Depth (rows, ascending: 0 first = top) x eval length (columns, ascending) of mean accuracy."""
    rows = df[df["depth"].notna()]
    acc = accuracy_by(rows, ["depth", "eval_len"])
    grid = acc.pivot(index="depth", columns="eval_len", values="accuracy") if not acc.empty else None
    depths = sorted(rows["depth"].astype(float).unique())
    lengths = sorted(rows["eval_len"].dropna().astype(int).unique())
    if grid is None:
        return pd.DataFrame(np.nan, index=depths, columns=lengths)
    grid.columns = grid.columns.astype(int)
    return grid.reindex(index=depths, columns=lengths).astype(float)


def _failed_cells(df: pd.DataFrame, pivot: pd.DataFrame) -> dict[tuple[int, int], str]:
    """(row, col) -> "OOM"/"ERR" for cells whose every row failed."""
    out = {}
    bad = df[df["depth"].notna() & (df["status"] != "ok")]
    for (depth, length), g in bad.groupby(["depth", "eval_len"]):
        i, j = pivot.index.get_loc(float(depth)), pivot.columns.get_loc(int(length))
        if np.isnan(pivot.iat[i, j]):
            out[(i, j)] = "OOM" if (g["status"] == "oom").any() else "ERR"
    return out


def at_floor_cells(df: pd.DataFrame, pivot: pd.DataFrame) -> set[tuple[int, int]]:
    """(row, col) of cells whose accuracy is at most the upper 95% Wilson bound of their floor."""
    if "floor" not in df.columns:
        return set()
    ok = df[df["depth"].notna() & (df["status"] == "ok") & df["floor"].notna()]
    out = set()
    for (depth, length), g in ok.groupby(["depth", "eval_len"]):
        n = float(g["n_examples"].sum())
        floor = float((g["floor"] * g["n_examples"]).sum() / n) if n else float("nan")
        i, j = pivot.index.get_loc(float(depth)), pivot.columns.get_loc(int(length))
        if n and not np.isnan(pivot.iat[i, j]) and pivot.iat[i, j] <= wilson(floor, n)[1]:
            out.add((i, j))
    return out


def train_line_x(lengths: list[int], train_len: float | None) -> float | None:
    """x of the boundary between lengths <= train_len and longer ones (categorical axis)."""
    if not lengths or train_len is None or np.isnan(train_len):
        return None
    return sum(1 for L in lengths if L <= train_len) - 0.5


def heatmap_figure(df: pd.DataFrame, title: str = "") -> tuple[Figure, pd.DataFrame]:
    """The heatmap of one (label, task) slice of the table, and the pivot it shows."""
    import matplotlib.pyplot as plt

    pivot = heatmap_pivot(df)
    n_d, n_l = pivot.shape
    height = min(3.2, 0.9 + 0.2 * n_d)
    fig, ax = plt.subplots(figsize=(SINGLE_COL, height))
    # origin="upper": pivot row 0 (depth 0) is drawn at the top, as in the reference figure.
    im = ax.imshow(np.ma.masked_invalid(pivot.to_numpy()), cmap=NIAH_CMAP, vmin=0.0, vmax=1.0,
                   aspect="auto", origin="upper", interpolation="nearest")
    ax.set_facecolor("#DDDDDD")  # cells without rows (missing) show as light grey
    ax.grid(False)
    ax.set_xticks(range(n_l), [str(L) for L in pivot.columns], rotation=45 if n_l > 6 else 0)
    ax.set_yticks(range(n_d), [f"{100 * d:.0f}" for d in pivot.index])
    ax.set_xlabel("eval length (tokens)")
    ax.set_ylabel("depth (%)")
    at_floor = at_floor_cells(df, pivot)
    if n_l <= MAX_TEXT_COLS:
        for (i, j), v in np.ndenumerate(pivot.to_numpy()):
            if not np.isnan(v):
                text = f"~f {v:.2f}" if (i, j) in at_floor else f"{v:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color="black")
    for i, j in at_floor:
        ax.add_patch(plt.Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="black",
                                   linestyle=":", linewidth=0.8))
    for (i, j), text in _failed_cells(df, pivot).items():
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#BBBBBB", hatch="///",
                                   edgecolor="white", linewidth=0))
        ax.text(j, i, text, ha="center", va="center", fontsize=5.5, color="black")
    for t in sorted(df["train_len"].dropna().unique()):
        x = train_line_x(list(pivot.columns), float(t))
        if x is not None:
            ax.axvline(x, color="black", linestyle="--", linewidth=1.0)
            ax.annotate(f"train L={int(t)}", (x, 1.0), xycoords=("data", "axes fraction"), xytext=(2, 2),
                        textcoords="offset points", fontsize=6, va="bottom")
    cbar = fig.colorbar(im, ax=ax, pad=0.02, fraction=0.06)
    cbar.set_label("exact match")
    cbar.ax.tick_params(labelsize=6)
    n = df[df["depth"].notna() & (df["status"] == "ok")].groupby(["depth", "eval_len"])["n_examples"].sum()
    note = "" if n.empty else (f"n={int(n.min())} per cell" if n.min() == n.max()
                                else f"n={int(n.min())}-{int(n.max())} per cell")
    if at_floor:
        note = f"{note}; dotted, ~f: within the floor's 95% interval".lstrip("; ")
    if title or note:
        ax.set_title(f"{title or ''}\n{note}".strip(), pad=10)
    return fig, pivot


def plot_heatmaps(df: pd.DataFrame, out: Path, palette: Palette) -> list[Path]:
    """One heatmap per (label, task) among tasks with depths; a label evaluated both zero-shot and fine-tuned
    gets one of each (never a pool of the two)."""
    paths: list[Path] = []
    with_depth = df[df["depth"].notna()]
    with_depth = with_depth.assign(_phase=phase_column(with_depth))
    phases = with_depth.groupby("label")["_phase"].nunique()
    short = {task: legend_names(t) for task, t in with_depth.groupby("task")}  # what tells a task's maps apart
    for (label, phase, task), g in with_depth.groupby(["label", "_phase", "task"], sort=False):
        name = short[task].get(label, str(label))
        name = f"{name} ({phase})" if phases[label] > 1 else name
        with paper_style():
            fig, _ = heatmap_figure(g, title=f"{task}: {name}")
            paths += save(fig, out, f"heatmap_{task}_{name}")
    return paths

FIGURES.register("heatmap")(table_kind(plot_heatmaps, "rows with a depth",
                                       "NIAH accuracy by eval length x depth, one heatmap per label and task."))
