"""Summarise ``eval=lm`` rows: mean NLL within the training length and past it, per run and policy.

    python scripts/lm_summary.py outputs/runs/<run> outputs/eval/... [--markdown]

Means are over position buckets weighted by their size (every position counts once). One line per
identity (the row's ``label``, built from its identity columns, and its stage), so two runs or two policies
that differ in one knob are never averaged together.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import load_results  # noqa: E402


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    lm = df[(df["task"] == "lm") & df["nll"].notna()].copy()
    lm["n"] = lm["bucket_end"] - lm["bucket_start"] + 1
    lm["weighted"] = lm["nll"] * lm["n"]
    keys = [c for c in ("label", "stage", "train_len", "start_token", "cache") if c in lm]
    lm[keys] = lm[keys].astype(object).where(lm[keys].notna(), "-")  # a missing start token is a group too
    out = []
    for key, g in lm.groupby(keys, dropna=False):
        inside, past = g[~g["past_train_len"].astype(bool)], g[g["past_train_len"].astype(bool)]
        nll_in = inside["weighted"].sum() / inside["n"].sum() if len(inside) else math.nan
        nll_past = past["weighted"].sum() / past["n"].sum() if len(past) else math.nan
        out.append(dict(zip(keys, key if isinstance(key, tuple) else (key,)), positions=int(g["bucket_end"].max()),
                         nll_within=round(nll_in, 3), nll_past=round(nll_past, 3),
                         ppl_past=round(math.exp(nll_past), 2), worst_bucket_nll=round(g["nll"].max(), 3)))
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    table = summarise(load_results(args.results))
    print(table.to_markdown(index=False) if args.markdown else table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
