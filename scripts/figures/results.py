"""Read results rows into one tidy table: ``load_results(paths) -> pd.DataFrame``.

Accepts run directories, sweep directories (every ``results.jsonl`` below), ``results.jsonl`` files
and tables written by ``scripts/collect.py`` (``.parquet`` / ``.csv``). Nothing is dropped quietly:
a line that is not JSON (a torn last line after a crash) is skipped, but listed in
``df.attrs["bad_lines"]`` and logged; a row with a wrong value (a string or NaN in a numeric
column, a depth outside [0, 1], an unknown status) is skipped and listed in ``df.attrs["bad_rows"]``,
so the caller can report and count both.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.results.identity import present
from pipeline.results.labels import labels, legacy_identity, short_labels
from pipeline.results.rows import ROW_FIELDS, STATUSES

from .style import Palette, label_sort_key

log = logging.getLogger(__name__)
RESULTS_FILE = "results.jsonl"
TABLE_SUFFIXES = (".parquet", ".csv")
# Columns added here (not by the pipeline): where each row came from, and the plotting label.
PROVENANCE = ("source", "line", "run_dir")


@dataclass
class BadLine:
    path: str
    line: int  # 1-based
    last: bool  # the file's last line: a torn write, not corruption in the middle
    text: str  # the first characters, for the report


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """Every row of one results file with its ``source`` and ``line``, and the lines that failed."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    last = max((i for i, s in enumerate(lines) if s.strip()), default=-1)
    rows, bad = [], []
    for i, text in enumerate(lines):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            bad.append(BadLine(str(path), i + 1, i == last, text[:80]))
            continue
        row.update(source=str(path), line=i + 1, run_dir=str(path.parent))
        rows.append(row)
    return rows, bad


# Columns that must hold a finite number (or nothing); fractions must lie in [0, 1].
NUMERIC = ("train_len", "eval_len", "depth", "seed", "n_examples", "accuracy", "token_accuracy", "peak_mem_bytes",
           "cache_bytes", "tokens_per_s", "tf_accuracy", "tf_token_accuracy", "decode_tf_agreement",
           "decode_tokens_per_s", "train_step_s", "train_peak_mem_bytes", "trainable_params", "n_params")
FRACTIONS = ("depth", "accuracy", "token_accuracy", "tf_accuracy", "tf_token_accuracy", "decode_tf_agreement")


@dataclass
class BadRow:
    path: str
    line: int  # 1-based line of a results.jsonl, or the table row (1-based, after the header)
    reason: str


def row_problem(row: dict[str, Any]) -> str | None:
    """Why a row cannot be used (a wrong type or an impossible value), or None if it is sound."""
    status = row.get("status")
    if status not in STATUSES:
        return f"status={status!r}; allowed: {STATUSES}"
    for col in NUMERIC:
        v = row.get(col)
        if v is None:
            continue
        if not _is_number(v):
            return f"{col}={v!r} is not a number"
        if not math.isfinite(v):
            return f"{col}={v!r} is not finite"
        if col in FRACTIONS and not 0 <= v <= 1:
            return f"{col}={v!r} is outside [0, 1]"
    measured = row.get("accuracy") is not None or any(row.get(c) is not None for c in ("nll", "sink_mass"))
    if status == "ok" and not measured:  # eval=lm rows measure nll, eval=sinks rows sink_mass
        return "status='ok' without an accuracy"
    return None


def _table_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of a collected table as dicts, missing cells as None (CSV has no None)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v.item() if hasattr(v, "item") else v)
             for k, v in r.items()} for r in df.to_dict("records")]


def split_bad_rows(rows: list[dict[str, Any]], path: str | Path, lines: list[int]) -> tuple[list[dict], list[BadRow]]:
    good, bad = [], []
    for row, line in zip(rows, lines):
        problem = row_problem(row)
        if problem is None:
            good.append(row)
        else:
            bad.append(BadRow(str(path), line, problem))
    return good, bad


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """The results files named by ``paths``: directories are searched recursively."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            # run / sweep dirs hold results.jsonl files; a committed study (docs/results/<study>/) holds
            # its rows as *.jsonl files side by side
            found += sorted(p.rglob(RESULTS_FILE)) or sorted(p.glob("*.jsonl"))
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such results file or directory: {p}")
    seen: set[Path] = set()
    return [f for f in found if not (f.resolve() in seen or seen.add(f.resolve()))]


def find_files(paths: Iterable[str | Path], name: str) -> list[Path]:
    """Files called ``name`` (e.g. metrics.csv, gates.pt) under the directories among ``paths``."""
    out: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            out.update(f.resolve() for f in p.rglob(name))
    return sorted(out)


def find_jobs(root: str | Path) -> list[Path]:
    """Job directories below ``root`` (Hydra wrote ``.hydra/`` or a ``train.log`` there)."""
    root = Path(root)
    jobs = {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    jobs |= {p.parent for p in root.rglob("train.log")}
    return sorted(jobs)


def run_dir_of(path: str | Path) -> Path:
    """The run directory holding a file written somewhere inside it (logs/version_0/metrics.csv)."""
    path = Path(path).resolve()
    for parent in path.parents:
        if any((parent / name).exists() for name in (RESULTS_FILE, ".hydra", "train.log")):
            return parent
    return path.parent


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Every schema column present; numeric columns numeric; mixed columns as strings (Parquet-safe)."""
    df = df.copy()
    for col in ROW_FIELDS + PROVENANCE:
        if col not in df.columns:
            df[col] = None
    for col in df.columns:
        if df[col].dtype != object:
            continue
        values = [v for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if values and all(_is_number(v) for v in values):
            df[col] = pd.to_numeric(df[col])
        elif values and all(isinstance(v, bool) for v in values):
            df[col] = df[col].astype("boolean")
        elif values and not all(isinstance(v, str) for v in values):
            df[col] = df[col].map(lambda v: None if v is None else v if isinstance(v, str) else
                                  json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v))
    # Pipeline columns first, in schema order; extras after, sorted, so tables diff cleanly.
    first = [c for c in ROW_FIELDS + PROVENANCE if c in df.columns]
    return df[first + sorted(c for c in df.columns if c not in first)]


def add_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Identity columns for rows written before they existed (the one compatibility reader,
    ``pipeline.results.labels.legacy_identity``), then a ``label`` column: one legend entry per identity
    (pipeline/results/labels.py), the zero-shot / fine-tuned split aside (a line style, see ``phase_column``)."""
    df = df.copy()
    if df.empty:
        df["label"] = pd.Series(dtype=str)
        return df
    records = _table_rows(df)
    legacy = pd.DataFrame([legacy_identity(r) for r in records], index=df.index)
    for col in legacy.columns:
        df[col] = df[col].where(df[col].map(present), legacy[col]) if col in df.columns else legacy[col]
    for col in ("pos_rule", "cache_policy"):  # figures read them; rows of a Mamba-only table have neither
        if col not in df.columns:
            df[col] = None
    df["label"] = labels(_table_rows(df))
    return df


def legend_names(df: pd.DataFrame) -> dict[str, str]:
    """label -> its legend text among the series of ``df`` drawn together: only what differs between them
    (pipeline.results.labels.short_labels); colours and order stay keyed by the table-wide label."""
    if df.empty:
        return {}
    return short_labels(_table_rows(df.drop_duplicates("label")))


ZERO_SHOT, FINE_TUNED, TRAINED = "zero-shot", "fine-tuned", "trained"


def phase_column(df: pd.DataFrame) -> pd.Series:
    """``zero-shot`` (stage=zero_shot), ``fine-tuned`` (extend / duo_gates / finetuned=True) or ``trained``.

    Rows without ``finetuned`` (eval.py runs, older rows) or with mixed types never break this."""
    stage = df["stage"].astype(str) if "stage" in df.columns else pd.Series("pretrain", index=df.index)
    tuned = df["finetuned"].map(lambda v: str(v).lower() == "true") if "finetuned" in df.columns else False
    phase = np.where(stage == "zero_shot", ZERO_SHOT,
                     np.where(stage.isin(["extend", "duo_gates"]) | tuned, FINE_TUNED, TRAINED))
    return pd.Series(phase, index=df.index)


def final_phase(df: pd.DataFrame) -> pd.DataFrame:
    """Drop the zero-shot rows of labels that were also fine-tuned: one point or one line is one model,
    never a pool of before and after."""
    if "stage" not in df.columns:
        return df
    zero = df["stage"].astype(str) == "zero_shot"
    tuned = set(df.loc[~zero, "label"])
    return df[~(zero & df["label"].isin(tuned))]


def load_results(paths: Iterable[str | Path] | str | Path) -> pd.DataFrame:
    """One tidy table of every row under ``paths`` (results.jsonl, run/sweep dirs, parquet, csv).

    ``df.attrs["bad_lines"]`` lists unreadable lines (dicts of path, line, last, text) and
    ``df.attrs["files"]`` the files read.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames, bad, bad_rows = [], [], []
    files = find_results(paths)
    for f in files:
        if f.suffix in TABLE_SUFFIXES:
            try:
                table = pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f)
            except Exception as err:  # a truncated or foreign file: skip it, say so
                bad_rows.append(BadRow(str(f), 0, f"unreadable table ({type(err).__name__}: {err})"[:200]))
                continue
            rows = _table_rows(table)
            lines = list(range(1, len(rows) + 1))
        else:
            rows, b = read_jsonl(f)
            bad += b
            lines = [r["line"] for r in rows]
        rows, b_rows = split_bad_rows(rows, f, lines)
        bad_rows += b_rows
        frames.append(pd.DataFrame(rows))
    for b in bad:
        log.warning("unreadable line %s:%d (%s): %r", b.path, b.line, "torn last line" if b.last else
                    "corrupt", b.text)
    for r in bad_rows:
        log.warning("skipped row %s:%d: %s", r.path, r.line, r.reason)
    frames = [f for f in frames if not f.empty]
    df = pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
    df = add_labels(tidy(df))
    df.attrs["bad_lines"] = [asdict(b) for b in bad]
    df.attrs["bad_rows"] = [asdict(r) for r in bad_rows]
    df.attrs["files"] = [str(f) for f in files]
    return df


def make_palette(df: pd.DataFrame) -> Palette:
    """The legend order and colours of every label in ``df`` (family, pos rule, attention, cache)."""
    if df.empty or "label" not in df:
        return Palette(order=[])
    first = _table_rows(df.drop_duplicates("label"))
    keyed = sorted(first, key=lambda r: label_sort_key(r) + (r["label"],))
    caches = sorted({str(c) for c in df["cache_policy"].dropna()}) if "cache_policy" in df.columns else []
    return Palette(order=[r["label"] for r in keyed], family={r["label"]: str(r["model"]) for r in keyed},
                   cache_order=caches)


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def weighted_mean(values: pd.Series, weights: pd.Series) -> float:
    """Mean of ``values`` weighted by example counts (rows of one cell split by slice group)."""
    w = weights.fillna(0).astype(float)
    v = values.astype(float)
    keep = v.notna()
    if keep.any() and w[keep].sum() > 0:
        return float((v[keep] * w[keep]).sum() / w[keep].sum())
    return float(v.mean()) if keep.any() else float("nan")


def accuracy_by(df: pd.DataFrame, keys: list[str], value: str = "accuracy") -> pd.DataFrame:
    """Example-weighted ``value`` of the ok rows per ``keys`` (over seeds, depths, slice groups)."""
    ok = ok_rows(df).dropna(subset=[value])
    if ok.empty:
        return pd.DataFrame(columns=keys + [value])
    out = ok.groupby(keys, dropna=False).apply(
        lambda g: weighted_mean(g[value], g["n_examples"]), include_groups=False)
    return out.rename(value).reset_index()
