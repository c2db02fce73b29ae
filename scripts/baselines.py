"""The shortcut-baseline table, per cell of the evaluation grid: family x eval length x depth.

    python scripts/baselines.py              # every family's defaults: 1x/2x/4x train length x 5 depths
    python scripts/baselines.py --families niah mqar --lengths 64 256 --n 1000 --out baselines.jsonl
    python scripts/baselines.py --families niah --set haystack=noise   # what a shortcut does to NIAH

A paper reports the floor next to the models: a model's number means something only in a cell where
it beats every baseline here. Positional guesses (first / middle / last record's value) and
partial-key lookups are among the baselines, so a depth-0 or depth-1 cell that a positional prior
passes shows a high floor. Rows (JSON lines, or CSV when ``--out`` ends in .csv) carry task, baseline,
eval_len, depth, accuracy, token_accuracy, the cell's stated floor (``Task.cell_floor``) and whether
the baseline stays under it (``holds``, within the binomial tolerance printed with the table). The
summary says how many cells beat their stated floor AND how many cells have a high floor: a
configuration whose floor is 1.0 (``haystack=noise``) "holds" trivially and can show nothing.
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

CONF = Path(__file__).resolve().parents[1] / "conf"
HIGH_FLOOR = 0.5  # a cell where a shortcut gets half the answers cannot show the skill


def task_from_conf(family: str, overrides: list[str]):
    """The family's default config (conf/task/<family>.yaml) with ``key=value`` overrides."""
    if family not in suite_families():
        raise SystemExit(f"--families has {family!r}; allowed: {sorted(suite_families())}")
    knobs = OmegaConf.merge(OmegaConf.load(CONF / "task" / f"{family}.yaml"), OmegaConf.from_dotlist(overrides))
    knobs = OmegaConf.to_container(knobs)
    knobs.pop("name", None)
    return TASKS.get(family)(**knobs)


def tolerance(p: float, n: int) -> float:
    """Three binomial standard deviations of a rate ``p`` over ``n`` examples, plus 0.005."""
    return 3.0 * np.sqrt(max(p, 1.0 / n) * (1 - p) / n) + 0.005


def default_depths() -> list[float]:
    return list(OmegaConf.load(CONF / "eval" / "default.yaml").depths)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=sorted(suite_families()))
    ap.add_argument("--lengths", nargs="+", type=int, default=None, help="default: 1x, 2x, 4x train_len")
    ap.add_argument("--depths", nargs="+", type=float, default=None,
                    help="depth cells of families with a depth (default: conf/eval/default.yaml's)")
    ap.add_argument("--n", type=int, default=500, help="test examples per cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=256)
    ap.add_argument("--set", nargs="*", default=[], help="knob overrides for every family, key=value")
    ap.add_argument("--out", type=Path, default=None, help="rows as JSON lines (.jsonl) or CSV (.csv)")
    args = ap.parse_args(argv)
    vocab = Vocab(args.vocab_size)
    depths = args.depths if args.depths is not None else default_depths()
    rows = []
    for family in args.families:
        task = task_from_conf(family, args.set)
        for length in args.lengths or [task.train_len, 2 * task.train_len, 4 * task.train_len]:
            for depth in depths if task.has_depth else [None]:
                rows += run_baselines(task, vocab, length, n=args.n, seed=args.seed, depth=depth)
    df = pd.DataFrame(rows)
    df["tolerance"] = [tolerance(f, n) for f, n in zip(df.floor, df.n_examples)]
    df["holds"] = (df.baseline == "oracle") | (df.accuracy <= df.floor + df.tolerance)
    shortcuts = df[df.baseline != "oracle"]
    cell = ["task", "eval_len", "depth"]
    best = shortcuts.loc[shortcuts.fillna({"depth": -1}).groupby(cell).accuracy.idxmax()]
    best = best[cell + ["baseline", "accuracy", "floor", "tolerance", "holds"]].rename(
        columns={"baseline": "best baseline", "floor": "stated floor"})
    with pd.option_context("display.max_rows", None, "display.width", 160, "display.float_format", "{:.3f}".format):
        print(f"the best prompt-only baseline of each cell (of {shortcuts.baseline.nunique()} tried, {args.n} "
              "examples per cell) against the cell's stated floor\n")
        print(best.to_string(index=False))
    tol = df.tolerance.iloc[0] if df.floor.nunique() == 1 else None
    print("\ntolerance: a baseline beats the floor when accuracy > floor + 3 * sqrt(max(floor, 1/n) * (1 - floor) / n)"
          " + 0.005" + (f" (= {tol:.3f} here)" if tol is not None else " (per cell, column 'tolerance')"))
    broken = best[~best.holds]
    print(f"{len(broken)} of {len(best)} cells have a baseline above their stated floor"
          + ("" if broken.empty else ":\n" + broken.to_string(index=False)))
    high = best[best.accuracy >= HIGH_FLOOR]
    if not high.empty:
        print(f"{len(high)} of {len(best)} cells have a shortcut scoring >= {HIGH_FLOOR} "
              f"(best {high.accuracy.max():.3f}): "
              "a model's accuracy there does not show the skill (the floor itself is that high):\n"
              + high[cell + ["best baseline", "accuracy"]].to_string(index=False))
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
