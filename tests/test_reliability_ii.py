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
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_config

from models.caches import CacheConfig
from models.families.transformer import Transformer, TransformerConfig
from pipeline.config.eval_config import EvalConfig
from pipeline.config.resolve import ConfigError
from pipeline.evaluation.evaluate import evaluate_grid, is_oom, run_cell
from pipeline.failures import record_failures
from pipeline.results.rows import append_row, make_row, read_rows
from pipeline.run import train
from pipeline.train.checkpoint import AtomicCheckpointIO, CheckpointError, find_resume_checkpoint, read_checkpoint
from pipeline.train.run_state import RunInUseError
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


SHM = Path("/dev/shm")


@pytest.mark.skipif(not SHM.is_dir() or not os.access(SHM, os.W_OK), reason="needs /dev/shm (a second filesystem)")
def test_no_checkpoint_write_crosses_a_real_filesystem_boundary(tmp_path, monkeypatch):
    import tempfile

    tmp_other = Path(tempfile.mkdtemp(dir=SHM))
    if tmp_other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the run dir here")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_other))  # $TMPDIR on tmpfs, the run dir on disk

    def no_copy(src, dst, *a, **k):
        raise Killed(f"a checkpoint was copied across filesystems: {src} -> {dst}")

    monkeypatch.setattr(shutil, "copyfile", no_copy)
    try:
        train(compose_config(STEPS + ["evaluate=false", "trainer.max_steps=2"], run_dir=str(tmp_path)))
    finally:
        shutil.rmtree(tmp_other, ignore_errors=True)
    assert read_checkpoint(ckpt_dir(tmp_path) / "last.ckpt")["global_step"] == 2


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
    args = ([Niah(train_len=32)], Vocab(64), EvalConfig([32, 48], [0.0, 0.5, 1.0], 4, 4), CacheConfig(), 0,
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


def test_rerunning_an_eval_command_skips_its_cells(tmp_path):
    from pipeline.eval_run import evaluate_checkpoint

    train(compose_config(TINY + ["evaluate=false"], run_dir=str(tmp_path / "train")))
    ov = [f"ckpt={tmp_path / 'train' / 'checkpoints' / 'last.ckpt'}", "run_id=ev", "eval.lengths=[32]",
          "eval.depths=[0.0,1.0]", "eval.n_examples=4"]
    first = evaluate_checkpoint(compose_config(ov, config_name="eval", run_dir=str(tmp_path / "ev")), ov)
    again = evaluate_checkpoint(compose_config(ov, config_name="eval", run_dir=str(tmp_path / "ev")), ov)
    assert len(first) == len(again) == len(read_rows(tmp_path / "ev" / "results.jsonl")) == 2
    quest = ov + ["cache=quest"]  # another policy into the same dir: new cells, not skipped
    evaluate_checkpoint(compose_config(quest, config_name="eval", run_dir=str(tmp_path / "ev")), quest)
    assert len(read_rows(tmp_path / "ev" / "results.jsonl")) == 4


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
        record_failures(train)(compose_config(changed, run_dir=str(tmp_path)))  # as train.py runs it
    msg = str(err.value)
    assert "model.pos.rule: 'rope' -> 'alibi'" in msg and "optim.lr: 0.001 -> 0.05" in msg and "resume=force" in msg
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
    from pipeline.train.run_state import LOCK_FILE, OWNER_FILE

    holder = subprocess.Popen(  # another train.py in this run dir (only its lock, to stay fast)
        [sys.executable, "-c", "import os, sys, time; from filelock import FileLock; "
         "lock = FileLock(sys.argv[1]); lock.acquire(); "
         "open(sys.argv[2], 'w').write(f'pid {os.getpid()}'); print('locked', flush=True); time.sleep(120)",
         str(tmp_path / LOCK_FILE), str(tmp_path / OWNER_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=rf"run_id='twin' is in use by another process \(pid {holder.pid}"):
            record_failures(train)(compose_config(TINY + ["run_id=twin"], run_dir=str(tmp_path)))
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
    import pipeline.evaluation.evaluate as ev

    generated = []
    real_generate = ev.generate
    monkeypatch.setattr(ev, "generate", lambda task, vocab, split, n, length, *a: generated.append(length) or
                        real_generate(task, vocab, split, n, length, *a))
    monkeypatch.setattr(ev, "available_bytes", lambda device: 8 * 2**30)  # an 8 GiB machine
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2))
    rows = evaluate_grid(model, [Niah(train_len=32)], Vocab(64), EvalConfig([32, 2**28], [0.5], 4, 4), CacheConfig(), 0,
                         {"run_id": "m"}, tmp_path / "rows.jsonl")
    assert [(r["eval_len"], r["status"]) for r in rows] == [(32, "ok"), (2**28, "oom")]
    assert "estimated" in rows[1]["error"] and generated == [32]  # nothing generated or allocated for it


def test_a_cpu_allocation_failure_is_an_oom_row(tmp_path):
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2))

    def runner(model, arrays, *a):
        torch.empty(2**52, dtype=torch.uint8)  # more than any address space: DefaultCPUAllocator fails

    rows = evaluate_grid(model, [Niah(train_len=32)], Vocab(64), EvalConfig([32], [0.5], 4, 4), CacheConfig(), 0,
                         {"run_id": "c"}, None, cell_runner=runner)
    assert rows[0]["status"] == "oom", rows[0]["error"]
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 4398046511104 bytes. Error code 12"))


# --- 8. typed garbage, unreadable artefacts, atomic gates, sweep summary on failure -----------------


def _garbage_sweep(root: Path) -> Path:
    from test_figures import _niah_rows, _write_run

    run = _write_run(root, "good", _niah_rows("transformer", "rope", "pretrain", 128, 1.0, "good"), gates=True)
    with open(run / "results.jsonl", "a") as f:
        good = json.loads((run / "results.jsonl").read_text().splitlines()[0])
        for bad in ({"accuracy": "abc"}, {"accuracy": float("nan")}, {"depth": "middle"}, {"eval_len": "long"},
                    {"depth": 7.0}, {"status": "maybe"}, {"peak_mem_bytes": float("inf")}):
            f.write(json.dumps({**good, **bad, "run_id": "garbage"}) + "\n")  # json writes NaN / Infinity
    broken = _write_run(root, "broken", _niah_rows("mamba", None, "pretrain", 128, 1.0, "broken"), gates=True)
    (broken / "gates.pt").write_bytes((broken / "gates.pt").read_bytes()[:40])  # a torn gates file
    return root


def test_collect_and_plot_skip_and_report_rows_with_wrong_values_and_unreadable_artefacts(tmp_path, capsys, caplog):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import collect
    import plot

    sweep = _garbage_sweep(tmp_path / "sweep")
    rep = collect.collect(sweep)
    reasons = " | ".join(b["reason"] for b in rep.bad_rows)
    assert len(rep.bad_rows) == 7, reasons
    for what in ("accuracy='abc'", "accuracy=nan", "depth='middle'", "eval_len='long'", "depth=7.0", "'maybe'",
                 "peak_mem_bytes=inf"):
        assert what in reasons
    assert "garbage" not in set(rep.table["run_id"]) and rep.table["accuracy"].dtype.kind == "f"
    collect.print_report(rep, sweep)
    assert "7 row(s) with wrong values" in " ".join(capsys.readouterr().out.split())
    with caplog.at_level("WARNING"):
        done = plot.main([str(sweep), "--out", str(tmp_path / "fig"), "--format", "png", "--dpi", "50",
                          "--kind", "heatmap", "accuracy", "gates"])
    out = capsys.readouterr().out
    assert "skipped row" in out and all(isinstance(done[k], list) and done[k] for k in ("heatmap", "accuracy"))
    assert [p.name for p in done["gates"] if p.suffix == ".png"] == ["gates_good.png"]
    assert "broken" in caplog.text and "gates.pt" in caplog.text


def test_gates_are_written_atomically(tmp_path, monkeypatch):
    from models.duo import load_gates, save_gates

    path = tmp_path / "gates.pt"
    save_gates(torch.full((2, 2), 0.25), str(path))
    real_save = torch.save

    def killed_mid_write(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        if isinstance(f, (str, os.PathLike)):
            with open(f, "r+b") as handle:
                handle.truncate(20)
        else:
            f.truncate(20)
        raise Killed()

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(Killed):
        save_gates(torch.full((2, 2), 0.75), str(path))
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_gates(str(path)), torch.full((2, 2), 0.25))
    assert [p.name for p in tmp_path.iterdir()] == ["gates.pt"]


def test_the_sweep_summary_is_printed_at_exit_when_hydra_skips_multirun_end(tmp_path, monkeypatch, capsys):
    import atexit

    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from pipeline.failures import failure_row
    from pipeline.results.sweep_summary import SweepSummary

    at_exit = []
    monkeypatch.setattr(atexit, "register", at_exit.append)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    cb = SweepSummary()
    cb.on_multirun_start(config)
    for i, seed in enumerate((-1, -2)):  # what Hydra does for two failing jobs, then it re-raises
        err = ConfigError(f"seed={seed} is out of range")
        append_row(tmp_path / str(i) / "results.jsonl", failure_row(OmegaConf.create({"seed": seed}), err))
        job = JobReturn(overrides=[f"seed={seed}"], status=JobStatus.FAILED, _return_value=err)
        cb.on_job_end(config, job)
    assert at_exit == [cb.print]
    at_exit[0]()  # interpreter exit
    out = " ".join(capsys.readouterr().out.split())
    assert "2 rows" in out and "2 job(s) failed" in out and "seed=-2: ConfigError" in out


@pytest.mark.slow
def test_the_sweep_summary_is_printed_when_jobs_fail(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", LONGCTX_DATA_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", *TINY, "seed=-1,-2", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "sweep " in out and "2 rows" in out, out[-3000:]
    assert "2 job(s) failed" in out and "seed=-1" in out and "seed=-2" in out


# --- 9. every bad value of the corpus stopped before any data or step -----------------------

# (overrides, what the message must say): the list, then more of the same kinds.
CORPUS = [
    (["cache=duo"], "cache.policy=duo with cache.gates_path=learned in a stage='pretrain' run"),
    (["eval.depths=[]"], "eval.depths=[] must list at least one depth"),
    (["model.pos.factor=inf"], "model.pos.factor=inf is not a finite number"),
    (["optim.lr=nan"], "optim.lr=nan is not a finite number"),
    (["optim.lr=inf"], "optim.lr=inf is not a finite number"),
    (["model.pos.factor=nan"], "model.pos.factor=nan is not a finite number"),
    (["model.norm_eps=-1"], "model.norm_eps=-1.0 must be > 0"),
    (["seed=2000000000"], "seed=2000000000 is out of range; allowed: 0 <= seed < 1073741824"),
    (["data.n_train=4"], "data.n_train=4 is smaller than data.batch_size=8"),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval=0 must be >= 1"),
    (["eval.prefix_cache=true", "eval.n_questions=5"], "eval.n_questions=5 exceeds task.needles=1"),
    (["vocab_size=abc"], "vocab_size='abc' has the wrong type; expected int"),
    (["seed=-1"], "seed=-1 is out of range; allowed: 0 <= seed"),
    (["seed=abc"], "seed='abc' has the wrong type; expected int"),
    (["model.init_std=-0.02"], "model.init_std=-0.02 must be > 0"),
    (["trainer.max_steps=abc"], "trainer.max_steps='abc' has the wrong type; expected an integer"),
    (["trainer.accelerator=tpu"], "trainer.accelerator='tpu' is not available on this machine; allowed here: ["),
    (["checkpoint_every=-5"], "checkpoint_every=-5 must be >= 1"),
    (["init_from=/nonexistent"], "init_from='/nonexistent' does not exist"),
    # beyond the list
    (["resume=maybe"], "resume='maybe'; allowed: ('auto', 'force')"),
    (["trainer.val_check_interval=1.5"], "trainer.val_check_interval=1.5; allowed"),
    (["+trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1 must be a number >= 0"),
    (["optim.weight_decay=nan"], "optim.weight_decay=nan is not a finite number"),
    (["eval.depths=[0.5,nan]"], "eval.depths[1]=nan is not a finite number"),
    (["eval.prefix_cache=true", "task=mqar"], "eval.prefix_cache=true needs a task with several needles"),
    (["stage=extend", "init_from=/nonexistent.ckpt"], "init_from='/nonexistent.ckpt' does not exist"),
    (["checkpoint_every=abc"], "checkpoint_every='abc' has the wrong type"),
    (["+trainer.max_epochs=1.5"], "trainer.max_epochs=1.5 has the wrong type; expected an integer"),
]


@pytest.mark.parametrize("overrides, message", CORPUS, ids=[" ".join(o) for o, _ in CORPUS])
def test_every_bad_value_is_stopped_before_any_data_or_step(overrides, message, tmp_path, monkeypatch):
    import pipeline.run as run

    monkeypatch.setattr(run, "build_model", lambda *a: pytest.fail("a model was built"))
    with pytest.raises(ConfigError) as err:
        train(compose_config(TINY + overrides, run_dir=str(tmp_path)))
    assert message in str(err.value)
    assert not (tmp_path / "data_cache").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.gpu
def test_a_cell_beyond_the_gpus_memory_is_an_oom_row_before_allocating(tmp_path):
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=2))
    rows = evaluate_grid(model, [Niah(train_len=32)], Vocab(64), EvalConfig([32, 2**30], [0.5], 4, 4), CacheConfig(), 0,
                         {"run_id": "g"}, tmp_path / "rows.jsonl", device="cuda")
    assert [(r["eval_len"], r["status"]) for r in rows] == [(32, "ok"), (2**30, "oom")]
    assert "estimated" in rows[1]["error"] and "on cuda" in rows[1]["error"]
    with pytest.raises(torch.OutOfMemoryError) as err:
        torch.empty(2**50, dtype=torch.uint8, device="cuda")
    assert is_oom(err.value)
