"""Training cost bars (LongLoRA and friends): step time, peak training memory, trainable parameters.

A run's training cost is repeated on each of its rows; it is taken once per run, then averaged over
the runs (seeds) of a label.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .style import DOUBLE_COL, Palette, paper_style, save

COST_COLUMNS = {
    "train_step_s": ("step time (s)", 1.0),
    "train_peak_mem_bytes": ("peak train memory (GiB)", 2.0**30),
    "trainable_params": ("trainable params (M)", 1e6),
}


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
            name, scale = COST_COLUMNS[col]
            values = table[col] / scale
            ax.barh(range(len(labels)), values.fillna(0), color=[palette.color(lb) for lb in labels],
                    height=0.7)
            for i, v in enumerate(values):
                ax.text(0 if pd.isna(v) else v, i, " n/a" if pd.isna(v) else f" {v:.3g}",
                        va="center", fontsize=6)
            ax.set_xlabel(name)
            ax.grid(axis="y", visible=False)
            ax.margins(x=0.2)
        axes[0][0].set_yticks(range(len(labels)), labels)
        paths = save(fig, out, "training_cost")
    return paths
