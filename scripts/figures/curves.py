"""Training curves from Lightning's CSV logger (``<run_dir>/logs/version_*/metrics.csv``).

Loss (train solid, val dashed) and validation exact match against step, one colour per run label.
Resumed runs write several ``version_*`` folders; they are joined and sorted by step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from matplotlib.lines import Line2D

from .base import FIGURES, Context
from .results import find_files, run_dir_of
from .style import DOUBLE_COL, Palette, legend_below, paper_style, save


def read_metrics(files: Iterable[Path]) -> pd.DataFrame:
    """All metrics.csv rows, with the ``run_dir`` each came from."""
    frames = []
    for f in files:
        try:
            m = pd.read_csv(f)
        except Exception as err:  # empty, truncated or binary: skip it, say so
            logging.getLogger(__name__).warning("skipped unreadable %s: %s", f, f"{type(err).__name__}: {err}"[:200])
            continue
        if "step" in m.columns and not m.empty:
            frames.append(m.assign(run_dir=str(run_dir_of(f))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _accuracy_col(m: pd.DataFrame) -> str | None:
    for col in ("val/exact_match", "train/exact_match", "val/token_accuracy", "train/token_accuracy"):
        if col in m.columns and m[col].notna().any():
            return col
    return None


def plot_training_curves(metrics: pd.DataFrame, run_labels: dict[str, str], out: Path,
                         palette: Palette) -> list[Path]:
    """``run_labels`` maps a run_dir to its label (from its results rows; else the dir name)."""
    import matplotlib.pyplot as plt

    loss_cols = [c for c in ("train/loss", "val/loss") if c in metrics.columns and metrics[c].notna().any()]
    acc_col = _accuracy_col(metrics) if not metrics.empty else None
    if metrics.empty or not (loss_cols or acc_col):
        return []
    panels = (["loss"] if loss_cols else []) + ([acc_col] if acc_col else [])
    with paper_style():
        fig, axes = plt.subplots(1, len(panels), figsize=(DOUBLE_COL, 2.1), squeeze=False)
        labels: list[str] = []
        for run_dir, m in metrics.groupby("run_dir", sort=True):
            label = run_labels.get(run_dir, Path(run_dir).name)
            labels.append(label)
            color = palette.color(label)
            for ax, panel in zip(axes[0], panels):
                cols = loss_cols if panel == "loss" else [panel]
                for col in cols:
                    s = m[["step", col]].dropna().sort_values("step")
                    ax.plot(s["step"], s[col], color=color, linewidth=0.9,
                            linestyle="--" if col.startswith("val/") else "-",
                            marker="o" if col.startswith("val/") and len(s) < 30 else None, markersize=2)
        for ax, panel in zip(axes[0], panels):
            ax.set_xlabel("step")
            ax.set_ylabel(panel.replace("/", " ").replace("_", " "))
            if panel == "loss":  # never clipped: the whole loss range, log only when it spans decades
                values = pd.concat([metrics[c] for c in loss_cols]).dropna()
                if len(values) and values.min() > 0 and values.max() / values.min() > 20:
                    ax.set_yscale("log")
            else:
                ax.set_ylim(-0.03, 1.03)
        labels = palette.sort(labels)
        handles = [Line2D([], [], color=palette.color(lb)) for lb in labels]
        names = list(labels)
        if len(loss_cols) == 2:
            handles += [Line2D([], [], color="0.3"), Line2D([], [], color="0.3", linestyle="--")]
            names += ["train", "val"]
        legend_below(fig, handles, names)
        return save(fig, out, "training_curves")


def run_labels(df: pd.DataFrame) -> dict[str, str]:
    """run_dir -> the label of its rows (the legend entry of its curves and gate map)."""
    if df.empty:
        return {}
    first = df.dropna(subset=["run_dir"]).drop_duplicates("run_dir")
    return {str(Path(d).resolve()): lb for d, lb in zip(first["run_dir"], first["label"])}


@FIGURES.register("curves")
def draw_curves(ctx: Context) -> list[Path] | str:
    """Training curves (loss, validation exact match) from each run's metrics.csv."""
    files = find_files(ctx.dirs, "metrics.csv")
    if not files:
        return "no metrics.csv under the given directories"
    return plot_training_curves(read_metrics(files), run_labels(ctx.df), ctx.out, ctx.palette) or \
        "metrics.csv files have no loss or accuracy columns"
