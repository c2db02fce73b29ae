"""Accuracy vs a slice knob (``slice_<knob>`` columns): lost in the middle (gold index), hops,
similarity, task family. One figure per task, one panel per eval length, one line per label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from .base import FIGURES, Context
from .results import ZERO_SHOT, phase_column
from .stats import accuracy_with_interval, n_note
from .style import DOUBLE_COL, SINGLE_COL, Palette, legend_below, paper_style, save

KNOB_TITLES = {
    "gold_index": ("lost_in_the_middle", "gold record position"),
    "hops": ("accuracy_vs_hops", "hops"),
    "similarity": ("accuracy_vs_similarity", "key similarity"),
    "family": ("accuracy_vs_family", "task family"),
}
MAX_PANELS = 4


def _pick_lengths(lengths: list[int]) -> list[int]:
    """At most MAX_PANELS eval lengths, spread from the shortest to the longest."""
    if len(lengths) <= MAX_PANELS:
        return lengths
    idx = np.unique(np.linspace(0, len(lengths) - 1, MAX_PANELS).round().astype(int))
    return [lengths[i] for i in idx]


def plot_slice(df: pd.DataFrame, out: Path, palette: Palette, knob: str) -> list[Path]:
    """Accuracy vs ``slice_<knob>`` wherever that column has at least two values."""
    import matplotlib.pyplot as plt

    col = f"slice_{knob}"
    if col not in df.columns:
        return []
    name, xlabel = KNOB_TITLES.get(knob, (f"accuracy_vs_{knob}", knob))
    paths: list[Path] = []
    for task, g in df[df[col].notna()].groupby("task", sort=True):
        g = g.assign(_phase=phase_column(g))
        acc = accuracy_with_interval(g, ["label", "_phase", "eval_len", col])
        if acc.empty or acc[col].nunique() < 2:
            continue
        numeric = pd.api.types.is_numeric_dtype(acc[col])
        cats = sorted(acc[col].astype(str).unique()) if not numeric else []
        lengths = _pick_lengths(sorted(acc["eval_len"].dropna().astype(int).unique()))
        with paper_style():
            n = len(lengths)
            fig, axes = plt.subplots(1, n, figsize=(SINGLE_COL if n == 1 else DOUBLE_COL, 2.1),
                                     sharey=True, squeeze=False)
            for ax, length in zip(axes[0], lengths):
                a = acc[acc["eval_len"] == length]
                for (label, phase), s in sorted(a.groupby(["label", "_phase"]),
                                                key=lambda kv: (palette.rank(kv[0][0]), kv[0][1])):
                    dashed = phase == ZERO_SHOT and a.loc[a["label"] == label, "_phase"].nunique() > 1
                    if numeric:
                        s = s.sort_values(col)
                        x = s[col].astype(float)
                    else:
                        x = s[col].astype(str).map(cats.index)
                        s, x = s.iloc[np.argsort(x.to_numpy())], np.sort(x.to_numpy())
                    # categories have no order between them: markers only, no connecting line
                    ax.errorbar(x, s["accuracy"], yerr=[s["accuracy"] - s["lo"], s["hi"] - s["accuracy"]],
                                color=palette.color(label), marker=palette.marker(label), capsize=1.5,
                                elinewidth=0.6, linestyle=("--" if dashed else "-") if numeric else "none",
                                markerfacecolor="white" if dashed else palette.color(label),
                                markersize=3.5 if numeric else 5)
                if not numeric:
                    ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right")
                ax.set_title(f"L={length}")
                ax.set_xlabel(xlabel)
                ax.set_ylim(-0.03, 1.03)
            axes[0][0].set_ylabel("exact match (95% CI)")
            if n > 1:
                fig.suptitle(f"{task} ({n_note(acc['n'])})")
            else:
                axes[0][0].set_title(f"{task}, L={lengths[0]} ({n_note(acc['n'])})")
            labels = palette.sort(acc["label"])
            handles = [Line2D([], [], color=palette.color(lb), marker=palette.marker(lb)) for lb in labels]
            legend_below(fig, handles, labels)
            paths += save(fig, out, f"{name}_{task}")
    return paths


def slice_kind(knob: str) -> None:
    """Register the figure kind of one slice knob (its name in KNOB_KINDS)."""

    def draw(ctx: Context) -> list[Path] | str:
        col = f"slice_{knob}"
        if col not in ctx.df.columns or ctx.df[col].notna().sum() == 0:
            return f"no {col} column"
        return plot_slice(ctx.df, ctx.out, ctx.palette, knob) or f"{col} has fewer than 2 values per task"

    draw.__doc__ = f"Accuracy vs slice_{knob} ({KNOB_TITLES[knob][1]}), one panel per eval length."
    FIGURES.register(KNOB_KINDS[knob])(draw)


KNOB_KINDS = {"gold_index": "lost_in_middle", "hops": "hops", "similarity": "similarity", "family": "family"}
for _knob in KNOB_KINDS:
    slice_kind(_knob)
