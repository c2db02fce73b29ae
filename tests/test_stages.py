"""Stages as config choices: pretrain -> extend (new RoPE rule, LoRA+, S2-Attn) and -> duo_gates."""

import pytest
import torch
from conftest import TINY, compose_config

from pipeline.eval_run import evaluate_checkpoint
from pipeline.results.rows import read_rows
from pipeline.run import train
from pipeline.train.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    run = tmp_path_factory.mktemp("pretrain")
    train(compose_config(TINY + ["evaluate=false"], run_dir=str(run)))
    return run / "checkpoints" / "last.ckpt"


def test_extend_with_yarn_lora_and_shifted_sparse(pretrained, tmp_path):
    overrides = TINY + [
        "stage=extend", f"init_from={pretrained}", "task.train_len=64", "eval.lengths=[64]",
        "model.pos.rule=yarn", "model.pos.factor=2", "model.pos.original_max_position_embeddings=32",
        "model.attention.train=shifted_sparse", "lora.enabled=true"]
    rows = train(compose_config(overrides, run_dir=str(tmp_path)))
    assert rows and all(r["status"] == "ok" for r in rows)
    r = rows[0]
    assert r["pos"] == "yarnx2" and r["attention"] == "shifted_sparse->full" and r["stage"] == "extend"
    full = sum(p.numel() for p in torch.load(pretrained, weights_only=True)["state_dict"].values())
    assert 0 < r["trainable_params"] < full
    # the checkpoint keeps the adapters (resumable); eval.py loads them and folds them in
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert any(".lora_A." in k for k in torch.load(ckpt, weights_only=True)["state_dict"])
    ov = [f"ckpt={ckpt}", "eval.lengths=[64]", "eval.depths=[0.0]", "eval.n_examples=4"]
    again = evaluate_checkpoint(compose_config(ov, config_name="eval", run_dir=str(tmp_path / "ev")), ov)
    assert again[0]["status"] == "ok" and again[0]["depth"] == rows[0]["depth"] == 0.0
    assert again[0]["token_accuracy"] == rows[0]["token_accuracy"]  # same examples, same merged weights


def test_extend_rejects_a_mismatched_checkpoint(pretrained, tmp_path):
    cfg = compose_config(TINY + ["stage=extend", f"init_from={pretrained}", "model.d_model=64"], run_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        train(cfg)


def test_duo_gates_stage_learns_gates_and_serves_them(pretrained, tmp_path):
    overrides = TINY + [
        "stage=duo_gates", f"init_from={pretrained}", "cache=duo", "cache.sink=2", "cache.window=8",
        "model.attention.sink=2", "model.attention.window=8", "trainer.max_steps=3"]
    rows = train(compose_config(overrides, run_dir=str(tmp_path)))
    gates = torch.load(tmp_path / "gates.pt", weights_only=True)
    assert gates.shape == (2, 2) and ((gates >= 0) & (gates <= 1)).all()
    assert rows and all(r["status"] == "ok" and r["cache"].startswith("duo(") for r in rows)
    assert rows[0]["trainable_params"] == 4
    # eval.py on the duo checkpoint with cache.gates_path=learned uses the checkpoint's gates
    ov = [f"ckpt={tmp_path / 'checkpoints' / 'last.ckpt'}", "cache=duo", "cache.sink=2", "cache.window=8",
          "eval.lengths=[32]", "eval.depths=[0.5]", "eval.n_examples=4"]
    rows = evaluate_checkpoint(compose_config(ov, config_name="eval", run_dir=str(tmp_path / "ev")), ov)
    assert rows[0]["status"] == "ok" and read_rows(tmp_path / "ev" / "results.jsonl")
