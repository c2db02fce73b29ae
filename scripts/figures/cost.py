"""Training cost bars (LongLoRA and friends): step time, peak training memory, trainable parameters.

A run's training cost is repeated on each of its rows; it is taken once per run, then averaged over
the runs (seeds) of a label.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .base import FIGURES, Context
from .results import legend_names
from .style import DOUBLE_COL, Palette, paper_style, save

COST_COLUMNS = {
    "train_step_s": ("step time (s)", 1.0),
    "train_peak_mem_bytes": ("peak train memory (GiB)", 2.0**30),
    "trainable_params": ("trainable params (M)", 1e6),
}


UNITS = {  # column -> (name, divisor) from large to small; the first that keeps values >= 1 is used
    "train_step_s": [("step time (s)", 1.0), ("step time (ms)", 1e-3)],
    "train_peak_mem_bytes": [("peak train memory (GiB)", 2.0**30), ("peak train memory (MiB)", 2.0**20),
                             ("peak train memory (KiB)", 2.0**10)],
    "trainable_params": [("trainable params (M)", 1e6), ("trainable params (k)", 1e3), ("trainable params", 1.0)],
}


def readable_unit(col: str, values: pd.Series) -> tuple[str, float]:
    """A unit that keeps the numbers readable (no 1e-6 axis offsets): MiB for a CPU run's memory, ms..."""
    top = values.dropna().abs().max() if values.notna().any() else 0
    for name, scale in UNITS.get(col, [COST_COLUMNS[col]]):
        if top / scale >= 1:
            return name, scale
    return UNITS.get(col, [COST_COLUMNS[col]])[-1]


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """label x cost column: per-run first value, averaged over runs."""
    cols = [c for c in COST_COLUMNS if c in df.columns and df[c].notna().any()]
    if not cols:
        return pd.DataFrame()
    run_key = "run_id" if df["run_id"].notna().any() else "run_dir"
    per_run = df.dropna(subset=cols, how="all").groupby([run_key, "label"], dropna=False)[cols].first()
    return per_run.groupby("label").mean()


def plot_cost(df: pd.DataFrame, out: Path, palette: Palette) -> list[Path]:
    import matplotlib.pyplot as plt

    table = cost_table(df)
    if table.empty:
        return []
    labels = palette.sort(table.index)[::-1]  # barh draws bottom-up; first legend entry on top
    table = table.loc[labels]
    with paper_style():
        n = len(table.columns)
        fig, axes = plt.subplots(1, n, figsize=(DOUBLE_COL, 0.6 + 0.22 * len(labels)), sharey=True,
                                 squeeze=False)
        for ax, col in zip(axes[0], table.columns):
            name, scale = readable_unit(col, table[col])
            values = table[col] / scale
            ax.barh(range(len(labels)), values.fillna(0), color=[palette.color(lb) for lb in labels],
                    height=0.7)
            for i, v in enumerate(values):
                ax.text(0 if pd.isna(v) else v, i, " n/a" if pd.isna(v) else f" {v:.3g}",
                        va="center", fontsize=6)
            ax.set_xlabel(name)
            ax.ticklabel_format(axis="x", style="plain", useOffset=False)
            ax.grid(axis="y", visible=False)
            ax.margins(x=0.2)
        names = legend_names(df[df["label"].isin(labels)])  # only what tells the bars apart
        axes[0][0].set_yticks(range(len(labels)), [names.get(lb, lb) for lb in labels])
        paths = save(fig, out, "training_cost")
    return paths


@FIGURES.register("cost")
def draw_cost(ctx: Context) -> list[Path] | str:
    """Training cost bars: step time, peak training memory, trainable parameters per label."""
    if not any(c in ctx.df.columns and ctx.df[c].notna().any() for c in COST_COLUMNS):
        return f"none of the columns {', '.join(COST_COLUMNS)}"
    return plot_cost(ctx.df, ctx.out, ctx.palette)
