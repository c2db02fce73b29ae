"""The pipeline end to end: Hydra compose -> train (one step) -> checkpoint -> rows -> eval.py."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY, compose_config

from pipeline.eval_run import evaluate_checkpoint
from pipeline.results.rows import ROW_FIELDS, read_rows
from pipeline.run import train


def test_fast_dev_run_writes_rows_and_checkpoint(tmp_path):
    cfg = compose_config(TINY, run_dir=str(tmp_path))
    rows = train(cfg)
    assert rows and all(r["status"] == "ok" for r in rows)
    on_disk = read_rows(tmp_path / "results.jsonl")
    assert len(on_disk) == len(rows) == 2 * 2  # lengths x depths
    for row in on_disk:
        assert set(ROW_FIELDS) <= set(row)
        assert row["model"] == "transformer" and row["pos"] == "rope" and row["train_len"] == 32
        assert 0.0 <= row["decode_tf_agreement"] <= 1.0
        assert row["peak_mem_bytes"] > 0 and row["cache_bytes"] > 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["config"]["model"]["d_model"] == 32 and "code_version" in ckpt


def test_eval_checkpoint_with_overrides(tmp_path):
    train(compose_config(TINY, run_dir=str(tmp_path / "train")))
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    overrides = [f"ckpt={ckpt}", "eval.lengths=[32,64]", "eval.depths=[0.5]", "eval.n_examples=4",
                 "model.pos.rule=linear", "model.pos.factor=2"]
    cfg = compose_config(overrides, config_name="eval", run_dir=str(tmp_path / "eval"))
    rows = evaluate_checkpoint(cfg, overrides)
    assert [r["eval_len"] for r in rows] == [32, 64]
    assert all(r["pos"] == "linearx2" and r["status"] == "ok" for r in rows)


def test_bad_config_stops_before_training(tmp_path):
    from pipeline.config.resolve import ConfigError

    cfg = compose_config(TINY + ["eval.lengths=[32,100000]"], run_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="eval.lengths"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_readme_command_one_in_miniature(tmp_path):
    """`python train.py` as the README runs it, with tiny sizes: exits 0, prints the table, writes rows."""
    env = dict(os.environ, LONGCTX_DATA_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "train.py", *TINY, "trainer=cpu", "trainer.max_steps=3", "trainer.val_check_interval=3",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "accuracy" in out.stdout
    rows = [json.loads(line) for line in open(tmp_path / "run" / "results.jsonl")]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
