"""Collect a sweep: every results.jsonl under a directory into one tidy table (Parquet + CSV).

    python scripts/collect.py multirun/2026-11-26/12-00-00 [--out PREFIX] [--versus LABEL [--where QUERY]]

Writes PREFIX.parquet and PREFIX.csv (default: SWEEP_DIR/collected) and prints a report: jobs
with no results file (missing, with the last line of their train.log), rows with status oom/error
(failed), unreadable lines (a torn last line is skipped, but reported and counted), rows with wrong
values (a string or NaN in a numeric column, an impossible depth: skipped, reported), cells written
more than once (duplicates: same run, config hash and cell), then a summary table of the sweep.
Every sound row is kept, failed ones included. ``--versus LABEL`` adds the differences a claim is about:
every other label's exact match minus LABEL's, per eval length and overall, with 95% intervals over
examples (paired where the rows share examples) and over seeds (scripts/figures/stats.py); ``--where``
restricts it to the rows of a pandas query (e.g. ``"depth > 0 and depth < 1"``: the cells no positional
guess passes).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):  # pipeline.results.rows (schema) and the figures package
    if p not in sys.path:
        sys.path.insert(0, p)

import pandas as pd  # noqa: E402
from figures.results import RESULTS_FILE, find_jobs, load_results, make_palette, weighted_mean  # noqa: E402
from figures.stats import difference  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from pipeline.results.rows import CELL_KEYS  # noqa: E402


@dataclass
class Report:
    table: pd.DataFrame
    missing: list[Path] = field(default_factory=list)  # job dirs without results.jsonl
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)  # rows with status oom / error
    bad_lines: list[dict[str, Any]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)  # files written
    bad_rows: list[dict[str, Any]] = field(default_factory=list)  # rows with wrong values (skipped)
    duplicates: pd.DataFrame = field(default_factory=pd.DataFrame)  # ok/oom rows of cells written twice


def _overrides(job: Path) -> str:
    f = job / ".hydra" / "overrides.yaml"
    if not f.exists():
        return ""
    import yaml

    items = yaml.safe_load(f.read_text()) or []
    return " ".join(map(str, items))


def _last_log_line(job: Path) -> str:
    f = job / "train.log"
    if not f.exists():
        return ""
    lines = [s for s in f.read_text(errors="replace").splitlines() if s.strip()]
    return lines[-1][-120:] if lines else ""


def collect(sweep: str | Path, out: str | Path | None = None) -> Report:
    """Gather, write PREFIX.parquet / PREFIX.csv, and find missing jobs and failed rows."""
    sweep = Path(sweep)
    if not sweep.is_dir():
        raise NotADirectoryError(f"SWEEP_DIR={sweep} is not a directory")
    df = load_results([sweep])
    jobs = find_jobs(sweep)
    # A job counts as done if a results file sits in it or below it (eval runs nest run dirs).
    done = {Path(f).resolve().parent for f in df.attrs.get("files", [])}
    missing = [j for j in jobs if not any(d == j.resolve() or j.resolve() in d.parents for d in done)]
    if not df.empty:
        by_dir = {d: _overrides(Path(d)) for d in df["run_dir"].dropna().unique()}  # one read per job
        df["overrides"] = df["run_dir"].map(by_dir).fillna("")
    failed = df[df["status"].isin(["oom", "error"])] if not df.empty else df
    dups = duplicate_cells(df)
    prefix = Path(out) if out else sweep / "collected"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.with_name(prefix.name + ".parquet"), prefix.with_name(prefix.name + ".csv")]
    df.to_parquet(paths[0], index=False)
    df.to_csv(paths[1], index=False)
    return Report(df, missing, failed, df.attrs.get("bad_lines", []), paths, df.attrs.get("bad_rows", []), dups)


def duplicate_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Results (ok / oom rows) of one cell of one run and config written more than once.

    A cell is its run, config hash, stage, task, length, depth, cache policy and slice group; an
    error row followed by a retry is not a duplicate.
    """
    if df.empty:
        return df
    keys = [k for k in CELL_KEYS if k in df.columns] + sorted(c for c in df.columns if c.startswith("slice_"))
    results = df[df["status"].isin(["ok", "oom"]) & df["run_id"].notna()]
    filled = results[keys].astype(str)  # NaN-safe grouping
    return results[filled.duplicated(keep=False)]


def summary_table(df: pd.DataFrame, title: str = "sweep") -> Table:
    """One line per (label, stage, task): cells by status, accuracy overall beside the mean floor of the same
    cells (rows' ``floor``), at train_len / longest."""
    table = Table(title=title)
    for col in ("label", "stage", "task", "runs", "ok", "oom", "err", "acc", "floor", "acc@train", "acc@max L",
                "max L", "peak MiB", "cache MiB/seq"):
        text = col in ("label", "stage", "task")
        table.add_column(col, justify="left" if text else "right", overflow="fold",
                         min_width=24 if col == "label" else None)
    if df.empty:
        return table
    palette = make_palette(df)
    stage = df["stage"].astype(str) if "stage" in df.columns else pd.Series("-", index=df.index)
    keys = df.assign(_stage=stage).groupby(["label", "_stage", "task"], dropna=False)

    def fmt(v: float, spec: str = ".3f") -> str:
        return "-" if v is None or pd.isna(v) else format(v, spec)

    for (label, st, task), g in sorted(keys, key=lambda kv: (palette.rank(kv[0][0]), str(kv[0][1]),
                                                             str(kv[0][2]))):
        ok = g[g["status"] == "ok"]
        counts = g["status"].value_counts()
        max_len = ok["eval_len"].max() if not ok.empty else None
        at_train = ok[ok["eval_len"] == ok["train_len"]]
        at_max = ok[ok["eval_len"] == max_len]
        floored = ok.dropna(subset=["floor"]) if "floor" in ok.columns else ok.iloc[:0]  # best shortcut, same cells
        table.add_row(
            escape(str(label)), str(st), escape(str(task)), str(g["run_id"].nunique() or g["run_dir"].nunique()),
            str(counts.get("ok", 0)), str(counts.get("oom", 0)), str(counts.get("error", 0)),
            fmt(weighted_mean(ok["accuracy"], ok["n_examples"]) if not ok.empty else None),
            fmt(weighted_mean(floored["floor"], floored["n_examples"]) if not floored.empty else None),
            fmt(weighted_mean(at_train["accuracy"], at_train["n_examples"]) if not at_train.empty else None),
            fmt(weighted_mean(at_max["accuracy"], at_max["n_examples"]) if not at_max.empty else None),
            fmt(max_len, ".0f"), fmt(ok["peak_mem_bytes"].max() / 2**20, ".2f"),
            fmt(ok["cache_bytes"].max() / 2**20, ".3f"),
        )
    return table


def difference_table(df: pd.DataFrame, versus: str) -> Table:
    """Per label (and task) other than ``versus``: exact match minus ``versus``'s, per eval length and
    over all, with the 95% interval over examples (paired where possible) and over seeds."""
    ok = df[df["status"] == "ok"]
    known = sorted(ok["label"].astype(str).unique())
    if versus not in known:  # a unique part of a label names it too ("cache=full" in "…/cache=full")
        matches = [k for k in known if versus in k]
        if len(matches) != 1:
            raise SystemExit(f"--versus {versus!r}: no ok rows with that label (or {len(matches)} labels contain "
                             f"it); labels: {known}")
        versus = matches[0]
    ref = ok[ok["label"].astype(str) == versus]
    table = Table(title=f"difference in exact match against {versus} (95% intervals)")
    for col in ("label", "task", "eval_len", "acc", f"acc {versus}", "diff", "95% CI examples", "95% CI seeds",
                "seeds", "n", "paired"):
        table.add_column(col, justify="left" if col in ("label", "task") else "right", overflow="fold")
    palette = make_palette(df)
    for label in sorted(set(ok["label"].astype(str)) - {versus}, key=palette.rank):
        arm = ok[ok["label"].astype(str) == label]
        for task in sorted(arm["task"].astype(str).unique()):
            a_t, b_t = arm[arm["task"].astype(str) == task], ref[ref["task"].astype(str) == task]
            for length in sorted(a_t["eval_len"].unique()) + ["all"]:
                a = a_t if length == "all" else a_t[a_t["eval_len"] == length]
                b = b_t if length == "all" else b_t[b_t["eval_len"] == length]
                d = difference(a, b)
                if not d.n:
                    continue
                fmt = "{:+.3f}".format
                table.add_row(escape(label), escape(task), str(length),
                              f"{weighted_mean(a['accuracy'], a['n_examples']):.3f}",
                              f"{weighted_mean(b['accuracy'], b['n_examples']):.3f}", fmt(d.mean),
                              f"[{fmt(d.lo)}, {fmt(d.hi)}]",
                              "-" if d.seeds < 2 else f"[{fmt(d.seed_lo)}, {fmt(d.seed_hi)}]",
                              str(d.seeds), str(d.n), "yes" if d.paired else "no")
    return table


def print_report(rep: Report, sweep: str | Path, console: Console | None = None, versus: str | None = None,
                 where: str | None = None) -> None:
    console = console or Console(width=max(180, Console().width))  # never squeeze numbers
    df = rep.table
    n_files = len(df.attrs.get("files", []))
    console.print(f"[bold]{sweep}[/]: {len(df)} rows from {n_files} {RESULTS_FILE} file(s); "
                  f"{len(rep.missing)} job(s) missing, {len(rep.failed)} failed row(s), "
                  f"{len(rep.bad_lines)} unreadable line(s), {len(rep.bad_rows)} row(s) with wrong values, "
                  f"{len(rep.duplicates)} duplicated row(s)")
    if rep.missing:
        t = Table(title=f"missing: {len(rep.missing)} job(s) without {RESULTS_FILE}")
        for col in ("job", "overrides", "last train.log line"):
            t.add_column(col, overflow="fold")
        for job in rep.missing:
            t.add_row(str(job), escape(_overrides(job)), escape(_last_log_line(job)))
        console.print(t)
    if not rep.failed.empty:
        # one line per (job, label, task, status, message): a sweep can fail thousands of cells alike
        t = Table(title=f"failed: {len(rep.failed)} row(s) with status oom/error")
        for col in ("job", "label", "task", "status", "rows", "eval_len", "error"):
            t.add_column(col, overflow="fold")
        f = rep.failed.assign(_msg=rep.failed["error"].fillna("").astype(str).str.slice(0, 100),
                              _job=rep.failed["run_dir"].fillna("?").map(lambda d: Path(d).name))
        for (job, label, task, status, msg), g in f.groupby(["_job", "label", "task", "status", "_msg"],
                                                            dropna=False):
            lengths = ",".join(str(int(L)) for L in sorted(g["eval_len"].dropna().unique()))
            t.add_row(str(job), escape(str(label)), str(task), str(status), str(len(g)), lengths, escape(msg))
        console.print(t)
    for b in rep.bad_lines:
        kind = "torn last line" if b["last"] else "corrupt line"
        console.print(f"[yellow]unreadable[/] {b['path']}:{b['line']} ({kind}, skipped): {b['text']!r}")
    for b in rep.bad_rows:
        console.print(f"[yellow]wrong value[/] {b['path']}:{b['line']} (row skipped): {b['reason']}")
    if not rep.duplicates.empty:
        t = Table(title=f"duplicates: {len(rep.duplicates)} row(s) of cells written more than once")
        for col in ("run_id", "config_hash", "task", "eval_len", "depth", "cache", "rows", "where"):
            t.add_column(col, overflow="fold")
        d = rep.duplicates
        for key, g in d.groupby(["run_id", "config_hash", "task", "eval_len", "depth", "cache"], dropna=False):
            where = ", ".join(f"{Path(str(s)).name}:{int(n)}" for s, n in zip(g["source"], g["line"]) if pd.notna(n))
            t.add_row(*(escape(str(k)) for k in key), str(len(g)), where[:200])
        console.print(t)
    if not df.empty:
        console.print(summary_table(df, title=f"sweep summary: {sweep}"))
        if versus:
            table = difference_table(df.query(where) if where else df, versus)
            if where:
                table.title += f" where {where}"
            console.print(table)
    console.print("written: " + ", ".join(str(p) for p in rep.paths))


def main(argv: list[str] | None = None) -> Report:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="a sweep directory (multirun/<date>/<time>) or outputs/")
    ap.add_argument("--out", default=None, help="output prefix (default: SWEEP_DIR/collected)")
    ap.add_argument("--versus", default=None, metavar="LABEL",
                    help="print every other label's exact match minus this label's, with 95%% intervals")
    ap.add_argument("--where", default=None, metavar="QUERY", help="--versus on the rows of this pandas query only")
    args = ap.parse_args(argv)
    rep = collect(args.sweep, args.out)
    print_report(rep, args.sweep, versus=args.versus, where=args.where)
    return rep


if __name__ == "__main__":
    main()
