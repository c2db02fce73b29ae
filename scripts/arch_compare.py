"""Recall against state size (zoology's figure 2 layout) from an ``experiment=arch_compare`` sweep.

    python scripts/arch_compare.py multirun/2026-12-01/03-00-00 [more dirs] [--length 64] [--out fig.png]

One panel per task; x = bytes of decode state per sequence at the evaluation length (the KV cache
for attention, the conv + SSM state for Mamba, both for hybrids: the rows' ``cache_bytes``), log
scale; y = exact match, averaged over depths (weighted by examples); one line per architecture
through its widths, or, where an architecture also sweeps ``d_state``, one line per width through its
state sizes (a width change and a state change are different knobs; one line through both would zigzag).
Each architecture keeps its colour and marker in every panel. The dashed line is the task's chance
floor (the best prompt-only shortcut, tasks/baselines.py): a point under it has learned nothing the
prompt does not give away.

A low held-out score says something about the architecture only if one knows why the arm failed.
Each point's run directory gives its training curve (logs/*/metrics.csv): the table lists the steps
trained and the last logged training loss and exact match, and a point whose training exact match
stayed below ``--fit-threshold`` is drawn hollow and labelled "unfitted": it did not fit its own
training data either, so it is under-trained or at capacity (a state too small to hold the
associations), and only a longer run or a larger state tells which. A point that fitted its training
rows and still fails the held-out ones did not generalise. Prints the points as a table too.
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
import pandas as pd  # noqa: E402
from figures.results import load_results  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from tasks.registry import TASKS  # noqa: E402
from tasks.vocab import Vocab  # noqa: E402

MARKERS = {"transformer": "o", "mamba": "s", "hybrid": "^", "gated_deltanet": "P", "sliding_window": "v",
           "mamba2": "D", "gla": "X", "retention": "*"}  # a family without an entry gets marker "x"
# an architecture's series: its colour, darker, lighter (a family without an entry is grey)
SHADES = {"transformer": ("tab:green", "#1b5e20", "#8fd18f"), "mamba": ("tab:orange", "#8c4a00", "#f5b971"),
          "hybrid": ("tab:blue", "#0d3c61", "#9ecae1"), "gated_deltanet": ("tab:red", "#7f0000", "#f4a3a3"),
          "sliding_window": ("tab:purple", "#3f1d5c", "#c9b3e0"), "mamba2": ("tab:brown", "#4e2a1e", "#d2ab99"),
          "gla": ("tab:olive", "#4d4d00", "#dede8a"), "retention": ("tab:cyan", "#005f6b", "#a6e6ee")}
COLORS = {family: shades[0] for family, shades in SHADES.items()}
WIDTH_STYLES = ("-", "--", ":", "-.")  # one per width of an architecture that sweeps d_state
FIT_THRESHOLD = 0.5  # training exact match below which a point did not fit its training data
LAST_LOGS = 4  # training rows averaged for the end-of-training loss / exact match


FIT_COLUMNS = ("train_steps", "train_loss", "train_em")  # rows carry them (pipeline/train/costs.py TrainFitProbe)


def training_fit(run_dir: str | Path) -> dict:
    """Steps trained, and the mean training loss / exact match over the last logged steps (NaN if no log):
    for rows written before the rows carried ``train_em`` themselves."""
    logs = sorted(Path(run_dir).glob("logs/*/metrics.csv"), key=lambda p: p.stat().st_mtime) if run_dir else []
    nan = float("nan")
    if not logs:
        return dict(train_steps=nan, train_loss=nan, train_em=nan)
    log = pd.read_csv(logs[-1])
    train = log.dropna(subset=["train/loss"]).tail(LAST_LOGS) if "train/loss" in log else log.iloc[:0]
    if train.empty:
        return dict(train_steps=nan, train_loss=nan, train_em=nan)
    em = train["train/exact_match"].mean() if "train/exact_match" in train else nan
    steps = int(log.dropna(subset=["train/loss"])["step"].max()) + 1  # validation rows may log one step later
    return dict(train_steps=steps, train_loss=float(train["train/loss"].mean()), train_em=float(em))


def points(df: pd.DataFrame, length: int | None, fit_threshold: float = FIT_THRESHOLD) -> pd.DataFrame:
    """One point per (run, task): accuracy at ``length`` (default: the run's training length), with its training fit
    (from the rows' own columns, else from the run directory's training log)."""
    ok = df[(df["status"] == "ok") & df["accuracy"].notna()].copy()
    ok = ok[ok["eval_len"] == (ok["train_len"] if length is None else length)]
    ok["weighted"] = ok["accuracy"] * ok["n_examples"]
    if "run_dir" not in ok:
        ok["run_dir"] = None
    g = ok.groupby(["run_id", "model", "task", "eval_len"], as_index=False).agg(
        weighted=("weighted", "sum"), n=("n_examples", "sum"), state_bytes=("cache_bytes", "max"),
        n_params=("n_params", "max"), run_dir=("run_dir", "first"),
        **{k: (f"model_{k}", "first") for k in ("d_model", "d_state") if f"model_{k}" in ok},
        **{k: (k, "first") for k in ("seed", "train_len", *FIT_COLUMNS) if k in ok})
    g["accuracy"] = g["weighted"] / g["n"]
    for k in FIT_COLUMNS:
        if k not in g:
            g[k] = float("nan")
    missing = g["train_em"].isna()
    if missing.any():
        logged = pd.DataFrame([training_fit(d) for d in g.loc[missing, "run_dir"]], index=g.index[missing])
        g.loc[missing, list(FIT_COLUMNS)] = logged[list(FIT_COLUMNS)]
    g["unfitted"] = g["train_em"] < fit_threshold  # NaN (no training log) compares False: drawn as fitted
    g["series"] = series(g)
    g = g.rename(columns={"train_steps": "steps"})  # the printed table's and points files' name
    return g.drop(columns=["weighted"]).sort_values(["task", "model", "state_bytes"])


def series(pts: pd.DataFrame) -> pd.Series:
    """The line each point belongs to: its architecture, split by width where that architecture sweeps
    ``d_state`` within the task ("mamba d=64": its state sizes; "mamba d=32": another line)."""
    label = pts["model"].astype(str)
    if "d_state" not in pts or "d_model" not in pts:
        return label
    sweeps = pts.groupby(["task", "model"])["d_state"].transform("nunique") > 1
    width = pts["d_model"].map(lambda d: f" d={int(d)}" if pd.notna(d) else "")
    return label.where(~sweeps, label + width)


def floor_of(task: str, length: int) -> float | None:
    conf = Path(ROOT) / "conf" / "task" / f"{task}.yaml"
    if task not in TASKS or not conf.exists():
        return None
    knobs = OmegaConf.to_container(OmegaConf.load(conf))
    knobs.pop("name", None)
    try:
        return TASKS.get(task)(**knobs).chance_floor(Vocab(256), length)["accuracy"]
    except (NotImplementedError, ValueError):
        return None


def series_styles(pts: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Series name -> (colour, line style), the same in every panel: an architecture's series get shades of
    its colour and their own dash, so "mamba", "mamba d=64" and "mamba d=32" are three legend entries one
    can tell apart."""
    out: dict[str, tuple[str, str]] = {}
    for model, names in pts.groupby("model")["series"]:
        shades = SHADES.get(str(model), (COLORS.get(str(model), "0.3"),))
        for i, name in enumerate(sorted(set(names), key=lambda n: (n != model, n))):
            out[name] = (shades[i % len(shades)], WIDTH_STYLES[i % len(WIDTH_STYLES)])
    return out


def plot(pts: pd.DataFrame, out: Path) -> None:
    tasks = sorted(pts["task"].unique())
    styles = series_styles(pts)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = pts[pts["task"] == task]
        for model, by_model in sub.groupby("model"):
            for name, m in by_model.groupby("series"):
                color, dash = styles[name]
                fitted, under = m[~m["unfitted"]], m[m["unfitted"]]
                # a line joins fitted points only: an unfitted one (under-trained or at capacity) is no trend
                ax.plot(fitted["state_bytes"], fitted["accuracy"], marker=MARKERS.get(model, "x"), color=color,
                        linestyle=dash if len(fitted) > 1 else "none", label=name)
                if len(under):  # hollow: the arm never fitted its training data (under-trained or at capacity)
                    ax.plot(under["state_bytes"], under["accuracy"], linestyle="none",
                            marker=MARKERS.get(model, "x"), markerfacecolor="white",
                            markeredgecolor=color, markersize=8, label="_nolegend_" if len(fitted) else name)
        if sub["unfitted"].any():  # one neutral legend entry for the hollow points of every architecture
            ax.plot([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="0.3",
                    label="unfitted (train EM < threshold)")
        floor = floor_of(task, int(sub["eval_len"].iloc[0]))
        if floor is not None:
            ax.axhline(floor, color="0.5", linestyle="--", linewidth=0.9, label="chance floor")
        ax.set_xscale("log", base=2)  # ticks at 8, 16, 32... KB: state sizes double along a sweep
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1024:g} KB"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # log-scale minor labels overlap at this width
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{task} (L={int(sub['eval_len'].iloc[0])})")
        ax.set_xlabel("decode state per sequence")
        ax.set_ylabel("exact match")
        ax.grid(alpha=0.3)
    legend = {}  # one legend under the panels (colours are per architecture everywhere), each label once
    for ax in axes[0]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(len(legend), 6), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help="sweep or run directories, results.jsonl files")
    ap.add_argument("--points", type=Path, default=None,
                    help="draw from a points file (JSONL, one line per point: the printed table's columns plus "
                         "model, d_model, d_state, eval_len), or a folder holding points.jsonl, instead of runs")
    ap.add_argument("--save-points", type=Path, default=None,
                    help="also write the points as JSONL (commit it under docs/results/<study>/ to redraw later)")
    ap.add_argument("--length", type=int, default=None, help="eval length (default: each run's train length)")
    ap.add_argument("--out", type=Path, default=Path("figures/arch_compare.png"))
    ap.add_argument("--fit-threshold", type=float, default=FIT_THRESHOLD,
                    help="training exact match below which a point is drawn hollow as unfitted")
    args = ap.parse_args(argv)
    if bool(args.paths) == bool(args.points):
        ap.error("give run directories / results files, or --points FILE, not both and not neither")
    if args.points:
        source = args.points / "points.jsonl" if args.points.is_dir() else args.points  # a study's results folder
        pts = pd.read_json(source, lines=True)
        pts["series"] = series(pts)
        pts = pts.sort_values(["task", "model", "state_bytes"])
    else:
        pts = points(load_results(args.paths), args.length, args.fit_threshold)
    if pts.empty:
        raise SystemExit(f"no ok rows at the requested length under {args.paths}")
    cols = ["task", "series", "run_id", "n_params", "state_bytes", "accuracy", "steps", "train_loss", "train_em",
            "unfitted"]
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(pts[cols].to_string(index=False))
    if args.save_points:
        keep = [c for c in ("task", "model", "d_model", "d_state", "eval_len", *cols[2:]) if c in pts]
        pts[keep].to_json(args.save_points, orient="records", lines=True)
    plot(pts, args.out)
    print(f"figure written to {args.out}")
    return pts


if __name__ == "__main__":
    main()
