"""The KV-policy study (experiment=kv_policies, experiment=duo_gates): every arm evaluates one task on one
base that retrieves by key, the base is YaRN-extended before the arms start, and Duo's gates learn on
their own data."""

from __future__ import annotations

import pytest
from conftest import compose_config

from pipeline.config.resolve import validate
from pipeline.train.base_model import resolve_base

ARMS = ["kv=full", "kv=sink_window", "kv=quest", "kv=duo"]


def _arm(tmp_path, *overrides):
    cfg = compose_config(list(overrides), run_dir=str(tmp_path))
    return cfg, validate(cfg)


@pytest.mark.parametrize("study", [["experiment=kv_policies", arm] for arm in ARMS] + [["experiment=duo_gates"]])
def test_every_arm_evaluates_the_study_task_on_the_shared_extended_base(study, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGCTX_STUDY_DIR", str(tmp_path / "studies"))
    cfg, res = _arm(tmp_path, *study)
    _, ref = _arm(tmp_path, "experiment=kv_policies", "kv=full")
    assert res.eval_tasks == ref.eval_tasks  # same task config: no arm sets its own eval.tasks
    assert (res.eval.lengths, res.eval.depths, res.eval.n_examples, res.eval.protocol) == (
        ref.eval.lengths, ref.eval.depths, ref.eval.n_examples, ref.eval.protocol)
    task = res.eval_tasks[0]
    assert task.name == "niah" and task.haystack == "distractor"  # retrieval by key, not the passkey copy
    chain = resolve_base(cfg)
    assert [b.cfg.stage for b in chain] == ["pretrain", "extend"]
    pre, ext = chain
    assert pre.cfg.model.pos.rule == "rope" and ext.cfg.model.pos.rule == "yarn" == res.model.pos.rule
    assert ext.cfg.init_from == str(pre.checkpoint) and ext.train_len == 2 * pre.train_len
    assert pre.cfg.data.curriculum_task == "mqar"  # the NIAH recipe's curriculum trains the base
    _, full = _arm(tmp_path, "experiment=kv_policies", "kv=full")
    ref_chain = resolve_base(compose_config(["experiment=kv_policies", "kv=full"], run_dir=str(tmp_path)))
    assert [b.run_dir for b in chain] == [b.run_dir for b in ref_chain]  # one base for every arm


def test_duo_gates_learn_on_several_keyed_needles_but_are_scored_on_the_study_task(tmp_path):
    cfg, res = _arm(tmp_path, "experiment=kv_policies", "kv=duo")
    data = res.stage.train_task(cfg, res)
    assert (data.needles, data.queries, data.haystack) == (4, 4, "distractor")
    assert (res.eval_tasks[0].needles, res.eval_tasks[0].queries) == (1, 1)
    _, full = _arm(tmp_path, "experiment=kv_policies", "kv=full")
    assert full.stage.train_task(cfg, full) is full.task  # other stages train on their task


def test_a_bad_gate_data_override_fails_before_any_work(tmp_path):
    from pipeline.config.schema import ConfigError

    with pytest.raises(ConfigError, match="duo.data_task"):
        _arm(tmp_path, "experiment=kv_policies", "kv=duo", "+duo.data_task.needels=4")
