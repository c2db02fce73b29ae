"""Shortcut baselines stay at or below each family's stated chance floor on its default config.

A task measures a skill only if a cheap prompt-only strategy cannot score like a model that has
it. Every family's default config (conf/task/<family>.yaml) is run through every baseline of
``tasks/baselines.py``; each must stay under the floor its docstring states (``chance_floor``),
within a binomial tolerance, while the oracle scores 1.0. The last tests show the baselines have
teeth: on configs with a known shortcut they find it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from tasks.baselines import baselines_for, run_baselines
from tasks.registry import TASKS, suite_families
from tasks.vocab import Vocab

V = Vocab(256)
N = 500
CONF = Path(__file__).resolve().parent.parent / "conf" / "task"
FAMILIES = sorted(suite_families())  # the synthetic token families (text tasks read a tokenizer, not Vocab)


def default_task(family: str, **overrides):
    path = CONF / f"{family}.yaml"  # a plugin family without a yaml: its dataclass defaults
    knobs = OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else {}
    knobs.pop("name", None)
    return TASKS.get(family)(**{**knobs, **overrides})


def tolerance(p: float, n: int = N) -> float:
    return 3.0 * np.sqrt(max(p, 1.0 / n) * (1 - p) / n) + 0.005


def rows_by_name(task, length=None, depth=None) -> dict[str, dict]:
    return {r["baseline"]: r for r in run_baselines(task, V, length or task.train_len, n=N, depth=depth)}


@pytest.mark.parametrize("family", FAMILIES)
def test_no_shortcut_beats_the_floor_on_defaults(family: str) -> None:
    task = default_task(family)
    rows = rows_by_name(task)
    assert rows.pop("oracle")["accuracy"] == 1.0
    assert set(rows) == set(baselines_for(task)) and len(rows) >= 5
    for name, r in rows.items():
        assert r["accuracy"] <= r["floor"] + tolerance(r["floor"]), (family, name, r["accuracy"], r["floor"])
        if r["floor_token_accuracy"] is not None:
            ft = r["floor_token_accuracy"]
            assert r["token_accuracy"] <= ft + tolerance(ft), (family, name, r["token_accuracy"], ft)


@pytest.mark.parametrize("family", ["niah", "multikey", "kv_retrieval"])
def test_floor_holds_at_a_longer_length_and_a_fixed_depth(family: str) -> None:
    task = default_task(family)
    length = 2 * task.train_len
    for name, r in rows_by_name(task, length, depth=0.5).items():
        if name != "oracle":
            assert r["accuracy"] <= r["floor"] + tolerance(r["floor"]), (family, name, r)


@pytest.mark.parametrize("family", ["niah", "kv_retrieval", "multikey"])
def test_floor_holds_with_the_recipe_training_layout(family: str) -> None:
    """Whatever task knobs a recipe sets (several questions per training row, ``train_queries``), the
    evaluation rows, and every shortcut's score on them (its prior fitted on the training rows), stay
    under the floor."""
    from conftest import compose_config

    knobs = OmegaConf.to_container(compose_config([f"task={family}"]).task)
    knobs.pop("name")
    task = TASKS.get(family)(**knobs)
    rows = rows_by_name(task)
    assert rows.pop("oracle")["accuracy"] == 1.0
    for name, r in rows.items():
        assert r["accuracy"] <= r["floor"] + tolerance(r["floor"]), (family, name, r["accuracy"], r["floor"])


def test_baselines_find_known_shortcuts() -> None:
    """The baselines are not toothless: on configs with a known shortcut they reach it."""
    noise = rows_by_name(default_task("niah", haystack="noise"))
    assert noise["first_value"]["accuracy"] == 1.0  # the needle holds the only value tokens
    agreeing = rows_by_name(default_task("conflict", eval_conflict_rate=0.0))
    assert agreeing["world_lookup"]["accuracy"] == 1.0  # memorisation answers consistent documents
    one_chain = rows_by_name(default_task("variable_tracking", chains=1))
    assert one_chain["first_chain"]["accuracy"] == 1.0
    skewed = rows_by_name(default_task("frequent_tokens", alpha=2.0))
    assert skewed["recent_frequent"]["accuracy"] > 0.6  # half the context suffices when counts are skewed
    counting = rows_by_name(default_task("counting"))
    assert counting["recent_count"]["accuracy"] > 2.0 / 17  # a window beats a blind guess, below the floor
    mqar = rows_by_name(default_task("mqar"))
    assert mqar["elimination"]["token_accuracy"] > 0.45  # excluding queried keys is worth half the answers


def test_every_family_states_a_floor() -> None:
    for family in FAMILIES:
        task = default_task(family)
        floor = task.chance_floor(V, task.train_len)
        assert 0.0 < floor["accuracy"] < 0.5, (family, floor)


def test_baseline_script_writes_rows_and_arch_compare_plots_state_vs_accuracy(tmp_path) -> None:
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import arch_compare
    import baselines as script

    df = script.main(["--families", "niah", "--lengths", "64", "--n", "50", "--out", str(tmp_path / "b.jsonl")])
    lines = [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(lines) == len(df) and {r["baseline"] for r in lines} >= {"oracle", "first_value"}
    assert all(r["holds"] for r in lines)
    rows = [dict(run_id=f"{m}-{d}", model=m, task="mqar", train_len=64, eval_len=64, depth=None, n_examples=32,
                 accuracy=acc, cache_bytes=b, n_params=1000, status="ok")
            for m, d, acc, b in [("transformer", 32, 0.9, 8192), ("transformer", 64, 1.0, 16384),
                                 ("mamba", 32, 0.2, 4096), ("mamba", 64, 0.5, 8192)]]
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pts = arch_compare.main([str(tmp_path / "results.jsonl"), "--out", str(tmp_path / "fig.png")])
    assert (tmp_path / "fig.png").stat().st_size > 0
    mamba = pts[pts.model == "mamba"]
    assert list(mamba.state_bytes) == [4096, 8192] and list(mamba.accuracy) == [0.2, 0.5]
