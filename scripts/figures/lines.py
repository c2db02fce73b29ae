"""Accuracy vs eval length and memory vs eval length: one line per label, one figure per task.

Fine-tuned rows (stage extend / duo_gates, or finetuned=True) are solid and zero-shot rows dashed,
whenever the table holds both kinds. Cells that ran out of memory are marked with an x on the axis
edge in the label's colour, so an OOM never reads as accuracy 0 or as missing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from .results import accuracy_by
from .style import DOUBLE_COL, PLAIN, SINGLE_COL, Palette, legend_below, paper_style, save, stage_linestyle


def stage_column(df: pd.DataFrame) -> pd.Series:
    """``finetuned`` when present (True/False), else ``stage``; the line style follows it."""
    if "finetuned" in df.columns and df["finetuned"].notna().any():
        return df["finetuned"].astype(str)
    if "stage" in df.columns:
        return df["stage"].astype(str)
    return pd.Series("pretrain", index=df.index)


def _with_stage(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(_stage=stage_column(df))


def _length_axis(ax: Axes, lengths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(L) for L in lengths])
    ax.minorticks_off()
    ax.set_xlabel("eval length (tokens)")
    for label in ax.get_xticklabels():
        label.set_rotation(45 if len(lengths) > 5 else 0)


def _train_lines(ax: Axes, df: pd.DataFrame) -> None:
    for t in sorted(df["train_len"].dropna().unique()):
        ax.axvline(float(t), color="0.4", linestyle=":", linewidth=0.9, zorder=0)


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


def _legend(fig, ax: Axes, labels: list[str], palette: Palette, stages: list[str], oom: bool) -> None:
    handles = [Line2D([], [], color=palette.color(lb), marker=palette.marker(lb)) for lb in labels]
    names = list(labels)
    if len(set(stages)) > 1:
        handles += [Line2D([], [], color="0.3", linestyle="-"), Line2D([], [], color="0.3", linestyle="--")]
        names += ["fine-tuned", "zero-shot"]
    if oom:
        handles.append(Line2D([], [], color="0.3", marker="x", linestyle="none"))
        names.append("OOM")
    legend_below(fig, handles, names)


def plot_accuracy_vs_length(df: pd.DataFrame, out: Path, palette: Palette) -> list[Path]:
    """Per task: accuracy (example-weighted over depths, slices, seeds) vs eval length."""
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    df = _with_stage(df)
    for task, g in df.groupby("task", sort=True):
        acc = accuracy_by(g, ["label", "_stage", "eval_len"])
        if acc.empty or acc["eval_len"].nunique() < 2:
            continue
        stages = sorted(acc["_stage"].unique())
        with paper_style():
            fig, ax = plt.subplots(figsize=(SINGLE_COL, 2.2))
            for (label, stage), s in sorted(acc.groupby(["label", "_stage"]),
                                            key=lambda kv: (palette.rank(kv[0][0]), kv[0][1])):
                s = s.sort_values("eval_len")
                ax.plot(s["eval_len"], s["accuracy"], color=palette.color(label),
                        marker=palette.marker(label), linestyle=stage_linestyle(stage, stages))
            _train_lines(ax, g)
            oom = _mark_oom(ax, g, palette, y=0.0)
            _length_axis(ax, sorted(g["eval_len"].dropna().astype(int).unique()))
            ax.set_ylim(-0.03, 1.03)
            ax.set_ylabel("exact match")
            ax.set_title(str(task))
            _legend(fig, ax, palette.sort(acc["label"]), palette, stages, oom)
            paths += save(fig, out, f"accuracy_vs_length_{task}")
    return paths


def plot_memory_vs_length(df: pd.DataFrame, out: Path, palette: Palette) -> list[Path]:
    """Per task: peak memory and cache bytes per sequence vs eval length (log y), two panels."""
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    cols = [c for c in ("peak_mem_bytes", "cache_bytes") if c in df.columns]
    ok = df[df["status"] == "ok"]
    for task, g in df.groupby("task", sort=True):
        gok = ok[ok["task"] == task]
        have = [c for c in cols if (gok[c].fillna(0) > 0).any()]
        if not have or gok["eval_len"].nunique() < 2:
            continue
        with paper_style():
            fig, axes = plt.subplots(1, len(have), figsize=(DOUBLE_COL if len(have) > 1 else SINGLE_COL, 2.1),
                                     squeeze=False)
            oom = False
            for ax, col in zip(axes[0], have):
                # max over depths / slices / seeds: memory is a worst case, not an average
                m = gok[gok[col] > 0].groupby(["label", "eval_len"])[col].max().reset_index()
                for label in palette.sort(m["label"]):
                    s = m[m["label"] == label].sort_values("eval_len")
                    ax.plot(s["eval_len"], s[col] / 2**20, color=palette.color(label),
                            marker=palette.marker(label))
                ax.set_yscale("log")
                ax.set_ylabel("MiB")
                ax.set_title(f"{task}: " + {"peak_mem_bytes": "peak memory",
                                            "cache_bytes": "KV cache / state per sequence"}[col])
                ax.yaxis.set_major_formatter(PLAIN)
                if m[col].max() < 10 * m[col].min():  # under one decade: label the minor ticks too
                    ax.yaxis.set_minor_formatter(PLAIN)
                _train_lines(ax, g)
                oom |= _mark_oom(ax, g, palette, y=1.0)
                _length_axis(ax, sorted(g["eval_len"].dropna().astype(int).unique()))
            labels = palette.sort(gok.loc[gok[have].fillna(0).gt(0).any(axis=1), "label"])
            _legend(fig, axes[0][0], labels, palette, [], oom)
            paths += save(fig, out, f"memory_vs_length_{task}")
    return paths

