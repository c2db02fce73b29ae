"""Uncertainty of an exact-match rate: the Wilson score interval of a binomial proportion.

Wilson rather than the normal approximation because accuracies here sit at 0 or 1 often, where the
normal interval collapses to a point (Brown, Cai & DasGupta 2001, "Interval estimation for a
binomial proportion").
"""

from __future__ import annotations

import math

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
