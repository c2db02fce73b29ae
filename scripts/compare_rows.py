"""Before/after check of a refactor: the five study presets must write the same rows on their smoke configs.

    PYTHONPATH=<old checkout> python scripts/compare_rows.py capture before.jsonl   # run against the old code
    PYTHONPATH=$PWD           python scripts/compare_rows.py capture after.jsonl
    python scripts/compare_rows.py compare before.jsonl after.jsonl [--ignore-hashes]

``capture`` runs every arm of every preset in ``conf/experiment`` (``ARMS``) at ``scale=smoke`` with the
tests' tiny model, in a scratch folder, and writes every row tagged with its arm (``_arm``). It imports the
pipeline from ``PYTHONPATH``, and composes the configs of that checkout, so one script measures both
sides. ``compare`` matches rows by arm and cell and reports every column whose value changed (timings,
memory peaks and run locations ignored; ``--ignore-hashes`` also ignores config and arm hashes, which
change whenever a yaml is reorganised) and every column that appeared or disappeared. Exit status 1
when a row or value differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

# arm name -> overrides after ``experiment=<preset>`` (every study arm the presets sweep, a few rules each)
ARMS: dict[str, list[str]] = {
    "longlora/full_ft": ["variant=full_ft"], "longlora/lora": ["variant=lora"],
    "longlora/lora_plus": ["variant=lora_plus"], "longlora/longlora": ["variant=longlora"],
    "kv_policies/full": ["kv=full"], "kv_policies/sink_window": ["kv=sink_window"],
    "kv_policies/quest": ["kv=quest"], "kv_policies/duo": ["kv=duo"],
    "rope_extension/rope": ["model.pos.rule=rope"], "rope_extension/linear": ["model.pos.rule=linear"],
    "rope_extension/yarn": ["model.pos.rule=yarn"], "rope_extension/llama3": ["model.pos.rule=llama3"],
    "arch_compare/transformer": ["model=transformer"], "arch_compare/mamba": ["model=mamba"],
    "arch_compare/hybrid": ["model=hybrid"], "duo_gates/duo": [],
}
TINY_MODEL = ["model.d_model=32", "model.n_heads=2", "model.n_layers=2", "vocab_size=64"]
TINY_RUN = ["data.n_train=64", "data.n_val=16", "data.batch_size=8", "eval.depths=[0.0,1.0]", "eval.n_examples=4",
            "eval.batch_size=4", "logger=none", "eval.lengths=[32,64]", "task.train_len=32"]
WITH_BASE = ["base_len=32", "model.attention.window=8", "model.attention.sink=2", "++cache.window=8", "++cache.sink=2"]
# measured, not configured (and run ids drawn at random): they differ between two runs of the same code
VOLATILE = {"run_id", "tokens_per_s", "decode_tokens_per_s", "peak_mem_bytes", "train_peak_mem_bytes", "train_step_s",
            "seconds", "prefill_s", "run_dir", "source", "line", "gates_path", "traceback"}
HASHES = {"config_hash", "arm_hash"}


def overrides(arm: str) -> list[str]:
    preset, extra = arm.split("/")[0], ARMS[arm]
    model = [] if any(o.startswith("model=") for o in extra) and "transformer" not in " ".join(extra) else TINY_MODEL
    out = [f"experiment={preset}", *extra, "scale=smoke", *model, *TINY_RUN]
    return out + (WITH_BASE if preset != "arch_compare" else [])


def compose(conf_dir: Path, items: list[str], run_dir: Path) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=items)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
        cfg.data.cache_dir = str(run_dir / "data_cache")
    return cfg


def capture(out: Path, arms: list[str], work: Path) -> int:
    import pipeline
    import pipeline.config.resolvers  # noqa: F401  (the ${times:...} resolver)
    from pipeline.results.rows import read_rows
    from pipeline.run import train

    conf_dir = Path(pipeline.__file__).resolve().parents[1] / "conf"
    print(f"capturing with the code of {conf_dir.parent}")
    rows = []
    shutil.rmtree(work, ignore_errors=True)  # a fixed place: arm_hash includes the data and study folders
    os.environ["LONGCTX_STUDY_DIR"] = str(work / "studies")
    for arm in arms:
        run_dir = work / arm.replace("/", "-")
        train(compose(conf_dir, overrides(arm), run_dir))
        got = read_rows(run_dir / "results.jsonl")
        print(f"  {arm}: {len(got)} rows")
        rows += [dict(row, _arm=arm) for row in got]
    shutil.rmtree(work, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    print(f"{len(rows)} rows -> {out}")
    return 0


def cell(row: dict[str, Any]) -> tuple:
    """What a row measured, by the columns the old code already wrote (so both sides key alike)."""
    keys = ("_arm", "stage", "task", "eval_len", "depth", "cache", "prefill", "prefix_cache", "bucket_start")
    return tuple(str(row.get(k)) for k in keys) + tuple(sorted((k, str(v)) for k, v in row.items()
                                                               if k.startswith("slice_")))


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def compare(before: Path, after: Path, ignore_hashes: bool) -> int:
    old = {cell(r): r for r in map(json.loads, before.read_text().splitlines())}
    new = {cell(r): r for r in map(json.loads, after.read_text().splitlines())}
    ignored = VOLATILE | (HASHES if ignore_hashes else set())
    problems = [f"row only before: {k}" for k in old.keys() - new.keys()]
    problems += [f"row only after: {k}" for k in new.keys() - old.keys()]
    added: set[str] = set()
    for key in old.keys() & new.keys():
        a, b = old[key], new[key]
        added |= b.keys() - a.keys()
        problems += [f"{key[0]} {key[2]} L={key[3]}: column {c!r} gone" for c in a.keys() - b.keys() - ignored]
        problems += [f"{key[0]} {key[2]} L={key[3]} depth={key[4]}: {c} {a[c]!r} -> {b[c]!r}"
                     for c in sorted(a.keys() - ignored) if c in b and not same(a[c], b[c])]
    print(f"{len(old)} rows before, {len(new)} after, {len(old.keys() & new.keys())} matched")
    print(f"new columns: {sorted(added) or 'none'}")
    for p in problems[:200]:
        print("DIFF", p)
    print("same rows" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    cap = sub.add_parser("capture", help="run every arm, write its rows")
    cap.add_argument("out", type=Path)
    cap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    cap.add_argument("--work", type=Path, default=Path("/tmp/longctx-compare-rows"),
                     help="scratch folder, emptied first (the same path on both sides)")
    cmp = sub.add_parser("compare", help="compare two captures")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    cmp.add_argument("--ignore-hashes", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "capture":
        return capture(args.out, args.arms, args.work)
    return compare(args.before, args.after, args.ignore_hashes)


if __name__ == "__main__":
    sys.exit(main())
