"""Pareto: accuracy vs cache bytes per sequence, one colour per cache policy, the front as a line.

Per task, one panel per eval length where at least two configurations ran (the last four): each
point is one label (model/pos/attention/cache, budgets included), its marker the model family. The front joins the
points no other point beats with fewer bytes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.lines import Line2D

from pipeline.results.identity import key_value

from .base import FIGURES, table_kind
from .results import final_phase, legend_names, ok_rows, weighted_mean
from .stats import n_note, wilson
from .style import DOUBLE_COL, FAMILY_MARKERS, PLAIN, SINGLE_COL, Palette, legend_below, paper_style, save


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
        acc = weighted_mean(s["accuracy"], s["n_examples"])
        n = float(pd.to_numeric(s["n_examples"], errors="coerce").fillna(0).sum())
        lo, hi = wilson(acc, n)
        rows.append({"label": label, "cache_policy": s["cache_policy"].iloc[0], "model": s["model"].iloc[0],
                     "accuracy": acc, "cache_bytes": float(s["cache_bytes"].max()), "n": n, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["label", "cache_policy", "model", "accuracy", "cache_bytes", "n", "lo", "hi"])


MODEL_KEY = ("model", "train_len", "train_task", "model_d_model", "model_n_layers", "model_d_state", "imported_from")


def _models_of_each_task(df: pd.DataFrame):
    """(task, rows, file suffix): where a task's rows compare cache policies, one figure per trained model
    (architecture, size, training task and length), so policies of one model share an axes and another
    model's points never sit among them; a one-policy table (rope_extension: rules of one study) stays whole."""
    for task, g in df.groupby("task", sort=True):
        keys = [c for c in MODEL_KEY if c in g.columns]
        policies = g.loc[g["cache_bytes"].fillna(0) > 0, "cache_policy"].nunique() if "cache_policy" in g else 0
        models = g[keys].apply(lambda r: "|".join(key_value(v) for v in r), axis=1) if keys else \
            pd.Series("", index=g.index)
        if policies < 2 or models.nunique() < 2:
            yield task, g, ""
            continue
        drawable = [(m, part) for m, part in g.groupby(models, sort=True) if _has_panel(part)]
        if len(drawable) < 2:
            yield task, (drawable[0][1] if drawable else g), ""
            continue
        varying = [i for i, c in enumerate(keys) if g[c].map(key_value).nunique() > 1]
        for model, part in drawable:  # named by what differs: pareto_niah_64_niah_128
            parts = model.split("|")
            yield task, part, "_" + "_".join(parts[i] for i in varying if parts[i] not in ("", "-"))


def _has_panel(g: pd.DataFrame) -> bool:
    """At least two points (labels with cache bytes and an accuracy) at one eval length."""
    ok = ok_rows(g)
    return any(len(pareto_points(g[g["eval_len"] == L]).dropna(subset=["accuracy"])) >= 2
               for L in ok.loc[ok["cache_bytes"].fillna(0) > 0, "eval_len"].dropna().unique())


def plot_pareto(df: pd.DataFrame, out: Path, palette: Palette) -> list[Path]:
    """One panel per eval length (up to four, longest last): quality against bytes as length grows."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter

    paths: list[Path] = []
    df = final_phase(df)
    for task, g, suffix in _models_of_each_task(df):
        ok = ok_rows(g)
        lengths = sorted(ok.loc[ok["cache_bytes"].fillna(0) > 0, "eval_len"].dropna().unique())
        # points without an accuracy (eval=lm / eval=sinks rows measure nll / sink mass) are no points
        panels = [(L, p) for L in lengths
                  if len(p := pareto_points(g[g["eval_len"] == L]).dropna(subset=["accuracy"])) >= 2][-4:]
        if not panels:
            continue
        with paper_style():
            width = SINGLE_COL if len(panels) == 1 else DOUBLE_COL
            fig, axes = plt.subplots(1, len(panels), figsize=(width, 2.3), sharey=True, squeeze=False)
            all_pts = pd.concat([p for _, p in panels])
            # colour by cache policy when the points differ in it (kv_policies); else by label
            # (rope_extension: every rule uses the full cache, so policy colours would all be black)
            by_policy = all_pts["cache_policy"].nunique() > 1
            color = (lambda r: palette.cache_color(r.cache_policy)) if by_policy else (lambda r: palette.color(r.label))
            drew_front = False
            for ax, (length, pts) in zip(axes[0], panels):
                front = pareto_front(pts)
                if len(front) > 1:  # a front of one point is no front
                    ax.plot(front["cache_bytes"] / 2**20, front["accuracy"], color="0.5", linewidth=0.9,
                            drawstyle="steps-post", zorder=1)
                    drew_front = True
                # points at the same spot (e.g. quest matching full) are fanned out a little, not hidden
                dup = pts.groupby([pts["cache_bytes"].round(-2), pts["accuracy"].round(3)]).cumcount()
                for r, k in zip(pts.itertuples(index=False), dup):
                    x = r.cache_bytes / 2**20 * (1.08 ** k)
                    ax.errorbar(x, r.accuracy, yerr=[[r.accuracy - r.lo], [r.hi - r.accuracy]], color=color(r),
                                marker=palette.marker(r.label), markersize=4.5, capsize=1.5, elinewidth=0.6,
                                linestyle="none", zorder=2, markeredgecolor="white", markeredgewidth=0.4)
                ax.set_xscale("log")
                lo, hi = pts["cache_bytes"].min() / 2**20, pts["cache_bytes"].max() / 2**20
                ax.set_xlim(lo / 1.6, hi * 1.6)  # at least one 1-2-5 tick, points off the frame
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 0.02, 0.05, 0.1, ...
                ax.xaxis.set_major_formatter(PLAIN)
                ax.xaxis.set_minor_formatter(NullFormatter())  # no crowded minor labels
                ax.set_xlabel("KV cache / state (MiB/seq)")
                ax.set_ylim(-0.03, 1.03)
                ax.set_title(f"L={int(length)}" if len(panels) > 1 else f"{task}, L={int(length)} ({n_note(pts['n'])})")
            axes[0][0].set_ylabel("exact match (95% CI)")
            if len(panels) > 1:
                fig.suptitle(f"{task} ({n_note(all_pts['n'])})")
            families = [f for f in FAMILY_MARKERS if f in set(all_pts["model"].astype(str))]
            dot = dict(marker="o", linestyle="none")
            if by_policy:
                names = sorted({str(c) for c in all_pts["cache_policy"]}, key=lambda c: (c != "full", c))
                handles = [Line2D([], [], color=palette.cache_color(c), **dot) for c in names]
            else:
                order = palette.sort(all_pts["label"])
                short = legend_names(g[g["label"].isin(order)])
                names = [short.get(lb, lb) for lb in order]
                handles = [Line2D([], [], color=palette.color(lb), **dict(dot, marker=palette.marker(lb)))
                           for lb in order]
            if by_policy and len(families) > 1:  # marker shapes explained only when they differ
                handles += [Line2D([], [], color="0.3", **dict(dot, marker=FAMILY_MARKERS[f])) for f in families]
                names = names + families
            if drew_front:
                handles.append(Line2D([], [], color="0.5", linewidth=0.9))
                names = names + ["Pareto front"]
            legend_below(fig, handles, names)
            paths += save(fig, out, f"pareto_{task}{suffix}")
    return paths


FIGURES.register("pareto")(table_kind(plot_pareto, "2+ labels with cache_bytes at one eval length",
                                      "Accuracy vs KV cache bytes per sequence, the Pareto front as a line."))
