"""Uncertainty of an exact-match rate (the Wilson score interval of a binomial proportion), and of
the difference between two arms (paired per example, and across seeds): the statistics of every
figure, table and claim.

Wilson rather than the normal approximation because accuracies here sit at 0 or 1 often, where the
normal interval collapses to a point (Brown, Cai & DasGupta 2001, "Interval estimation for a
binomial proportion").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

Z95 = 1.959963984540054


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the 95% Wilson interval of a proportion ``p`` observed over ``n`` trials."""
    if not n or n <= 0 or p is None or math.isnan(p):
        return float("nan"), float("nan")
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def accuracy_with_interval(df: pd.DataFrame, keys: list[str], value: str = "accuracy") -> pd.DataFrame:
    """Per ``keys``: example-weighted ``value`` of the ok rows, ``n`` (examples) and the Wilson ``lo``/``hi``."""
    ok = df[(df["status"] == "ok")].dropna(subset=[value])
    if ok.empty:
        return pd.DataFrame(columns=keys + [value, "n", "lo", "hi"])
    w = pd.to_numeric(ok["n_examples"], errors="coerce").fillna(0).astype(float)
    ok = ok.assign(_w=w, _k=pd.to_numeric(ok[value], errors="coerce").astype(float) * w)
    g = ok.groupby(keys, dropna=False).agg(n=("_w", "sum"), k=("_k", "sum")).reset_index()
    g = g[g["n"] > 0]
    g[value] = g["k"] / g["n"]
    bounds = [wilson(p, n) for p, n in zip(g[value], g["n"])]
    # never past the point itself (rounding at 0 and 1 would give matplotlib a negative error bar)
    g["lo"] = np.minimum([b[0] for b in bounds], g[value])
    g["hi"] = np.maximum([b[1] for b in bounds], g[value])
    return g.drop(columns="k")


def n_note(n: pd.Series) -> str:
    """``n=64 per point`` or ``n=32-64 per point``."""
    n = n.dropna().astype(int)
    if n.empty:
        return ""
    lo, hi = int(n.min()), int(n.max())
    return f"n={lo} per point" if lo == hi else f"n={lo}-{hi} per point"


# ---- differences between two arms (the quantity a claim is about) ----
#
# A claim compares two arms (a cache policy against full, a sparsity against full, ...). Where the arms
# were scored on the same examples (same task, seed and cell: rows carry ``correct``, per-example exact
# match), the difference is paired per example; examples of different seeds are different examples.
# Two 95% intervals are reported, because they answer different questions:
#   * over examples: how sure the mean difference is given these trained models (evaluation noise),
#     the normal interval of a mean of paired differences (per seed a stratum);
#   * over seeds: whether it survives retraining, the t interval (k - 1 degrees of freedom) of the k
#     per-seed mean differences (each already carrying its evaluation noise).
# A claim holds only where both exclude what it denies.


@dataclass
class Difference:
    mean: float  # mean over examples of (a - b)
    lo: float  # 95% interval over examples (paired where possible)
    hi: float
    n: int  # examples per arm
    seeds: int
    seed_lo: float  # 95% t interval over the per-seed mean differences (nan with one seed)
    seed_hi: float
    paired: bool  # per-example outcomes were aligned (else independent binomial cells)


def paired_normal(d: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high): normal 95% interval of the mean of paired differences ``d`` (sample sd, ddof=1).

    For 0/1 outcomes this is the Wald interval of a difference of paired proportions: with b pairs
    (1, 0) and c pairs (0, 1) out of n, var = ((b + c) - (b - c)**2 / n) / (n (n - 1))."""
    d = np.asarray(d, dtype=float)
    n = d.size
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(d.mean())
    half = z * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return m, m - half, m + half


def t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of a mean from k values (nan for k < 2)."""
    from scipy.stats import t

    x = np.asarray(x, dtype=float)
    k = x.size
    if k < 2:
        m = float(x.mean()) if k else float("nan")
        return m, float("nan"), float("nan")
    m = float(x.mean())
    half = float(t.ppf(0.5 + level / 2, k - 1)) * float(x.std(ddof=1)) / math.sqrt(k)
    return m, m - half, m + half


def outcomes(correct: Any, n: int) -> np.ndarray | None:
    """Per-example 0/1 outcomes of a row from its ``correct`` string ("0110..."), None where absent."""
    if not isinstance(correct, str) or len(correct) != n:
        return None
    return np.frombuffer(correct.encode(), dtype=np.uint8) - ord("0")


def difference(a: pd.DataFrame, b: pd.DataFrame, cell: tuple[str, ...] = ("seed", "task", "eval_len", "depth"),
               z: float = Z95) -> Difference:
    """The difference a - b in exact match between two arms' ok rows, cell by cell.

    Cells (``cell`` columns, the seed among them) present in both arms are compared; a cell whose rows
    both carry per-example outcomes of the same examples is paired, else its examples count as
    independent (variance p(1 - p)/n per arm). Per-seed means weight every example equally."""
    a, b = (x[x["status"] == "ok"] for x in (a, b))
    keys = [c for c in cell if c in a.columns and c in b.columns]
    ga, gb = ({k: g for k, g in x.groupby(keys, dropna=False)} for x in (a, b))
    diffs: dict[Any, list[np.ndarray]] = {}
    var_sum, n_tot, paired = 0.0, 0, True
    for key in sorted(set(ga) & set(gb), key=str):
        ra, rb = ga[key].iloc[0], gb[key].iloc[0]
        n = int(ra["n_examples"])
        oa, ob = outcomes(ra.get("correct"), n), outcomes(rb.get("correct"), int(rb["n_examples"]))
        seed = key[keys.index("seed")] if "seed" in keys else 0
        if oa is not None and ob is not None and len(oa) == len(ob):
            d = oa.astype(float) - ob.astype(float)
        else:  # unpaired: the cell's mean difference, its variance from two binomials
            paired = False
            pa, pb, nb = float(ra["accuracy"]), float(rb["accuracy"]), int(rb["n_examples"])
            d = np.full(n, pa - pb)
            var_sum += n * n * (pa * (1 - pa) / n + pb * (1 - pb) / nb)
        diffs.setdefault(seed, []).append(d)
        n_tot += d.size
    if not n_tot:
        nan = float("nan")
        return Difference(nan, nan, nan, 0, 0, nan, nan, paired)
    by_seed = [np.concatenate(v) for v in diffs.values()]
    mean = float(np.concatenate(by_seed).mean())
    if paired:  # strata = seeds: var of the pooled mean = sum_s n_s^2 (var_s / n_s) / N^2
        var = sum(d.var(ddof=1) * d.size for d in by_seed if d.size > 1) / n_tot ** 2
    else:
        var = var_sum / n_tot ** 2
    half = z * math.sqrt(var)
    per_seed = [float(d.mean()) for d in by_seed]
    _, slo, shi = t_interval(np.array(per_seed))
    return Difference(mean, mean - half, mean + half, n_tot, len(diffs), slo, shi, paired)
