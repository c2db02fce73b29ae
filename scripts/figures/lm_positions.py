"""Perplexity by position (StreamingLLM, Fig. 3): mean NLL per position bucket, one line per policy.

Reads the ``task == "lm"`` rows of ``eval=lm``; one panel per run (model) and corpus. A dotted line
marks the training length: dense attention is only trained up to it, window-only attention
degrades once the first tokens leave its cache, sinks + window stays flat.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.results.identity import STYLED, identity_keys, key_value

from .base import FIGURES, table_kind
from .style import SINGLE_COL, Palette, legend_below, paper_style, plt, save, slug

CURVE = ("cache", "prefill", "lm_mode")  # what tells the lines of one panel apart; the rest splits panels
LINE_COLORS = ("#000000", "#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
MARKERS = ("o", "s", "^", "x", "D", "v", "+")
STYLES = ("-", "--", "-.", ":")
PANEL_NAMES = {"arm_hash": "cfg "}  # how a panel-splitting column reads in a title
PANEL_QUIET = ("imported_from", "train_task")  # said by the title already ("imported ...", the model)


def plot_nll_by_position(df: pd.DataFrame, out: str | Path, palette: Palette) -> list[Path]:
    if "nll" not in df.columns or "task" not in df.columns:
        return []
    lm = df[(df["task"] == "lm") & df["nll"].notna()]
    if lm.empty:
        return []
    paths: list[Path] = []
    lm = lm.assign(**{c: lm[c].map(key_value) for c in identity_keys(lm.columns)})  # lists, NaN: groupable
    curve = [c for c in identity_keys(lm.columns) if c in CURVE or c.startswith("cache_")]
    keys = ["model", "train_len", "corpus"] + (["start_token"] if "start_token" in lm.columns else [])
    # one panel per model: train.py's and eval.py's rows of one checkpoint share one (their arm_hash is
    # the checkpoint's); how a row was produced (stage, finetuned: train.py's columns) splits nothing
    arm = [c for c in identity_keys(lm.columns) if c not in keys and c not in curve and c not in STYLED]
    arm += [c for c in ("arm_hash", "imported_from") if c in lm.columns]
    lm = lm.assign(**{c: lm[c].map(key_value) for c in arm})
    varying = [c for c in arm if lm[c].nunique(dropna=False) > 1]
    panels = []
    for key, panel in lm.groupby(keys + varying, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        imported = str(panel["imported_from"].iloc[0]) if "imported_from" in panel else ""
        imported = "" if imported in ("", "-", "nan", "None") else imported.removeprefix("hf:")
        start = f", start token {key[3]}" if "start_token" in keys and key[3] not in ("", "-") else ""
        made = f"imported {imported}" if imported else f"trained at L={key[1]}"
        # the title names the model (how it was made, the corpus); other panel-splitting columns only where
        # two panels would otherwise read the same (below)
        title = f"{key[0]}, {made}, corpus {key[2]}{start}"
        stem = "_".join([str(key[0]), imported or f"L{key[1]}", str(key[2])] + ([f"start{key[3]}"] if start else []))
        extra = [f"{PANEL_NAMES.get(c, c + '=')}{v}" for c, v in zip(varying, key[len(keys):])
                 if c not in PANEL_QUIET and v not in ("", "-")]
        panels.append((title, stem, extra, key, panel))
    titles = [t for t, *_ in panels]
    for title, stem, extra, key, panel in panels:
        if titles.count(title) > 1:
            title, stem = f"{title}, {', '.join(extra)}", f"{stem}_{'_'.join(extra)}"
        paths += _panel(panel, curve, key, title, stem, out)
    return paths


def _panel(panel: pd.DataFrame, curve: list[str], key: tuple, title: str, stem: str, out: str | Path) -> list[Path]:
    with paper_style():
        fig, ax = plt.subplots(figsize=(SINGLE_COL, 2.2))
        for i, ((label, *_), line) in enumerate(panel.groupby(["cache", *curve], sort=True, dropna=False)):
            line = line.sort_values("position")  # one colour per policy *and* budget: S=0 vs S=4 differ
            ax.plot(line["position"], line["nll"], marker=MARKERS[i % len(MARKERS)], markersize=2.5,
                    linewidth=1, linestyle=STYLES[i % len(STYLES)], color=LINE_COLORS[i % len(LINE_COLORS)],
                    label=str(label))  # markers and dashes keep coinciding curves visible
        train_len = pd.to_numeric(key[1], errors="coerce")
        if pd.notna(train_len):
            ax.axvline(float(train_len), color="0.3", linestyle=":", linewidth=0.8)
            ax.annotate("training length", (float(train_len), 1), xycoords=("data", "axes fraction"),
                        xytext=(2, -8), textcoords="offset points", fontsize=6, color="0.3")
        ax.set_xscale("log")
        ax.set_xlabel("position in the stream (tokens)")
        ax.set_ylabel("NLL (nats / token)")
        ax.set_title(title, fontsize=7)
        # one legend under the axes: over the curves it hid the training-length label, beside them it
        # squeezed the axes
        legend_below(fig, *ax.get_legend_handles_labels(), ncol=1)
        return save(fig, out, f"nll_by_position_{slug(stem)}")


FIGURES.register("nll_position")(table_kind(plot_nll_by_position, "eval=lm rows",
                                            "NLL by position in the stream, one line per cache policy (eval=lm)."))
