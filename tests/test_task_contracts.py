"""The contract every registered task family meets, parametrized over the registry (plugins included).

A new family (one module in tasks/, or a plugin module) is tested here with no edit: on its default
config (conf/task/<name>.yaml where it has one, else its dataclass defaults) the oracle scores 100%,
generation is deterministic in the seed, its questions have the shapes ``signatures()`` states, and,
for the synthetic suite, the shortcut baselines run and ``task=mix`` / ``eval=ruler`` include it.
(tests/test_baselines.py holds each suite family's shortcuts under its chance floor.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from tasks.base import Task, hide_answers
from tasks.baselines import baselines_for, run_baselines
from tasks.common import row_signature
from tasks.dataset import generate
from tasks.mix import Mix
from tasks.registry import TASKS, suite_families
from tasks.text import bind_tokenizer
from tasks.vocab import Vocab

CONF = Path(__file__).resolve().parents[1] / "conf" / "task"
VOCAB = Vocab(256)
WITH_ORACLE = [name for name in TASKS.names() if TASKS.get(name).has_oracle]


def default_task(name: str) -> Task:
    path = CONF / f"{name}.yaml"
    knobs = OmegaConf.to_container(OmegaConf.load(path)) if path.exists() else {}
    knobs.pop("name", None)
    task = TASKS.get(name)(**knobs)
    bind_tokenizer(task, "bytes")
    return task


@pytest.mark.parametrize("name", WITH_ORACLE)
def test_the_oracle_scores_100_percent(name: str) -> None:
    task = default_task(name)
    for length in (task.train_len, 2 * task.train_len):
        arrays = generate(task, VOCAB, "test", 16, length, 0, 0.5 if task.has_depth else None)
        preds = task.oracle(VOCAB, hide_answers(arrays.tokens, arrays.answer_mask), arrays.answer_mask)
        assert (preds[arrays.answer_mask] == arrays.tokens[arrays.answer_mask]).all(), (name, length)


@pytest.mark.parametrize("name", TASKS.names())
def test_generation_is_deterministic_in_the_seed(name: str) -> None:
    task = default_task(name)
    a, b, c = (generate(task, VOCAB, "test", 8, task.train_len, seed, None) for seed in (3, 3, 4))
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.answer_mask, b.answer_mask)
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize("name", suite_families())
def test_suite_questions_have_the_stated_shapes_and_shortcuts_run(name: str) -> None:
    task = default_task(name)
    arrays = generate(task, VOCAB, "test", 16, task.train_len, 0, None)
    hidden = hide_answers(arrays.tokens, arrays.answer_mask)
    assert {row_signature(r, m) for r, m in zip(hidden, arrays.answer_mask)} <= task.signatures()
    rows = {r["baseline"]: r for r in run_baselines(task, VOCAB, task.train_len, n=64, n_prior=128)}
    assert set(rows) == {"oracle", *baselines_for(task)} and rows["oracle"]["accuracy"] == 1.0
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["floor"] > 0 for r in rows.values())


def test_the_suite_is_the_registry_in_mix_and_ruler(tmp_path) -> None:
    assert list(Mix().tasks) == suite_families()  # task=mix's default components
    cfg = compose_config(["eval=ruler", "task.train_len=128"], run_dir=str(tmp_path))
    assert list(cfg.eval.tasks) == suite_families()
