"""Evaluate a checkpoint over a grid under a cache policy, optionally overriding the model config.

    python eval.py ckpt=outputs/.../checkpoints/last.ckpt eval.lengths=[256,512,1024,2048]
    python eval.py ckpt=... model.pos.rule=yarn model.pos.factor=4 model.pos.original_max_position_embeddings=256
    python eval.py ckpt=... cache=quest cache.budget=256
    python eval.py init_from=hf:/models/Llama-3.2-1B model.max_seq_len=32768 cache=sink_window
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import pipeline.config.resolvers  # noqa: F401  (conf/ uses ${run_path:...})
from pipeline.eval_run import evaluate_checkpoint
from pipeline.failures import record_failures


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@record_failures
def main(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg, list(HydraConfig.get().overrides.task))


if __name__ == "__main__":
    main()
