"""Perplexity by position (StreamingLLM, Fig. 3): mean NLL per position bucket, one line per policy.

Reads the ``task == "lm"`` rows of ``eval=lm``; one panel per run (model) and corpus. A dotted line
marks the training length: dense attention is only trained up to it, window-only attention
degrades once the first tokens leave its cache, sinks + window stays flat.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .style import SINGLE_COL, Palette, paper_style, plt, save, slug

LINE_COLORS = ("#000000", "#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
MARKERS = ("o", "s", "^", "x", "D", "v", "+")
STYLES = ("-", "--", "-.", ":")


def plot_nll_by_position(df: pd.DataFrame, out: str | Path, palette: Palette) -> list[Path]:
    if "nll" not in df.columns or "task" not in df.columns:
        return []
    lm = df[(df["task"] == "lm") & df["nll"].notna()]
    if lm.empty:
        return []
    paths: list[Path] = []
    keys = ["model", "train_len", "corpus"] + (["start_token"] if "start_token" in lm.columns else [])
    for key, panel in lm.groupby(keys, dropna=False):
        with paper_style():
            fig, ax = plt.subplots(figsize=(SINGLE_COL * 1.4, 2.4))
            for i, (label, curve) in enumerate(panel.groupby("cache", sort=True)):
                curve = curve.sort_values("position")  # one colour per policy *and* budget: S=0 vs S=4 differ
                ax.plot(curve["position"], curve["nll"], marker=MARKERS[i % len(MARKERS)], markersize=2.5,
                        linewidth=1, linestyle=STYLES[i % len(STYLES)], color=LINE_COLORS[i % len(LINE_COLORS)],
                        label=str(label))  # markers and dashes keep coinciding curves visible
            train_len = key[1]
            if pd.notna(train_len):
                ax.axvline(float(train_len), color="0.3", linestyle=":", linewidth=0.8)
                ax.annotate("training length", (float(train_len), 1), xycoords=("data", "axes fraction"),
                            xytext=(2, -8), textcoords="offset points", fontsize=6, color="0.3")
            ax.set_xscale("log")
            ax.set_xlabel("position in the stream (tokens)")
            ax.set_ylabel("NLL (nats / token)")
            start = f", start token {int(key[3])}" if len(key) > 3 and pd.notna(key[3]) else ""
            ax.set_title(f"{key[0]}, trained at L={key[1]}, corpus {key[2]}{start}", fontsize=7)
            ax.legend(fontsize=6, loc="upper left")
            paths += save(fig, out, f"nll_by_position_{slug('_'.join(str(k) for k in key))}")
    return paths
