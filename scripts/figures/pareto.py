"""Pareto: accuracy vs cache bytes per sequence, one colour per cache policy, the front as a line.

Per task, at the longest eval length where at least two configurations ran: each point is one label
(model/pos/attention/cache, budgets included), its marker the model family. The front joins the
points no other point beats with fewer bytes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.lines import Line2D

from .results import ok_rows, weighted_mean
from .style import FAMILY_MARKERS, PLAIN, SINGLE_COL, Palette, cache_policy, legend_below, paper_style, save


def pareto_front(points: pd.DataFrame, x: str = "cache_bytes", y: str = "accuracy") -> pd.DataFrame:
    """Points not dominated (fewer or equal bytes and higher accuracy), sorted by bytes."""
    best, keep = -1.0, []
    for idx, row in points.sort_values([x, y], ascending=[True, False]).iterrows():
        if row[y] > best:
            keep.append(idx)
            best = row[y]
    return points.loc[keep].sort_values(x)


def pareto_points(g: pd.DataFrame) -> pd.DataFrame:
    ok = ok_rows(g)
    ok = ok[ok["cache_bytes"].fillna(0) > 0]
    rows = []
    for label, s in ok.groupby("label"):
        rows.append({"label": label, "cache": s["cache"].iloc[0], "model": s["model"].iloc[0],
                     "accuracy": weighted_mean(s["accuracy"], s["n_examples"]),
                     "cache_bytes": float(s["cache_bytes"].max())})
    return pd.DataFrame(rows, columns=["label", "cache", "model", "accuracy", "cache_bytes"])


def plot_pareto(df: pd.DataFrame, out: Path, palette: Palette) -> list[Path]:
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    for task, g in df.groupby("task", sort=True):
        ok = ok_rows(g)
        lengths = sorted(ok.loc[ok["cache_bytes"].fillna(0) > 0, "eval_len"].dropna().unique(), reverse=True)
        chosen = next(((L, p) for L in lengths if len(p := pareto_points(g[g["eval_len"] == L])) >= 2), None)
        if chosen is None:
            continue
        length, pts = chosen
        pts = pts.dropna(subset=["accuracy"])
        with paper_style():
            fig, ax = plt.subplots(figsize=(SINGLE_COL, 2.3))
            front = pareto_front(pts)
            ax.plot(front["cache_bytes"] / 2**20, front["accuracy"], color="0.5", linewidth=0.9,
                    drawstyle="steps-post", zorder=1)
            for r in pts.itertuples(index=False):
                ax.scatter(r.cache_bytes / 2**20, r.accuracy, color=palette.cache_color(r.cache),
                           marker=palette.marker(r.label), s=22, zorder=2, edgecolor="white", linewidth=0.4)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(PLAIN)
            if pts["cache_bytes"].max() < 10 * pts["cache_bytes"].min():  # < 1 decade: no major ticks
                ax.xaxis.set_minor_formatter(PLAIN)
            ax.set_xlabel("KV cache / state per sequence (MiB)")
            ax.set_ylabel("exact match")
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{task}, eval length {int(length)}")
            policies = sorted({cache_policy(c) for c in pts["cache"]}, key=lambda c: (c != "full", c))
            families = [f for f in FAMILY_MARKERS if f in set(pts["model"].astype(str))]
            dot = dict(marker="o", linestyle="none")
            handles = [Line2D([], [], color=palette.cache_color(c), **dot) for c in policies]
            handles += [Line2D([], [], color="0.3", **dict(dot, marker=FAMILY_MARKERS[f])) for f in families]
            handles.append(Line2D([], [], color="0.5", linewidth=0.9))
            legend_below(fig, handles, policies + families + ["Pareto front"], ncol=3)
            paths += save(fig, out, f"pareto_{task}")
    return paths
