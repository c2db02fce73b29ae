"""Multirun as users run it: basic launcher with a failing job, the parallel launcher, submitit_local, wandb
offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, TINY

SWEEP_TINY = [o for o in TINY if o != "trainer=smoke"] + [
    "trainer=smoke", "+trainer.enable_checkpointing=true"]


def run_train(args: list[str], tmp_path: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    env = dict(os.environ, LONGCTX_DATA_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1",
               WANDB_MODE="offline", WANDB_DIR=str(tmp_path))
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def rows_under(path: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(path.rglob("results.jsonl")) for line in open(f)]


def test_failing_job_writes_an_error_row_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_train(["-m", *SWEEP_TINY, "model.n_kv_heads=1,3", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert out.returncode != 0  # the sweep reports its failure at the end ...
    rows = rows_under(sweep)
    ok = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] == "error"]
    assert ok and len(bad) == 1  # ... after the good job ran and the bad one left its row
    assert "model.n_kv_heads=3 must divide model.n_heads=2" in bad[0]["error"]
    report = subprocess.run([sys.executable, "scripts/collect.py", str(sweep)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0 and "error" in report.stdout
    import pandas as pd

    table = pd.read_parquet(next(sweep.glob("*.parquet")))
    assert len(table) == len(rows)


def test_submitit_local_launcher_runs_real_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_train(["-m", "hydra/launcher=submitit_local", *SWEEP_TINY, "seed=0,1", f"hydra.sweep.dir={sweep}",
                     "hydra.launcher.timeout_min=10"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = rows_under(sweep)
    assert {r["seed"] for r in rows} == {0, 1} and all(r["status"] == "ok" for r in rows)
    assert list(sweep.rglob("*_submitted.pkl")) or list(sweep.rglob(".submitit"))  # real submitit jobs
    assert f"sweep {sweep}" in out.stdout  # the end-of-multirun summary table


def test_wandb_logger_works_offline(tmp_path):
    run = tmp_path / "run"
    out = run_train([*[o for o in SWEEP_TINY if not o.startswith("logger=")], "logger=wandb",
                     f"hydra.run.dir={run}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    offline = list(tmp_path.rglob("offline-run-*"))
    assert offline, "wandb must write an offline run, with no network"
    assert rows_under(run)


def test_slurm_launcher_ties_tasks_and_gpus_to_trainer_devices():
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4",
                                           "hydra.launcher.partition=gpu"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "gpu"
    assert OmegaConf.select(cfg, "hydra.launcher.tasks_per_node") == 4
    assert OmegaConf.select(cfg, "hydra.launcher.gpus_per_node") == 4
    assert launcher["signal_delay_s"] > 0 and launcher["max_num_timeout"] > 0


VOLATILE = ("_s", "_per_s", "time", "date", "dir", "path", "host", "pid", "run_id")  # how fast, where, a random id


def outcomes(rows: list[dict]) -> dict:
    """Rows keyed by what they measure, without the columns that say how fast or where a job ran."""
    return {(r["seed"], r.get("task"), r.get("eval_len"), r.get("depth")):
            {k: v for k, v in r.items() if not any(mark in k for mark in VOLATILE)} for r in rows}


def test_parallel_launcher_writes_the_sequential_sweeps_rows(tmp_path):
    args = [*SWEEP_TINY, "seed=0,1", "trainer.threads=auto"]
    seq = run_train(["-m", *args, f"hydra.sweep.dir={tmp_path / 'seq'}"], tmp_path)
    par = run_train(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *args,
                     f"hydra.sweep.dir={tmp_path / 'par'}"], tmp_path)
    assert seq.returncode == 0 and par.returncode == 0, (seq.stderr + par.stderr)[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in par.stdout + par.stderr  # two jobs side by side, one process each
    a, b = outcomes(rows_under(tmp_path / "seq")), outcomes(rows_under(tmp_path / "par"))
    assert len(a) >= 4 and a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key
    assert {r["threads"] for r in rows_under(tmp_path / "par")} == {1}  # jobs x threads = the cores


def test_parallel_launcher_fills_the_cores():
    from pipeline.config.resolvers import sweep_jobs
    from pipeline.config.threads import usable_cores

    assert sweep_jobs("auto") == max(1, int(usable_cores()))
    assert sweep_jobs(2) == max(1, int(usable_cores() // 2))
