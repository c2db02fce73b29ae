"""Nothing is lost on failure: kill and resume, loud configs, OOM as a row, NaN stop, safe files."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, compose_config

from models.caches import CacheConfig
from models.families.transformer import Transformer, TransformerConfig
from pipeline.config.eval_config import EvalConfig
from pipeline.config.resolve import ConfigError, validate
from pipeline.evaluation.evaluate import evaluate_grid, run_cell
from pipeline.results.rows import read_rows
from pipeline.run import train
from pipeline.train.checkpoint import CheckpointError, read_checkpoint
from tasks.dataset import materialize, read_arrays
from tasks.niah import Niah
from tasks.vocab import Vocab

# --- 1. resume after SIGKILL --------------------------------------------------------------------

RESUME = [o for o in TINY if o not in ("trainer=smoke", "logger=none")] + [
    "trainer=cpu", "trainer.max_steps=200", "trainer.val_check_interval=100", "checkpoint_every=5",
    "data.n_train=128", "evaluate=false", "logger=none", "+trainer.enable_progress_bar=false"]


def launch(run_dir: Path, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", LONGCTX_DATA_CACHE=str(cache))
    return subprocess.Popen([sys.executable, "train.py", *RESUME, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 200
    return ckpt["state_dict"]


def test_sigkill_then_same_command_resumes_to_identical_weights(tmp_path):
    ref = launch(tmp_path / "ref", tmp_path / "cache")
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-2000:]
    killed = launch(tmp_path / "run", tmp_path / "cache")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    def step_of(path: Path) -> int:
        try:
            return torch.load(path, weights_only=True)["global_step"]
        except Exception:  # not written yet
            return -1

    deadline = time.time() + 240
    while time.time() < deadline and step_of(last) < 10:
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    step_at_kill = torch.load(last, weights_only=True)["global_step"]
    assert 10 <= step_at_kill < 200, step_at_kill
    again = launch(tmp_path / "run", tmp_path / "cache")  # the same command
    assert again.wait(timeout=300) == 0, again.stderr.read()[-2000:]
    a, b = final_weights(tmp_path / "ref"), final_weights(tmp_path / "run")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


# --- 2. configs fail loudly, before any data or step ---------------------------------------------

BAD = [
    (["+model.foo=1"], "model.foo is not a field"),
    (["model.d_model=abc"], "model.d_model='abc' has the wrong type"),
    (["model.n_heads=3"], "model.n_heads=3 must divide model.d_model=32"),
    (["model.n_kv_heads=3"], "model.n_kv_heads=3 must divide model.n_heads=2"),
    (["model.n_layers=0"], "model.n_layers=0 must be >= 1"),
    (["model.pos.rule=rotary"], "model.pos.rule='rotary' is not a known rule"),
    (["model.pos.rule=yarn", "model.pos.factor=4"], "original_max_position_embeddings"),
    (["model.pos.factor=0.5"], "model.pos.factor=0.5 must be >= 1"),
    (["model.attention.train=sparse"], "model.attention.train='sparse' is not a known pattern"),
    (["model.attention.eval=shifted_sparse"], "LongLoRA evaluates with full attention"),
    (["model.attention.train=shifted_sparse", "task.train_len=36"], "task.train_len=36"),
    (["model.attention.window=0"], "model.attention.window=0 must be >= 1"),
    (["model.max_seq_len=40"], "eval.lengths contains 48 > model.max_seq_len=40"),
    (["eval.lengths=[-5]"], "every length must be >= 2"),
    (["eval.depths=[0.5,1.5]"], "every depth must be in [0, 1]"),
    (["eval.lengths=[]"], "eval.lengths=[] must list at least one length"),
    (["eval.decode=false", "eval.teacher_forced=false"], "nothing to evaluate"),
    (["eval.tasks=[nope]"], "eval.tasks names unknown task configs ['nope']"),
    (["task.train_len=3"], "task.train_len=3 is too short"),
    (["task.value_len=0"], "task.value_len=0 must be >= 1"),
    (["task=mqar", "task.num_kv_pairs=40", "task.train_len=200", "eval.lengths=[200]"], "task.num_kv_pairs=40"),
    (["+task.bogus=2"], "task.bogus is not a field"),
    (["vocab_size=8"], "vocab_size=8 must be >= 40"),
    (["model.vocab_size=32"], "model.vocab_size=32 is smaller than vocab_size=64"),
    (["cache.policy=lru"], "cache.policy='lru' is not a known policy"),
    (["cache.prefill=lazy"], "cache.prefill='lazy'"),
    (["cache=quest", "cache.budget=8"], "cache.budget=8 must be >= cache.page_size=16"),
    (["cache=duo", "cache.threshold=0.5"], "exactly one of cache.sparsity, cache.threshold"),
    (["cache=duo", "cache.gates_path=/nonexistent/gates.pt"],
     "cache.gates_path='/nonexistent/gates.pt' does not exist"),
    (["cache=sink_window", "cache.positions=relative"], "cache.positions='relative'"),
    (["data.batch_size=0"], "data.batch_size=0 must be >= 1"),
    (["optim.lr=-1"], "optim.lr=-1.0 must be > 0"),
    (["optim.betas=[0.9]"], "optim.betas=[0.9] must be two numbers"),
    (["+trainer.max_epoch=3"], "trainer.max_epoch is not a Lightning Trainer argument"),
    (["trainer.max_steps=0"], "trainer.max_steps=0 must be >= 1"),
    (["stage=extend"], "stage='extend' needs init_from"),
    (["stage=finetune"], "stage='finetune'; allowed"),
    (["model=mamba", "lora.enabled=true"], "lora.enabled=true is for model.family=transformer"),
    (["model=mamba", "stage=duo_gates", "init_from=x.ckpt"], "stage=duo_gates needs model.family=transformer"),
    (["model=mamba", "model.kernel=triton"], "model.kernel"),
    (["lora.r=0"], "lora.r=0"),
    (["data.curriculum_task=nope", "data.curriculum_share=0.5"], "data.curriculum_task='nope' is not a known task"),
    (["data.curriculum_task=null"], "set both (a family and a share > 0) or neither"),
    (["data.curriculum_share=0"], "set both (a family and a share > 0) or neither"),
    (["data.curriculum_task=mqar", "data.curriculum_share=1.0"], "data.curriculum_share=1.0 must be in [0, 1)"),
    (["data.curriculum_task=multikey", "data.curriculum_share=0.5", "task.train_len=24", "eval.lengths=[24]"],
     "data.curriculum_task='multikey' at task.train_len=24"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_gives_a_clear_error_before_any_work(overrides, message, tmp_path):
    base = [o for o in TINY if not o.startswith("model.")] if "model=mamba" in overrides else TINY
    cfg = compose_config(base + overrides, run_dir=str(tmp_path))
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert message in str(err.value)
    assert not (tmp_path / "data_cache").exists()


def test_the_bad_config_corpus_is_large():
    assert len(BAD) >= 25


# --- 3. OOM is a result -------------------------------------------------------------------------


def test_oom_at_one_length_is_a_row_and_the_grid_goes_on(tmp_path):
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2))

    def runner(model, arrays, *args):
        if arrays.tokens.shape[1] == 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return run_cell(model, arrays, *args)

    rows = evaluate_grid(model, [Niah(train_len=32)], Vocab(64), EvalConfig([32, 64, 96], [0.5], 4, 4),
                         CacheConfig(), 0, {"run_id": "t"}, tmp_path / "rows.jsonl", cell_runner=runner)
    assert [(r["eval_len"], r["status"]) for r in rows] == [(32, "ok"), (64, "oom"), (96, "ok")]
    assert "out of memory" in rows[1]["error"]
    assert [r["status"] for r in read_rows(tmp_path / "rows.jsonl")] == ["ok", "oom", "ok"]


# --- 4. non-finite loss -------------------------------------------------------------------------


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import pipeline.train.module as module

    real, calls = module.answer_logits, {"n": 0}

    def poisoned(model, input_ids, labels, hidden_fn=None):
        logits, targets = real(model, input_ids, labels, hidden_fn)
        calls["n"] += 1
        return (logits * float("nan"), targets) if calls["n"] == 4 else (logits, targets)

    monkeypatch.setattr(module, "answer_logits", poisoned)
    cfg = compose_config([o for o in TINY if o != "trainer=smoke"] + [
        "trainer=cpu", "trainer.max_steps=10", "trainer.val_check_interval=100", "checkpoint_every=2"],
        run_dir=str(tmp_path))
    with pytest.raises(FloatingPointError, match="non-finite training loss nan at step 3"):
        train(cfg)
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


# --- 5. checkpoints -----------------------------------------------------------------------------


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    train(compose_config(TINY + ["evaluate=false"], run_dir=str(tmp_path)))
    path = tmp_path / "checkpoints" / "last.ckpt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(path)
    for other in path.parent.glob("*.ckpt"):  # no loadable checkpoint left (one alone falls back: test_reliability_ii)
        other.write_bytes(other.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="last.ckpt"):
        train(compose_config(TINY + ["evaluate=false"], run_dir=str(tmp_path)))  # auto-resume meets it
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt")


def test_checkpoint_carries_config_and_code_version_and_loads_weights_only(tmp_path):
    train(compose_config(TINY + ["evaluate=false"], run_dir=str(tmp_path)))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["config"]["model"]["family"] == "transformer" and ckpt["code_version"]


# --- 6. dataset cache ---------------------------------------------------------------------------


def test_corrupt_dataset_cache_is_regenerated_with_a_warning(tmp_path, caplog):
    t, v = Niah(train_len=64), Vocab(64)
    first = read_arrays(materialize(t, v, "train", 50, 64, 0, tmp_path))[0]
    arrow = next(p for p in tmp_path.rglob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        again = read_arrays(materialize(t, v, "train", 50, 64, 0, tmp_path))[0]
    assert "regenerating" in caplog.text
    assert np.array_equal(first, again)


def _make(args):
    path, barrier = args
    barrier.wait()
    ds = materialize(Niah(train_len=64), Vocab(64), "train", 2000, 64, 0, path)
    return read_arrays(ds)[0].sum()


def test_two_processes_creating_the_same_dataset_do_not_corrupt_it(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            sums = pool.map(_make, [(tmp_path, barrier)] * 2)
    assert sums[0] == sums[1]
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1
    assert not list(tmp_path.glob(".tmp-*"))


# --- 7. rows ------------------------------------------------------------------------------------


def test_a_torn_last_row_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"status": "ok", "accuracy": 1.0}) + "\n" + '{"status": "o')
    assert read_rows(path) == [{"status": "ok", "accuracy": 1.0}]
