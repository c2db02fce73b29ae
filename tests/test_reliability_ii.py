"""Reliability II (issue 16): each attack that got through, reproduced, and now stopped.

1 checkpoints across filesystems, 2 evaluation resume, 3 torn rows, 4 run_id vs config,
5 training costs on resume, 6 run lock and dataset temp folders, 7 memory far beyond the machine,
8 typed garbage / unreadable artefacts / sweep summary, 9 (issue point 10) bad values up front.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_config

from models.cache import CacheConfig
from models.transformer import Transformer, TransformerConfig
from pipeline.checkpoint import AtomicCheckpointIO, CheckpointError, find_resume_checkpoint, read_checkpoint
from pipeline.config import ConfigError
from pipeline.evaluate import evaluate_grid, is_oom, run_cell
from pipeline.rows import append_row, make_row, read_rows
from pipeline.run import train
from pipeline.run_state import RunInUseError
from tasks.niah import Niah
from tasks.vocab import Vocab

STEPS = [o for o in TINY if o != "trainer=smoke"] + [
    "trainer=cpu", "trainer.max_steps=4", "trainer.val_check_interval=100", "checkpoint_every=1",
    "+trainer.enable_progress_bar=false"]


class Killed(BaseException):
    """Stands for SIGKILL at a chosen point: nothing after it runs, no except Exception catches it."""


def ckpt_dir(run: Path) -> Path:
    return run / "checkpoints"


# --- 1. checkpoints: atomic in the destination directory, previous kept, fallback on resume --------


@pytest.fixture
def second_filesystem(tmp_path, monkeypatch):
    """The run dir on another filesystem than $TMPDIR: renames across it fail with EXDEV, so a move
    becomes a copy; the second such copy is killed half-way (kill -9 or a full disk mid-copy)."""
    run = tmp_path / "run"
    real_rename, real_replace = os.rename, os.replace
    copies = {"n": 0}

    def inside(p) -> bool:
        return Path(os.path.abspath(p)).is_relative_to(run)

    def cross_checked(real):
        def rename(src, dst, *a, **k):
            if inside(src) != inside(dst):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(src, dst, *a, **k)
        return rename

    def interrupted_copy(src, dst, *a, **k):
        copies["n"] += 1
        data = Path(src).read_bytes()
        with open(dst, "wb") as f:  # what copyfile does first: empty the destination
            f.write(data[: len(data) // 3] if copies["n"] >= 2 else data)
        if copies["n"] >= 2:
            raise Killed("killed during the cross-filesystem copy")
        return dst

    monkeypatch.setattr(os, "rename", cross_checked(real_rename))
    monkeypatch.setattr(os, "replace", cross_checked(real_replace))
    monkeypatch.setattr(shutil, "copyfile", interrupted_copy)
    return run


def test_checkpoints_survive_a_run_dir_on_another_filesystem(second_filesystem):
    run = second_filesystem
    cfg = compose_config(STEPS + ["evaluate=false"], run_dir=str(run))
    try:
        train(cfg)
    except Killed:
        pass  # the old writer: killed mid-copy; the same command must still resume below
    assert read_checkpoint(ckpt_dir(run) / "last.ckpt")["global_step"] >= 1  # never empty, never partial
    train(cfg)  # the same command again: resumes, no hand-deleting
    assert read_checkpoint(ckpt_dir(run) / "last.ckpt")["global_step"] == 4
    assert not [p for p in ckpt_dir(run).iterdir() if ".tmp-" in p.name]


def test_a_kill_or_full_disk_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    good = path.read_bytes()
    real_fsync = os.fsync

    for failure in (Killed("kill -9 before the data reached the disk"), OSError(errno.ENOSPC, "No space left")):
        def failing_fsync(fd, failure=failure):
            raise failure

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(type(failure)):
            io.save_checkpoint({"state_dict": {"w": torch.zeros(10**5)}, "global_step": 2}, path)
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert path.read_bytes() == good
        assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # the temp file removed
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    assert read_checkpoint(path)["global_step"] == 2
    assert read_checkpoint(path.with_name("last.prev.ckpt"))["global_step"] == 1  # the previous, kept


def test_resume_falls_back_to_the_newest_loadable_checkpoint_with_a_warning(tmp_path):
    cfg = compose_config(STEPS + ["evaluate=false", "trainer.max_steps=3"], run_dir=str(tmp_path))
    train(cfg)
    last = ckpt_dir(tmp_path) / "last.ckpt"
    last.write_bytes(b"")  # what the old cross-filesystem copy left behind
    with pytest.warns(UserWarning, match="newest loadable checkpoint"):
        assert find_resume_checkpoint(ckpt_dir(tmp_path)).name == "last.prev.ckpt"
    with pytest.warns(UserWarning, match="newest loadable checkpoint"):
        train(cfg)  # the same command resumes instead of refusing
    assert read_checkpoint(last)["global_step"] == 3
    for p in ckpt_dir(tmp_path).glob("*.ckpt"):
        p.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no checkpoint of this run can be resumed.*last.ckpt"):
        train(cfg)


# --- 2. evaluation resumes; collect reports duplicates ----------------------------------------------


def test_a_killed_evaluation_resumes_without_duplicating_rows(tmp_path):
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2))
    args = ([Niah(train_len=32)], Vocab(64), [32, 48], [0.0, 0.5, 1.0], 4, 4, CacheConfig(), 0,
            {"run_id": "r", "config_hash": "h1"}, tmp_path / "results.jsonl")
    calls = []

    def killed_at_cell_4(model, arrays, *a):
        calls.append(arrays.tokens.shape[1])
        if len(calls) == 4:
            raise Killed()
        return run_cell(model, arrays, *a)

    with pytest.raises(Killed):
        evaluate_grid(model, *args, cell_runner=killed_at_cell_4)
    calls.clear()
    rows = evaluate_grid(model, *args, cell_runner=killed_at_cell_4)
    assert len(calls) == 3  # only the cells without a row
    on_disk = read_rows(tmp_path / "results.jsonl")
    assert len(on_disk) == len(rows) == 6
    assert len({(r["eval_len"], r["depth"]) for r in on_disk}) == 6
    other = evaluate_grid(model, *args[:-2], {"run_id": "r", "config_hash": "h2"}, args[-1])  # a new config: runs
    assert len(other) == 6 and len(read_rows(tmp_path / "results.jsonl")) == 12


def test_rerunning_a_finished_named_run_adds_no_rows(tmp_path):
    cfg = compose_config(TINY + ["run_id=again"], run_dir=str(tmp_path))
    first = train(cfg)
    second = train(cfg)
    assert len(read_rows(tmp_path / "results.jsonl")) == len(first) == len(second) == 4


def test_collect_reports_duplicate_cells(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import collect

    run = tmp_path / "sweep" / "0"
    base = dict(run_id="r", config_hash="h", model="transformer", pos="rope", attention="full", cache="full",
                task="niah", train_len=32, seed=0, n_examples=4, status="ok", accuracy=0.5)
    for length, depth in [(32, 0.0), (32, 1.0), (32, 0.0)]:
        append_row(run / "results.jsonl", make_row(**base, eval_len=length, depth=depth))
    append_row(run / "results.jsonl", make_row(**{**base, "status": "error", "accuracy": None},
                                               eval_len=32, depth=1.0, error="x"))  # an error, then retried
    rep = collect.collect(tmp_path / "sweep")
    assert len(rep.duplicates) == 2 and set(rep.duplicates["depth"]) == {0.0}
    from rich.console import Console

    console = Console(record=True, width=200)
    collect.print_report(rep, tmp_path / "sweep", console)
    assert "2 duplicated row(s)" in " ".join(console.export_text().split())


# --- 3. torn last line ----------------------------------------------------------------------------


def test_an_append_after_a_torn_line_keeps_the_good_row(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, make_row(status="ok", accuracy=1.0, eval_len=1))
    with open(path, "a") as f:
        f.write('{"status": "ok", "acc')  # full disk mid-write: no newline
    append_row(path, make_row(status="ok", accuracy=0.5, eval_len=2))
    assert [r["eval_len"] for r in read_rows(path)] == [1, 2]
    with open(path, "a") as f:
        f.write(json.dumps(make_row(status="ok", accuracy=0.25, eval_len=3)))  # whole row, newline lost
    append_row(path, make_row(status="ok", accuracy=0.5, eval_len=4))
    assert [r["eval_len"] for r in read_rows(path)] == [1, 2, 3, 4]


# --- 4. same run_id, different config --------------------------------------------------------------


def test_same_run_id_with_another_config_stops_naming_the_fields(tmp_path):
    train(compose_config(TINY + ["run_id=rope-run"], run_dir=str(tmp_path)))
    ckpt_before = read_checkpoint(ckpt_dir(tmp_path) / "last.ckpt")
    n_rows = len(read_rows(tmp_path / "results.jsonl"))
    changed = TINY + ["run_id=rope-run", "model.pos.rule=alibi", "optim.lr=0.05"]
    with pytest.raises(ConfigError) as err:
        train(compose_config(changed, run_dir=str(tmp_path)))
    msg = str(err.value)
    assert "model.pos.rule: 'rope' -> 'alibi'" in msg and "optim.lr: 0.003 -> 0.05" in msg and "resume=force" in msg
    assert read_checkpoint(ckpt_dir(tmp_path) / "last.ckpt")["config"] == ckpt_before["config"]
    assert len(read_rows(tmp_path / "results.jsonl")) == n_rows
    rows = train(compose_config(changed + ["resume=force"], run_dir=str(tmp_path)))  # on purpose
    assert rows and {r["pos"] for r in rows} == {"alibi"}
    assert json.loads((tmp_path / "run.json").read_text())["history"]


# --- 5. training costs survive a resume ------------------------------------------------------------


def test_a_resumed_run_still_reports_its_training_costs(tmp_path):
    train(compose_config(STEPS + ["evaluate=false"], run_dir=str(tmp_path)))  # killed before evaluating
    states = read_checkpoint(ckpt_dir(tmp_path) / "last.ckpt")["callbacks"]
    assert any(k.startswith("TrainCostProbe") and v["peak_bytes"] for k, v in states.items())
    rows = train(compose_config(STEPS + ["evaluate=true"], run_dir=str(tmp_path)))  # resumed: 0 steps
    assert rows and all(r["train_step_s"] and r["train_peak_mem_bytes"] for r in rows)


# --- 6. one process per run dir; dataset temp folders ----------------------------------------------


def test_a_second_process_on_the_same_run_stops_with_a_clear_message(tmp_path):
    from pipeline.run_state import LOCK_FILE, OWNER_FILE

    holder = subprocess.Popen(  # another train.py in this run dir (only its lock, to stay fast)
        [sys.executable, "-c", "import os, sys, time; from filelock import FileLock; "
         "lock = FileLock(sys.argv[1]); lock.acquire(); "
         "open(sys.argv[2], 'w').write(f'pid {os.getpid()}'); print('locked', flush=True); time.sleep(120)",
         str(tmp_path / LOCK_FILE), str(tmp_path / OWNER_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=rf"run_id='twin' is in use by another process \(pid {holder.pid}"):
            train(compose_config(TINY + ["run_id=twin"], run_dir=str(tmp_path)))
        assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "results.jsonl").exists()
    finally:
        holder.kill()  # kill -9 releases the lock: the run can go on
        holder.wait()
    assert train(compose_config(TINY + ["run_id=twin", "evaluate=false"], run_dir=str(tmp_path))) == []


def test_stale_dataset_temp_folders_are_cleaned_on_start_but_not_ones_being_written(tmp_path):
    from filelock import FileLock

    cache = tmp_path / "data_cache"
    stale = cache / ".tmp-niah-train-L32-n64-0123456789abcdef-deadbeef"
    busy = cache / ".tmp-niah-val-L32-n16-fedcba9876543210-cafef00d"
    for d in (stale, busy):
        d.mkdir(parents=True)
        (d / "data.arrow").write_bytes(b"\0" * 1000)
    with FileLock(str(cache / "niah-val-L32-n16-fedcba9876543210") + ".lock"):  # another job writes it now
        train(compose_config(TINY + ["evaluate=false"], run_dir=str(tmp_path)))
    assert not stale.exists() and busy.exists()


# --- 7. memory far beyond the machine; CPU allocation failures -------------------------------------


def test_a_cell_beyond_the_machines_memory_is_an_oom_row_before_allocating(tmp_path, monkeypatch):
    import pipeline.evaluate as ev

    generated = []
    real_generate = ev.generate
    monkeypatch.setattr(ev, "generate", lambda task, vocab, split, n, length, *a: generated.append(length) or
                        real_generate(task, vocab, split, n, length, *a))
    monkeypatch.setattr(ev, "available_bytes", lambda device: 8 * 2**30)  # an 8 GiB machine
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2))
    t0 = time.perf_counter()
    rows = evaluate_grid(model, [Niah(train_len=32)], Vocab(64), [32, 2**28], [0.5], 4, 4, CacheConfig(), 0,
                         {"run_id": "m"}, tmp_path / "rows.jsonl")
    assert time.perf_counter() - t0 < 20
    assert [(r["eval_len"], r["status"]) for r in rows] == [(32, "ok"), (2**28, "oom")]
    assert "estimated" in rows[1]["error"] and generated == [32]  # nothing generated or allocated for it


def test_a_cpu_allocation_failure_is_an_oom_row(tmp_path):
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2))

    def runner(model, arrays, *a):
        torch.empty(2**52, dtype=torch.uint8)  # more than any address space: DefaultCPUAllocator fails

    rows = evaluate_grid(model, [Niah(train_len=32)], Vocab(64), [32], [0.5], 4, 4, CacheConfig(), 0,
                         {"run_id": "c"}, None, cell_runner=runner)
    assert rows[0]["status"] == "oom", rows[0]["error"]
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 4398046511104 bytes. Error code 12"))
