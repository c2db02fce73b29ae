"""Accuracy vs eval length and memory vs eval length: one line per label, one figure per task.

Line style carries a study's arm only where it is one: a label evaluated both before and after
fine-tuning (rows ``stage=zero_shot`` and fine-tuned rows) draws its zero-shot line dashed; everything
else is solid. Accuracy points carry a 95% Wilson interval and the figure says n; labels are nudged
apart on the length axis so coinciding lines stay visible. Cells that ran out of memory are marked
with an x on the axis edge in the label's colour, so an OOM never reads as accuracy 0 or as missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, NullFormatter, NullLocator

from pipeline.results.labels import difference

from .base import FIGURES, table_kind
from .results import FINE_TUNED, ZERO_SHOT, final_phase, legend_names, phase_column
from .stats import accuracy_with_interval, n_note
from .style import DOUBLE_COL, PLAIN, SINGLE_COL, Palette, legend_below, paper_style, save


def _compared_labels(acc: pd.DataFrame) -> set[str]:
    """Labels seen both zero-shot and after training: only there does the line style mean something."""
    phases = acc.groupby("label")["_phase"].nunique()
    return set(phases[phases > 1].index)


def _length_axis(ax: Axes, lengths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(L) for L in lengths])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("eval length (tokens)")
    for label in ax.get_xticklabels():
        label.set_rotation(45 if len(lengths) > 5 else 0)
    if lengths:  # room for the nudged points at both ends
        ax.set_xlim(lengths[0] / 2**0.35, lengths[-1] * 2**0.35)


def _train_lines(ax: Axes, df: pd.DataFrame) -> None:
    """A dotted line at each training length, labelled ``train L=...`` at the top of the axes."""
    for t in sorted(df["train_len"].dropna().unique()):
        ax.axvline(float(t), color="0.4", linestyle=":", linewidth=0.9, zorder=0)
        ax.annotate(f"train L={int(t)}", (float(t), 0.0), xycoords=("data", "axes fraction"),
                    xytext=(2, 3), textcoords="offset points", fontsize=6, color="0.35", va="bottom",
                    rotation=90)


def _mark_oom(ax: Axes, df: pd.DataFrame, palette: Palette, y: float) -> bool:
    """An x at axes-height ``y`` for each (label, length) whose cells all ran out of memory."""
    failed = df[df["status"] == "oom"]
    ok = df[df["status"] == "ok"].groupby(["label", "eval_len"]).size()
    marked = False
    for (label, length), _ in failed.groupby(["label", "eval_len"]):
        if (label, length) in ok.index:
            continue
        ax.plot([length], [y], marker="x", color=palette.color(label), linestyle="none",
                transform=ax.get_xaxis_transform(), clip_on=False, markersize=5)
        marked = True
    return marked


def _nudges(labels: list[str], width: float = 0.18) -> dict[str, float]:
    """Multiplicative x offsets (log axis) spreading ``labels`` over +-width/2 octaves."""
    if len(labels) < 2:
        return {lb: 1.0 for lb in labels}
    steps = np.linspace(-width / 2, width / 2, len(labels))
    return {lb: float(2.0**s) for lb, s in zip(labels, steps)}


def _legend(fig, labels: list[str], palette: Palette, styles: bool, oom: bool,
            names: dict[str, str] | None = None) -> None:
    handles = [Line2D([], [], color=palette.color(lb), marker=palette.marker(lb)) for lb in labels]
    text = [(names or {}).get(lb, lb) for lb in labels]
    if styles:
        handles += [Line2D([], [], color="0.3", linestyle="-"), Line2D([], [], color="0.3", linestyle="--")]
        text += [FINE_TUNED, ZERO_SHOT]
    if oom:
        handles.append(Line2D([], [], color="0.3", marker="x", linestyle="none"))
        text.append("OOM")
    legend_below(fig, handles, text)


def plot_accuracy_vs_length(df: pd.DataFrame, out: Path, palette: Palette) -> list[Path]:
    """Per task: accuracy (example-weighted over depths, slices, seeds) vs eval length, 95% Wilson bars."""
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    df = df.assign(_phase=phase_column(df))
    for task, g in df.groupby("task", sort=True):
        acc = accuracy_with_interval(g, ["label", "_phase", "eval_len"])
        if acc.empty or acc["eval_len"].nunique() < 2:
            continue
        compared = _compared_labels(acc)
        labels = palette.sort(acc["label"])
        nudge = _nudges(labels)
        with paper_style():
            fig, ax = plt.subplots(figsize=(SINGLE_COL, 2.4))
            for (label, phase), s in sorted(acc.groupby(["label", "_phase"]),
                                            key=lambda kv: (palette.rank(kv[0][0]), kv[0][1])):
                s = s.sort_values("eval_len")
                x = s["eval_len"].astype(float) * nudge[label]
                dashed = phase == ZERO_SHOT and label in compared
                ax.errorbar(x, s["accuracy"], yerr=[s["accuracy"] - s["lo"], s["hi"] - s["accuracy"]],
                            color=palette.color(label), marker=palette.marker(label),
                            linestyle="--" if dashed else "-", capsize=1.5, elinewidth=0.6,
                            markerfacecolor="white" if dashed else palette.color(label))
            _train_lines(ax, g)
            oom = _mark_oom(ax, g, palette, y=0.0)
            _length_axis(ax, sorted(g["eval_len"].dropna().astype(int).unique()))
            ax.set_ylim(-0.03, 1.03)
            ax.set_ylabel("exact match (95% CI)")
            ax.set_title(f"{task} ({n_note(acc['n'])})")
            _legend(fig, labels, palette, bool(compared), oom, legend_names(g))
            paths += save(fig, out, f"accuracy_vs_length_{task}")
    return paths


def _merge_identical(m: pd.DataFrame, cols: list[str], labels: list[str]) -> dict[str, list[str]]:
    """Labels whose series are equal within 1% in every column, drawn once: first label -> its members."""
    def series(lb: str, col: str) -> pd.Series:
        return m[(m["label"] == lb) & m[col].notna()].set_index("eval_len")[col].sort_index()

    groups: dict[str, list[str]] = {}
    for lb in labels:
        for head in groups:
            if all(series(head, c).index.equals(series(lb, c).index)
                   and np.allclose(series(head, c).values, series(lb, c).values, rtol=0.01) for c in cols):
                groups[head].append(lb)
                break
        else:
            groups[lb] = [lb]
    return groups


def _log_bytes_axis(ax: Axes) -> None:
    """Log y with labels at 1-2-5 steps, so even a range under one decade carries several ticks."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(PLAIN)
    ax.yaxis.set_minor_formatter(NullFormatter())


MAMBA_CPU_CAVEAT = "(Mamba/hybrid on CPU: PyTorch-scan temporaries, an implementation artefact)"


def plot_memory_vs_length(df: pd.DataFrame, out: Path, palette: Palette) -> list[Path]:
    """Per task: peak memory and cache bytes per sequence vs eval length (log y), two panels.

    Labels with identical values (e.g. every RoPE rule of one transformer) are drawn once and named
    together in the legend, so no line hides another."""
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    cols = [c for c in ("peak_mem_bytes", "cache_bytes") if c in df.columns]
    df = final_phase(df)  # a fine-tuned label's zero-shot rows: the same model, not a second line
    ok = df[df["status"] == "ok"]
    for task, g in df.groupby("task", sort=True):
        gok = ok[ok["task"] == task]
        have = [c for c in cols if (pd.to_numeric(gok[c], errors="coerce").fillna(0) > 0).any()]
        if not have or gok["eval_len"].nunique() < 2:
            continue
        with paper_style():
            fig, axes = plt.subplots(1, len(have), figsize=(DOUBLE_COL if len(have) > 1 else SINGLE_COL, 2.2),
                                     squeeze=False)
            oom, names = False, {}
            values = gok.assign(**{c: pd.to_numeric(gok[c], errors="coerce") for c in have})
            # max over depths / slices / seeds: memory is a worst case, not an average
            m = values.groupby(["label", "eval_len"])[have].max().reset_index()
            m = m.assign(**{c: m[c].where(m[c] > 0) for c in have})
            groups = _merge_identical(m, have, palette.sort(m["label"]))
            drawn = list(groups)
            nudge = _nudges(drawn)
            first = {r["label"]: r for r in gok.drop_duplicates("label").to_dict("records")}
            names = legend_names(gok)
            for head, members in groups.items():
                if len(members) > 1:  # named by what sets each member apart, from the identity columns
                    same = ", ".join(difference(first[x], first[head]) or names.get(x, x) for x in members[1:])
                    names[head] = f"{names.get(head, head)} (= {same})"
            for ax, col in zip(axes[0], have):
                for head in drawn:
                    s = m[(m["label"] == head) & m[col].notna()].sort_values("eval_len")
                    ax.plot(s["eval_len"] * nudge[head], s[col] / 2**20, color=palette.color(head),
                            marker=palette.marker(head))
                _log_bytes_axis(ax)
                ax.set_ylabel("MiB")
                title = {"peak_mem_bytes": "peak memory", "cache_bytes": "KV cache / state per sequence"}[col]
                if col == "peak_mem_bytes" and gok["model"].astype(str).isin(["mamba", "hybrid"]).any():
                    title += "\n" + MAMBA_CPU_CAVEAT
                ax.set_title(f"{task}: {title}")
                _train_lines(ax, g)
                oom |= _mark_oom(ax, g, palette, y=1.0)
                _length_axis(ax, sorted(g["eval_len"].dropna().astype(int).unique()))
            _legend(fig, palette.sort(drawn), palette, False, oom, names)
            paths += save(fig, out, f"memory_vs_length_{task}")
    return paths


FIGURES.register("accuracy")(table_kind(plot_accuracy_vs_length, "ok rows at 2+ eval lengths",
                                        "Accuracy vs eval length, one line per label (95% Wilson bars)."))
FIGURES.register("memory")(table_kind(plot_memory_vs_length, "peak_mem_bytes / cache_bytes at 2+ eval lengths",
                                      "Peak memory and cache bytes per sequence vs eval length."))
