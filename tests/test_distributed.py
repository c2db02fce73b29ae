"""Scale-out by config only: DDP on 2 CPU processes (gloo), eager or compiled, follows the 1-process loss
trajectory."""

import csv
from pathlib import Path

import pytest
from conftest import TINY, compose_config

from pipeline.run import train


def losses(run_dir: Path) -> list[float]:
    rows = list(csv.DictReader(open(next(run_dir.glob("logs/version_*/metrics.csv")))))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.parametrize("compiled", [[], ["trainer.compile=true", "trainer.compile_backend=aot_eager"]],
                         ids=["eager", "compiled"])
def test_ddp_two_processes_match_one_process(tmp_path, compiled):
    common = [o for o in TINY if not o.startswith(("trainer=", "logger="))] + [
        "logger=csv", "data.shuffle=false", "data.batch_size=8", "evaluate=false", "trainer.max_steps=6",
        "trainer.log_every_n_steps=1", "trainer.val_check_interval=6", "+trainer.limit_val_batches=1",
        "+trainer.enable_progress_bar=false"]
    train(compose_config(common + ["trainer=cpu"], run_dir=str(tmp_path / "one")))
    train(compose_config(common + ["trainer=ddp"] + compiled, run_dir=str(tmp_path / "two")))
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert two == pytest.approx(one, rel=1e-4, abs=1e-5)
