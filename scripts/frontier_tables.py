"""Markdown tables of the recall frontier, one per width, as docs/reproductions.md shows them.

    python scripts/frontier_tables.py docs/results/recall_frontier

A row per mixer of the core grid (attention, Mamba, Mamba-2, GLA, Gated DeltaNet): its decode state, and per
grid point the exact match of every seed (train EM in brackets, "unfitted" under the figures' threshold) and
the difference from attention of the same width: 95% interval paired over the examples, then t over the seed
means (``figures.stats.difference``, as every study table).
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for p in (os.path.dirname(HERE), HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

import pandas as pd  # noqa: E402
from arch_compare import FIT_THRESHOLD  # noqa: E402
from figures.results import load_results  # noqa: E402
from figures.stats import difference  # noqa: E402

NAMES = {"transformer": "attention", "mamba": "Mamba", "mamba2": "Mamba-2", "gla": "GLA",
         "gated_deltanet": "Gated DeltaNet"}
REFERENCE = "transformer"


def seeds_cell(s: pd.DataFrame) -> str:
    return ", ".join(f"{a:.3f} ({t:.3f}{', unfitted' if t < FIT_THRESHOLD else ''})"
                     for a, t in zip(s["accuracy"], s["train_em"])) or "not run"


def versus_cell(s: pd.DataFrame, ref: pd.DataFrame) -> str:
    if s.empty or ref.empty:
        return ""
    r = difference(s, ref, cell=("seed", "task", "eval_len"))
    seeds = f"; seeds {r.seed_lo:+.3f}, {r.seed_hi:+.3f}" if r.seeds >= 2 else " (1 seed)"
    return f"{r.mean:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}{seeds}]"


def tables(df: pd.DataFrame) -> str:
    df = df[df["status"] == "ok"]
    lengths = sorted(df["eval_len"].unique())
    out = []
    for d in sorted(df["model_d_model"].unique()):
        width = df[df["model_d_model"] == d]
        head = " | ".join(f"L={L} exact per seed (train EM) | L={L} vs attention" for L in lengths)
        lines = [f"| mixer (d={d}) | decode state (L={lengths[0]} / {lengths[-1]}) | {head} |",
                 "|---|---|" + "---|---|" * len(lengths)]
        for model in [m for m in NAMES if m in set(width["model"])]:
            arm = width[width["model"] == model]
            state = arm.groupby("eval_len")["cache_bytes"].first()
            cells = [NAMES[model], " / ".join(f"{state[L] / 1000:.1f} KB" for L in (lengths[0], lengths[-1])
                                              if L in state)]
            for L in lengths:
                s = arm[arm["eval_len"] == L].sort_values("seed")
                cells.append(seeds_cell(s))
                ref = width[(width["model"] == REFERENCE) & (width["eval_len"] == L)]
                cells.append("" if model == REFERENCE else versus_cell(s, ref))
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="directories or JSONL files of recall_frontier rows")
    text = tables(load_results(ap.parse_args(argv).paths))
    print(text)
    return text


if __name__ == "__main__":
    main()
