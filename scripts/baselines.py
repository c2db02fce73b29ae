"""The shortcut-baseline table: every family x prompt-only baseline x eval length, next to its floor.

    python scripts/baselines.py                                   # every family's defaults, 1x/2x/4x train length
    python scripts/baselines.py --families niah mqar --lengths 64 256 --n 1000 --out baselines.jsonl
    python scripts/baselines.py --families niah --set haystack=noise   # what a shortcut does to NIAH

A paper reports the floor next to the models: a model row means something only where it beats
every baseline here. Rows (JSON lines, or CSV when ``--out`` ends in .csv) carry task, baseline,
eval_len, accuracy, token_accuracy, the family's stated floor and whether the baseline stays
under it (``holds``, with the binomial tolerance of ``tests/test_baselines.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.baselines import run_baselines  # noqa: E402
from tasks.registry import TASKS, suite_families  # noqa: E402
from tasks.vocab import Vocab  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf" / "task"


def task_from_conf(family: str, overrides: list[str]):
    """The family's default config (conf/task/<family>.yaml) with ``key=value`` overrides."""
    if family not in suite_families():
        raise SystemExit(f"--families has {family!r}; allowed: {sorted(suite_families())}")
    knobs = OmegaConf.merge(OmegaConf.load(CONF / f"{family}.yaml"), OmegaConf.from_dotlist(overrides))
    knobs = OmegaConf.to_container(knobs)
    knobs.pop("name", None)
    return TASKS.get(family)(**knobs)


def tolerance(p: float, n: int) -> float:
    return 3.0 * np.sqrt(max(p, 1.0 / n) * (1 - p) / n) + 0.005


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=sorted(suite_families()))
    ap.add_argument("--lengths", nargs="+", type=int, default=None, help="default: 1x, 2x, 4x train_len")
    ap.add_argument("--n", type=int, default=500, help="test examples per cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=256)
    ap.add_argument("--set", nargs="*", default=[], help="knob overrides for every family, key=value")
    ap.add_argument("--out", type=Path, default=None, help="rows as JSON lines (.jsonl) or CSV (.csv)")
    args = ap.parse_args(argv)
    vocab = Vocab(args.vocab_size)
    rows = []
    for family in args.families:
        task = task_from_conf(family, args.set)
        for length in args.lengths or [task.train_len, 2 * task.train_len, 4 * task.train_len]:
            rows += run_baselines(task, vocab, length, n=args.n, seed=args.seed)
    df = pd.DataFrame(rows)
    df["holds"] = [r.baseline == "oracle" or r.accuracy <= r.floor + tolerance(r.floor, r.n_examples)
                   for r in df.itertuples()]
    table = df.pivot_table(index=["task", "baseline"], columns="eval_len", values="accuracy", sort=False)
    table = table.reindex(sorted(table.columns), axis=1)
    floors = df.drop_duplicates(["task", "eval_len"]).pivot_table(index="task", columns="eval_len", values="floor")
    with pd.option_context("display.max_rows", None, "display.width", 160, "display.float_format", "{:.3f}".format):
        print("exact match of each prompt-only baseline (rows) per eval length (columns)\n")
        print(table)
        print("\nchance floor per family (what no baseline should beat)\n")
        print(floors)
    broken = df[~df.holds]
    print(f"\n{len(broken)} of {len(df[df.baseline != 'oracle'])} baseline cells beat their floor"
          + ("" if broken.empty else ":\n" + broken[["task", "baseline", "eval_len", "accuracy", "floor"]].to_string()))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".csv":
            df.to_csv(args.out, index=False)
        else:
            df.to_json(args.out, orient="records", lines=True)
        print(f"rows written to {args.out}")
    return df


if __name__ == "__main__":
    main()
