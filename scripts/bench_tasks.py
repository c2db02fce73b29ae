"""Generation throughput of every task family, in tokens/s on one core (target: 5M tokens/s).

    python scripts/bench_tasks.py [--quick] [--length 2048] [--json PATH]

Each case generates batches of ``length``-token examples with a fixed seed; the best of a few
repeats is reported (the machine is shared; the best run is the least disturbed one). ``--json``
writes records {"name", "baseline", "value", "ratio", "unit"} with the 5M target as baseline.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, before numpy
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.registry import TASKS  # noqa: E402
from tasks.vocab import Vocab  # noqa: E402

TARGET = 5e6  # tokens/s

# (label, family, knobs, depth): the defaults of every family plus the heavier variants.
CASES: list[tuple[str, str, dict, float | None]] = [
    ("niah", "niah", {}, 0.5),
    ("niah[distractor,needles=4,queries=2]", "niah",
     {"haystack": "distractor", "needles": 4, "queries": 2}, 0.5),
    ("multikey", "multikey", {}, 0.5),
    # 2048 tokens hold 340 records: the fill grid is 18 x 18
    ("multikey[distractors=fill]", "multikey", {"distractors": None}, 0.5),
    ("kv_retrieval", "kv_retrieval", {}, 0.5),
    ("kv_retrieval[pairs=300,key_len=2]", "kv_retrieval", {"pairs": 300, "key_len": 2}, 0.5),
    ("variable_tracking", "variable_tracking", {}, None),
    ("variable_tracking[chains=8,hops=8]", "variable_tracking", {"chains": 8, "hops": 8}, None),
    ("frequent_tokens", "frequent_tokens", {}, None),
    ("counting", "counting", {}, None),
    ("copy[span=1000]", "copy", {"span": 1000}, 0.5),
    ("conflict", "conflict", {"conflict_rate": 0.5}, 0.5),
    ("mqar", "mqar", {}, None),
    ("mqar[kv=64]", "mqar", {"num_kv_pairs": 64}, None),
    ("mix", "mix", {}, 0.5),
]


def bench(family: str, knobs: dict, depth: float | None, length: int, n: int, repeats: int) -> float:
    task = TASKS.get(family)(train_len=length, **knobs)
    vocab = Vocab(256)
    task.generate(vocab, 4, length, np.random.default_rng(0), depth)  # warm caches
    best = float("inf")
    for r in range(repeats):
        rng = np.random.default_rng(r)
        t0 = time.perf_counter()
        task.generate(vocab, n, length, rng, depth)
        best = min(best, time.perf_counter() - t0)
    return n * length / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer examples and repeats")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--json", type=Path, default=None, help="write the records here")
    args = ap.parse_args()
    n, repeats = (128, 2) if args.quick else (1024, 3)
    records = []
    print(f"{'task':<40} {'Mtok/s':>8} {'x target':>9}")
    for label, family, knobs, depth in CASES:
        value = bench(family, knobs, depth, args.length, n, repeats)
        records.append({"name": f"tasks/{label}", "baseline": TARGET, "value": value,
                        "ratio": value / TARGET, "unit": "tokens/s"})
        print(f"{label:<40} {value / 1e6:8.1f} {value / TARGET:9.2f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
