"""Train a model on a task from a Hydra config, evaluate it over the length x depth grid, write rows.

    python train.py                          # tiny default comparison cell, CPU, minutes
    python train.py model.n_layers=4 task=mqar
    python train.py -m model=transformer,mamba task=niah,mqar seed=0,1
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import pipeline.config.resolvers  # noqa: F401  (conf/ uses ${run_path:...})
from pipeline.failures import record_failures
from pipeline.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@record_failures
def main(cfg: DictConfig) -> float | None:
    rows = train(cfg)
    ok = [r for r in rows if r["status"] == "ok" and r["eval_len"] == r["train_len"]]
    return sum(r["accuracy"] for r in ok) / len(ok) if ok else None  # for sweepers


if __name__ == "__main__":
    main()
