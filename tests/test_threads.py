"""trainer.threads: from the cores actually free, 1 per job in a sweep, an integer wins; recorded, never hashed."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, compose_config

import pipeline.config.threads as threads
from pipeline.config.schema import ConfigError


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2.0)
    monkeypatch.setattr(threads, "in_multirun", lambda: False)

    def load(value: float) -> None:
        monkeypatch.setattr(threads.os, "getloadavg", lambda: (value, value, value))
    return load


def test_auto_counts_the_cores_left_free(two_cores):
    two_cores(0.2)  # a quiet machine: both cores
    assert threads.resolve_threads({"threads": "auto"})[0] == 2
    two_cores(1.0)  # one core busy with another process: one thread, not two fighting for one core
    assert threads.resolve_threads({"threads": "auto"})[0] == 1
    two_cores(7.5)  # heavily loaded: still one
    assert threads.resolve_threads({})[0] == 1
    two_cores(0.0)  # CPU data parallel: the free cores shared among its processes
    assert threads.resolve_threads({"threads": "auto", "accelerator": "cpu", "devices": 2})[0] == 1


def test_auto_is_one_per_job_in_a_sweep_and_an_explicit_choice_wins(two_cores, monkeypatch):
    two_cores(0.0)
    monkeypatch.setattr(threads, "in_multirun", lambda: True)
    assert threads.resolve_threads({"threads": "auto"}) == (1, "auto: one per job in a multirun sweep")
    assert threads.resolve_threads({"threads": 2})[0] == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve_threads({"threads": "auto"})[0] == 3
    assert threads.resolve_threads({"threads": 2})[0] == 2


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True])
def test_a_bad_value_names_the_field(bad, tmp_path):
    from pipeline.config.resolve import validate

    with pytest.raises(ConfigError, match=r"trainer.threads=.*allowed: 'auto'.*integer >= 1"):
        validate(compose_config([f"trainer.threads={bad}"], run_dir=str(tmp_path)))


def test_the_run_sets_records_and_does_not_hash_it(tmp_path):
    from pipeline.config.resolve import validate
    from pipeline.run import arm_hash, train

    before = torch.get_num_threads()
    try:
        cfg = compose_config(TINY + ["trainer.threads=1"], run_dir=str(tmp_path / "one"))
        rows = train(cfg)
        assert torch.get_num_threads() == 1
        assert rows and all(r["threads"] == 1 for r in rows)
        assert json.loads((tmp_path / "one" / "run.json").read_text())["threads"] == 1
        auto = compose_config(TINY, run_dir=str(tmp_path / "one"))  # how it runs is not what it computes
        assert validate(auto).config_hash == validate(cfg).config_hash and arm_hash(auto) == arm_hash(cfg)
    finally:
        torch.set_num_threads(before)
