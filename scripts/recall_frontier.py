"""Figures of the recall frontier (experiment=recall_frontier) and the copy span sweep (experiment=copy_span).

    python scripts/recall_frontier.py docs/results/recall_frontier --out docs/figures/recall_frontier.png
    python scripts/recall_frontier.py docs/results/copy_span --copy --out docs/figures/copy_span.png

MQAR (zoology figure 2 and Based's frontier): ``recall_frontier.png`` has one panel per sequence length (its
number of key-value pairs grows with it), x = bytes of decode state per sequence at that length (the rows'
``cache_bytes``: attention's KV cache grows with L, a recurrent mixer's state does not), y = recall, one
series per mixer through its widths (and state sizes). ``recall_vs_pairs.png`` (beside it) has one panel
per width, x = key-value pairs (L = 64, 128, 256, 512 with 4, 8, 16, 64 pairs), one line per mixer. Recall
is per query (``--metric token_accuracy``, zoology's accuracy) or per example (``accuracy``: every query of
a row right). Copy: ``copy_span.png``, exact match of the copied span against its length, one line per
mixer and width.

Seeds are pooled: a point is k / n over every scored query (examples x queries x seeds) with its 95% Wilson
interval (queries of one row are not independent, so the interval is a lower bound on the uncertainty;
differences between arms belong to scripts/collect.py --versus, paired per example). A point whose arms'
mean training exact match (``train_em``: the last 50 steps) is below ``--fit-threshold`` did not fit its
own training rows: hollow, not joined, "unfitted". The dashed line is the chance floor of the points'
task (tasks/<family>.py ``chance_floor``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from arch_compare import COLORS, FIT_THRESHOLD, MARKERS  # noqa: E402
from figures.results import load_results  # noqa: E402
from figures.stats import wilson  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from tasks.copy import Copy  # noqa: E402
from tasks.mqar import Mqar  # noqa: E402
from tasks.vocab import Vocab  # noqa: E402

KEYS = ["task", "model", "d_model", "d_state", "eval_len", "load"]  # load: MQAR pairs, copy span


def load_of(df: pd.DataFrame) -> pd.Series:
    """Key-value pairs (MQAR) or span (copy) per row: the rows' task-slice column, else the run id's point."""
    for col in ("slice_num_kv_pairs", "slice_span"):
        if col in df and df[col].notna().all():
            return df[col].astype(int)
    point = df["run_id"].str.extract(r"_(?:L\d+|S(\d+))-s\d+$")[0]
    return pd.to_numeric(point, errors="coerce")


def frontier_points(df: pd.DataFrame, metric: str, fit_threshold: float = FIT_THRESHOLD) -> pd.DataFrame:
    """One point per architecture x width x state x length, seeds pooled, with its Wilson interval."""
    ok = df[(df["status"] == "ok") & df[metric].notna() & (df["eval_len"] == df["train_len"])].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["d_model"] = ok["model_d_model"].astype(int)
    ok["d_state"] = ok["model_d_state"].fillna(0).astype(int) if "model_d_state" in ok else 0
    ok["load"] = load_of(ok)
    per_row = np.where(ok["task"].eq("mqar") & (metric == "token_accuracy"), ok["load"], 1)
    ok["trials"] = ok["n_examples"].astype(float) * per_row
    ok["hits"] = ok[metric].astype(float) * ok["trials"]
    if "train_em" not in ok:
        ok["train_em"] = np.nan
    g = ok.groupby(KEYS, as_index=False).agg(hits=("hits", "sum"), trials=("trials", "sum"),
                                              state_bytes=("cache_bytes", "max"), n_params=("n_params", "max"),
                                              seeds=("seed", "nunique"), train_em=("train_em", "mean"))
    g[metric] = g["hits"] / g["trials"]
    bounds = [wilson(p, n) for p, n in zip(g[metric], g["trials"])]
    g["lo"], g["hi"] = [b[0] for b in bounds], [b[1] for b in bounds]
    g["unfitted"] = g["train_em"] < fit_threshold
    return g.drop(columns=["hits"]).sort_values(KEYS)


def chance(task: str, length: int, load: int, metric: str) -> float | None:
    vocab = Vocab(256)
    if task == "mqar":
        return Mqar(train_len=length, num_kv_pairs=load).chance_floor(vocab, length).get(metric)
    if task == "copy":
        return Copy(train_len=length, span=load).chance_floor(vocab, length).get(metric)
    return None


def series_of(pts: pd.DataFrame) -> pd.Series:
    """An architecture's line: through its widths, or (where it sweeps d_state) one line per width."""
    sweeps_state = pts.groupby("model")["d_state"].transform("nunique") > 1
    width = "d" + pts["d_model"].astype(str)
    return np.where(sweeps_state, pts["model"] + " " + width, pts["model"])


def draw(ax, sub: pd.DataFrame, x: str, metric: str, label_by: str) -> None:
    for name, s in sub.groupby(label_by, sort=True):
        model = s["model"].iloc[0]
        color, marker = COLORS.get(model, "0.4"), MARKERS.get(model, "x")
        s = s.sort_values(x)
        err = np.vstack([s[metric] - s["lo"], s["hi"] - s[metric]])
        fitted = s[~s["unfitted"]]
        ax.plot(fitted[x], fitted[metric], color=color, marker=marker, label=str(name), linewidth=1.4)
        ax.errorbar(s[x], s[metric], yerr=err, fmt="none", ecolor=color, elinewidth=0.8, capsize=2)
        under = s[s["unfitted"]]
        if not under.empty:
            ax.plot(under[x], under[metric], linestyle="none", marker=marker, markerfacecolor="none",
                    markeredgecolor=color)


def plot_frontier(pts: pd.DataFrame, out: Path, metric: str) -> list[Path]:
    """recall vs state bytes, one panel per length; recall vs pairs, one panel per width."""
    pts = pts.assign(series=series_of(pts))
    lengths = sorted(pts["eval_len"].unique())
    fig, axes = plt.subplots(1, len(lengths), figsize=(3.6 * len(lengths), 3.4), squeeze=False, sharey=True)
    for ax, L in zip(axes[0], lengths):
        sub = pts[pts["eval_len"] == L]
        draw(ax, sub, "state_bytes", metric, "series")
        load = int(sub["load"].iloc[0])
        floor = chance("mqar", int(L), load, metric)
        if floor is not None:
            ax.axhline(floor, color="0.5", linestyle="--", linewidth=0.9, label="chance floor")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1024:g} KB"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelrotation=35)  # the KB labels of a doubling axis collide when level
        ax.set_title(f"L={L}, {load} pairs")
        ax.set_xlabel("decode state per sequence")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"MQAR {metric.replace('_', ' ')}")
    files = [finish(fig, axes, out)]
    widths = sorted(pts["d_model"].unique())
    fig, axes = plt.subplots(1, len(widths), figsize=(3.8 * len(widths), 3.4), squeeze=False, sharey=True)
    for ax, d in zip(axes[0], widths):
        sub = pts[(pts["d_model"] == d)]
        sub = sub[sub["d_state"].isin(sub.groupby("model")["d_state"].transform("median"))]  # one state per mixer
        draw(ax, sub, "load", metric, "model")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sub["load"].unique()))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(f"d_model={d}")
        ax.set_xlabel("key-value pairs")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"MQAR {metric.replace('_', ' ')}")
    fig.suptitle("L = 16 x pairs up to 256; 512 with 64 pairs", fontsize=9)  # one line, not per panel: they overlap
    files.append(finish(fig, axes, out.with_name("recall_vs_pairs" + out.suffix)))
    return files


def plot_copy(pts: pd.DataFrame, out: Path, metric: str) -> list[Path]:
    pts = pts.assign(series=pts["model"] + " d" + pts["d_model"].astype(str))
    fig, axes = plt.subplots(1, 1, figsize=(4.6, 3.4), squeeze=False)
    ax = axes[0][0]
    draw(ax, pts, "load", metric, "series")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(pts["load"].unique()))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("span to copy (context L = 4 x span)")
    ax.set_ylabel(f"copy {metric.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    return [finish(fig, axes, out)]


def finish(fig, axes, out: Path) -> Path:
    for ax in axes[0]:
        ax.set_ylim(-0.03, 1.03)
    legend = {}
    for ax in axes[0]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    hollow = plt.Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="0.3")
    legend["unfitted (train EM < threshold)"] = hollow
    ncol = min(len(legend), 5 if len(axes[0]) > 1 else 2)  # one panel: a narrow legend, in rows
    rows = -(-len(legend) // ncol)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 + 0.06 * rows, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, bbox_inches="tight")  # nothing of the legend cut at the figure's edge
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="results folders / files (docs/results/recall_frontier)")
    ap.add_argument("--copy", action="store_true", help="the copy span sweep (experiment=copy_span)")
    ap.add_argument("--metric", choices=["token_accuracy", "accuracy"], default=None,
                    help="default: token_accuracy (per query) for MQAR, accuracy (exact match) for copy")
    ap.add_argument("--fit-threshold", type=float, default=FIT_THRESHOLD)
    ap.add_argument("--out", type=Path, default=Path("figures/recall_frontier.png"))
    args = ap.parse_args(argv)
    metric = args.metric or ("accuracy" if args.copy else "token_accuracy")
    df = load_results(args.paths)
    df = df[df["task"] == ("copy" if args.copy else "mqar")] if "task" in df else df
    pts = frontier_points(df, metric, args.fit_threshold) if not df.empty else pd.DataFrame()
    if pts.empty:
        raise SystemExit(f"no ok {('copy' if args.copy else 'mqar')} rows at the training length under {args.paths}")
    cols = ["model", "d_model", "d_state", "eval_len", "load", "seeds", "n_params", "state_bytes", metric, "lo",
            "hi", "train_em", "unfitted"]
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(pts[cols].to_string(index=False))
    files = plot_copy(pts, args.out, metric) if args.copy else plot_frontier(pts, args.out, metric)
    print("figures written:", ", ".join(map(str, files)))
    return pts


if __name__ == "__main__":
    main()

