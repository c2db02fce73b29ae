"""Row identity is columns, built in one place (pipeline/results/identity.py); tables and figures group by all of them.

The specification: a row names its positional rule and factor, its attention patterns, its cache policy
and that policy's knobs, its study arm; two arms that differ in one of those are never averaged into one
table line or one figure series; rows written before the columns existed still load and plot.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import TINY, compose_config

from pipeline.results.identity import identity_keys
from pipeline.results.labels import labels, legacy_identity
from pipeline.results.rows import append_row, make_row
from pipeline.results.summary import group_rows

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import collect  # noqa: E402
from figures import load_results, make_palette  # noqa: E402
from figures.results import phase_column  # noqa: E402

LENGTHS = (64, 128, 256)


def identity_of(overrides: list[str]) -> dict:
    from pipeline.config.resolve import validate
    from pipeline.run import row_base

    tiny = [o for o in TINY if o != "model.n_layers=2" or "model=hybrid" not in overrides]  # a hybrid counts its layers
    cfg = compose_config(tiny + overrides, run_dir="/tmp/unused")
    return row_base(cfg, validate(cfg, training=False), "r")


def test_rows_name_the_rule_the_policy_its_knobs_and_the_arm():
    yarn = identity_of(["model.pos.rule=yarn", "model.pos.factor=4", "model.pos.original_max_position_embeddings=32",
                        "cache=quest", "cache.budget=64"])
    assert (yarn["pos"], yarn["pos_rule"], yarn["pos_factor"]) == ("yarnx4", "yarn", 4.0)
    assert yarn["pos_original_max_position_embeddings"] == 32 and yarn["pos_beta_fast"] == 32.0
    assert (yarn["cache_policy"], yarn["cache_budget"], yarn["cache_page_size"]) == ("quest", 64, 16)
    assert "cache_sink" not in yarn and "cache_window" not in yarn  # knobs quest does not read are not its identity
    rope = identity_of(["cache=sink_window", "cache.sink=2", "cache.window=8"])
    assert rope["pos_rule"] == "rope" and "pos_factor" not in rope  # rope reads no factor; its label says "rope"
    assert (rope["cache_sink"], rope["cache_window"], rope["cache_positions"]) == (2, 8, "cache_relative")
    assert (rope["attention_train"], rope["attention_eval"], rope["stage"]) == ("full", "full", "pretrain")
    chunked = identity_of(["cache=sink_window", "cache.prefill=policy", "cache.chunk_size=16"])
    assert chunked["cache_chunk_size"] == 16 and "cache_chunk_size" not in rope


def test_study_arms_and_hybrid_scope_are_columns(tmp_path):
    ckpt = tmp_path / "base.ckpt"
    ckpt.write_bytes(b"")
    arms = {v: identity_of([f"variant={v}", "stage=extend", f"init_from={ckpt}"])
            for v in ("full_ft", "lora", "lora_plus", "longlora")}
    assert {v: a["variant"] for v, a in arms.items()} == {v: v for v in arms}
    assert "lora_r" not in arms["full_ft"] and arms["lora"]["lora_trainable"] == "none"
    assert arms["lora_plus"]["lora_trainable"] == arms["longlora"]["lora_trainable"] == "embed+norm"
    assert arms["longlora"]["attention_train"] == "shifted_sparse" and arms["longlora"]["attention_eval"] == "full"
    hybrid = identity_of(["model=hybrid", "model.layers=MA", "cache=sink_window"])
    assert hybrid["model_layers"] == "MA" and hybrid["cache_scope"] == "attn layers 1/2"
    named = identity_of(["model=hybrid", "model.layers=[mamba,toy_ema,attention]", "cache=sink_window"])
    assert named["model_layers"] == "mamba,toy_ema,attention" and named["cache_scope"] == "attn layers 1/3"


def test_failure_rows_keep_the_policy_knobs():
    from pipeline.results.identity import failure_identity

    cfg = compose_config(TINY + ["cache=quest", "cache.budget=32"])
    out = failure_identity(cfg)
    assert (out["cache_policy"], out["cache_budget"], out["cache_page_size"]) == ("quest", 32, 16)


def test_a_variant_with_a_config_of_its_own_gets_its_fields_as_columns():
    """A new policy or rule (one file, its own config dataclass) needs no edit here: its fields are its knobs,
    unless it declares ``knobs``."""
    from dataclasses import dataclass

    from pipeline.results.identity import cache_columns, pos_columns

    @dataclass
    class KeepEvery:
        policy: str = "keep_every"
        prefill: str = "dense"
        chunk_size: int = 8
        stride: int = 3

    @dataclass
    class Declared(KeepEvery):
        seed: int = 0  # a field that is not part of the identity
        gates_path: str = "/runs/x/gates.pt"  # a location, even when a policy lists it

        def knobs(self) -> dict:
            return {"stride": self.stride, "gates_path": self.gates_path}

    assert cache_columns(KeepEvery()) == {"cache_policy": "keep_every", "cache_stride": 3}
    assert cache_columns(Declared()) == {"cache_policy": "keep_every", "cache_stride": 3}

    @dataclass
    class Toy:
        rule: str = "toy_rule"
        base: float = 500.0
        factor: float = 2.0

        @property
        def name(self) -> str:
            return f"{self.rule}x{self.factor:g}"

    assert pos_columns(Toy()) == {"pos": "toy_rulex2", "pos_rule": "toy_rule", "pos_base": 500.0, "pos_factor": 2.0}


def niah_rows(run_id: str, accuracy: float, **identity) -> list[dict]:
    """One arm's grid rows; the label columns say nothing about the identity column under test."""
    base = dict(run_id=run_id, model="transformer", pos="linearx4", attention="full", cache="full", task="niah",
                train_len=64, stage="extend", seed=0, n_examples=8, pos_rule="linear", pos_factor=4.0,
                cache_policy="full", attention_train="full", attention_eval="full", variant="lora")
    base.update(identity)
    return [make_row(**base, eval_len=L, depth=d, accuracy=accuracy, status="ok", cache_bytes=100 * L)
            for L in LENGTHS for d in (0.0, 1.0)]


# (column, arm a, arm b): each pair of arms differs in that one identity column only
ONE_COLUMN_APART = [
    ("variant", "lora", "lora_plus"),  # LongLoRA's arms: were averaged into one `linearx4` summary line
    ("stage", "zero_shot", "extend"),  # rope_extension: zero-shot was averaged with fine-tuned
    ("pos_factor", 2.0, 4.0), ("pos_original_max_position_embeddings", 32, 64),
    ("attention_train", "full", "shifted_sparse"), ("cache_budget", 64, 128), ("cache_chunk_size", 16, 64),
    ("lora_trainable", "none", "embed+norm"), ("model_d_model", 32, 64), ("train_task", "niah", "mix"),
]


@pytest.mark.parametrize("column,a,b", ONE_COLUMN_APART, ids=[c for c, *_ in ONE_COLUMN_APART])
def test_arms_one_identity_column_apart_are_never_merged(column, a, b, tmp_path, monkeypatch):
    rows = niah_rows("a", 0.9, **{column: a}) + niah_rows("b", 0.3, **{column: b})
    assert column in identity_keys(rows[0])
    groups = group_rows(rows)  # train.py / eval.py / sweep summary table
    assert len(groups) == 2 * len(LENGTHS) and all(len(g) == 2 for g in groups.values())
    for r in rows:
        append_row(tmp_path / "runs" / r["run_id"] / "results.jsonl", r)
    df = load_results([tmp_path / "runs"])
    series = df.assign(_phase=phase_column(df)).groupby(["label", "_phase"])["accuracy"].mean()
    assert sorted(series.round(3)) == [0.3, 0.9]  # figures: two series, neither a pool of both arms
    table = collect.summary_table(df)  # collect.py's sweep table
    assert table.row_count == 2
    import figures.lines as lines
    from matplotlib.figure import Figure

    figs: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self))
    lines.plot_accuracy_vs_length(df, tmp_path / "f", make_palette(df))
    drawn = [ln for ln in figs[-1].axes[0].get_lines() if len(ln.get_xdata()) == len(LENGTHS)
             and ln.get_linestyle() != "None"]
    assert sorted(round(float(ln.get_ydata()[0]), 3) for ln in drawn) == [0.3, 0.9]


def test_labels_name_what_tells_groups_apart_and_nothing_else():
    rows = niah_rows("a", 0.9, cache_budget=64) + niah_rows("b", 0.3, cache_budget=128)
    rows += niah_rows("c", 0.5, variant="lora_plus")
    names = sorted(set(labels(rows)))
    assert names == ["transformer/linearx4/full/full [lora] cache_budget=128",
                     "transformer/linearx4/full/full [lora] cache_budget=64",
                     "transformer/linearx4/full/full [lora_plus]"]
    assert len(set(labels(niah_rows("a", 0.9, train_len=64) + niah_rows("b", 0.9, train_len=256)))) == 2
    assert {lb.split()[-1] for lb in labels(niah_rows("a", 0.9) + niah_rows("b", 0.9, train_len=256))} == \
        {"@L=64", "@L=256"}


def test_rows_without_identity_columns_still_load_label_and_plot(tmp_path):
    old = [dict(pos="yarnx4", cache="quest(budget=64,page=16)[attn layers 1/2]", attention="MAMA:shifted_sparse->full",
                model="hybrid"), dict(pos="rope", cache="sink_window(4+64)", attention="full", model="transformer"),
           dict(pos=None, cache="full", attention="mamba", model="mamba")]
    got = [legacy_identity(r) for r in old]
    assert got[0] == dict(pos_rule="yarn", pos_factor=4.0, cache_policy="quest", cache_scope="attn layers 1/2",
                          attention_train="shifted_sparse", attention_eval="full", model_layers="MAMA")
    assert got[1] == dict(pos_rule="rope", cache_policy="sink_window", attention_train="full", attention_eval="full")
    assert got[2] == dict(cache_policy="full")
    assert legacy_identity(dict(old[0], pos_rule="linear", cache_policy="full"))["attention_train"] == "shifted_sparse"
    assert "pos_rule" not in legacy_identity(dict(old[0], pos_rule="linear"))  # never overwrites a column
    for i, r in enumerate(old):
        append_row(tmp_path / str(i) / "results.jsonl", make_row(
            **r, task="niah", eval_len=64, train_len=64, seed=0, n_examples=4, accuracy=0.5, status="ok"))
    df = load_results([tmp_path])
    assert list(df["cache_policy"]) == ["quest", "sink_window", "full"] or \
        sorted(df["cache_policy"]) == ["full", "quest", "sink_window"]
    assert make_palette(df).order[0].startswith("transformer/rope")  # family order, from the columns


def test_legend_order_knows_every_positional_rule(monkeypatch):
    from figures.style import label_sort_key

    from pipeline.results import identity

    arms = [("longropex4", "longrope", 4.0), ("linearx4", "linear", 4.0), ("linearx2", "linear", 2.0),
            ("alibi", "alibi", None), ("llama3x4", "llama3", 4.0), ("zz_plugin", "zz_plugin", None),
            ("new_rulex2", "new_rule", 2.0)]
    rules = identity.rule_functions()
    assert {"alibi", "llama3", "rope"} <= set(rules)
    rules["new_rule"] = rules["rope"]  # a rule added later, in its own file
    monkeypatch.setattr(identity, "rule_functions", lambda: rules)
    rows = [dict(model="transformer", pos=p, pos_rule=r, pos_factor=f, attention="full") for p, r, f in arms]
    assert [r["pos"] for r in sorted(rows, key=label_sort_key)] == [  # llama3 and alibi were missing
        "alibi", "linearx2", "linearx4", "llama3x4", "longropex4", "new_rulex2", "zz_plugin"]


def test_the_preset_rows_fixture_keeps_every_arm_apart():
    """The checked-in rows of the five presets' smoke runs (scripts/compare_rows.py): one summary line per
    arm and length, LongLoRA's four arms and rope_extension's zero-shot rows included."""
    import json

    fixture = Path(__file__).parent / "fixtures" / "preset_rows.jsonl"
    rows = [json.loads(line) for line in fixture.read_text().splitlines()]
    groups = group_rows(rows)
    arms = {}
    for (label, stage, _, _), rs in groups.items():
        assert len({r["_arm"] for r in rs}) == 1, (label, stage, {r["_arm"] for r in rs})
        arms.setdefault(rs[0]["_arm"], set()).add((label, stage))
    assert len({lb for a, s in arms.items() if a.startswith("longlora/") for lb in s}) == 4
    assert all(len({st for _, st in arms[f"rope_extension/{r}"]}) == 2 for r in ("rope", "linear", "yarn"))


@pytest.mark.slow
def test_presets_write_the_rows_of_the_fixture(tmp_path):
    """Rerun every preset arm on its smoke config and compare with the checked-in rows (what the lead
    reruns after merging: same rows, same identity columns; timings and hashes aside)."""
    import compare_rows

    out = tmp_path / "now.jsonl"
    compare_rows.main(["capture", str(out), "--work", str(tmp_path / "work")])
    fixture = Path(__file__).parent / "fixtures" / "preset_rows.jsonl"
    assert compare_rows.main(["compare", str(fixture), str(out), "--ignore-hashes"]) == 0
