"""scripts/study.py: a study's arms, the missing ones with their cost, run and committed rows, resumable."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(Path(ROOT) / "scripts"))

import study  # noqa: E402

L64 = ["model=transformer", "point=mqar_L64"]


def test_arms_are_the_product_of_the_sweep_with_their_run_ids():
    arms = study.arms("recall_frontier", L64, [])
    assert sorted(a.run_id for a in arms) == sorted(
        f"frontier-transformer-d{d}-n0-mqar_L64-s{s}" for d in (64, 128) for s in (0, 1, 2))
    assert all(a.train_len == 64 and a.family == "transformer" for a in arms)
    long = study.arms("recall_frontier", ["model=mamba", "point=mqar_L256", "model.d_model=64", "seed=0"], [])
    assert len(long) == 1 and long[0].train_len == 256 and long[0].run_id.endswith("mqar_L256-s0")


def test_missing_lists_uncommitted_arms_with_commands_and_cost(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    done = "frontier-transformer-d64-n0-mqar_L64-s0"
    (results / f"{done}.jsonl").write_text(json.dumps({"run_id": done, "status": "ok", "train_step_s": 0.05,
                                                       "train_steps": 2000, "threads": 1}) + "\n")
    assert study.main(["recall_frontier", "--missing", "--where", *L64, "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "1 of 6 arms committed" in out and done not in out
    assert "python train.py experiment=recall_frontier model=transformer model.d_model=128 point=mqar_L64" in out
    # the committed arm's step time (0.05 s for 64 x 64 tokens) prices its family: 2000 steps -> 1.7 min at d=64
    assert "1.7 CPU min (measured" in out and "(measured, scaled)" in out


def test_bad_study_names_the_allowed_ones():
    import pytest

    with pytest.raises(SystemExit, match="allowed: .*recall_frontier"):
        study.arms("recal_frontier", [], [])


def test_run_commits_each_finished_arm_and_a_later_sitting_skips_it(tmp_path, capsys):
    from conftest import TINY

    tiny = [o for o in TINY if o.startswith(("data.", "eval.n_examples", "eval.batch_size"))]
    args = ["recall_frontier", "--where", *L64, "model.d_model=64", "seed=0", "--results", str(tmp_path / "res"),
            "--outputs", str(tmp_path / "out"), "--set", "scale=smoke", "logger=none", *tiny]
    assert study.main([*args, "--run", "1", "--jobs", "1"]) == 0
    committed = list((tmp_path / "res").glob("*.jsonl"))
    assert [p.name for p in committed] == ["frontier-transformer-d64-n0-mqar_L64-s0.jsonl"]
    rows = [json.loads(line) for line in committed[0].read_text().splitlines()]
    assert rows and all(r["status"] == "ok" and r["train_em"] is not None for r in rows)
    commands = (tmp_path / "res" / "COMMANDS.md").read_text()
    assert "frontier-transformer-d64-n0-mqar_L64-s0" in commands and "scale=smoke" in commands
    capsys.readouterr()
    assert study.main([*args, "--missing"]) == 0
    assert "1 of 1 arms committed" in capsys.readouterr().out
    assert study.main([*args, "--commit"]) == 0  # recommitting the same finished run is harmless
    assert Path(tmp_path / "res" / "COMMANDS.md").read_text().count("mqar_L64-s0 |") == 1


def test_only_attention_warms_up_and_only_past_l64(tmp_path):
    """The recall frontier's MQAR warm-up (4 pairs for 30% of the steps) is the attention families' recipe at
    the points with more than 4 pairs, and so are 4000 steps at L=256 (2000 left them at train EM 0.8); the
    recurrent arms and every L=64 arm train on the point's task alone, for their own recipes' steps."""
    from conftest import compose_config

    own_steps = {"mamba": 6000}
    for model in ("transformer", "sliding_window", "mamba", "mamba2", "gla", "gated_deltanet", "retention", "hybrid"):
        for point in ("mqar_L64", "mqar_L128", "mqar_L256", "mqar_L512"):
            cfg = compose_config(["experiment=recall_frontier", f"model={model}", f"point={point}"],
                                 run_dir=str(tmp_path))
            attention = model in ("transformer", "sliding_window")
            warm = attention and point != "mqar_L64"
            assert (cfg.data.curriculum_task, cfg.data.curriculum_share) == (("mqar", 0.3) if warm else (None, 0.0)), \
                (model, point)
            steps = 4000 if attention and point == "mqar_L256" else own_steps.get(model, 2000)
            assert cfg.trainer.max_steps == steps, (model, point)


def test_the_cost_estimate_takes_the_cheapest_arm_at_the_nearest_length():
    """Older arms ran slower code and loaded machines only slow arms down: the cheapest of the family's arms at
    the nearest training length and width predicts a run now (scaled by width where none has it)."""
    def arm(d, L, steps=100, batch=10):
        return study.Arm([], f"a{d}-{L}", "mamba", d, L, steps, batch)

    def done(*specs):
        return {f"r{i}": (arm(d, L), [{"train_step_s": us * 1e-6 * 10 * L}]) for i, (d, L, us) in enumerate(specs)}

    finished = done((64, 64, 100.0), (64, 128, 80.0), (64, 128, 40.0))
    assert study.seconds_per_token(arm(64, 256), finished) == (pytest.approx(40e-6), "measured")
    assert study.seconds_per_token(arm(64, 64), finished) == (pytest.approx(100e-6), "measured")
    assert study.seconds_per_token(arm(128, 128), finished) == (pytest.approx(80e-6), "measured, scaled")
    assert study.cpu_minutes(arm(64, 256), finished)[0] == pytest.approx(100 * 10 * 256 * 40e-6 / 60)
    assert study.seconds_per_token(arm(64, 64), {})[1] == "table"


def test_a_run_from_before_a_recipe_change_is_not_committed(tmp_path):
    """A finished run whose steps differ from the grid's arm (its recipe changed since) stays out of the study."""
    arm = study.Arm([], "frontier-x", "transformer", 64, 256, 4000, 64)
    run = tmp_path / "runs" / "frontier-x"
    run.mkdir(parents=True)
    results = tmp_path / "results"
    for trained, committed in ((2000, False), (4000, True)):
        (run / "results.jsonl").write_text(json.dumps({"run_id": "frontier-x", "train_steps": trained}) + "\n")
        assert study.commit(arm, tmp_path, results) is committed
    assert (results / "frontier-x.jsonl").exists()
