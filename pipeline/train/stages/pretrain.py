"""``pretrain``: the model from scratch on the task, next-token loss on answers (``LitLM``).

LoRA+ (``lora.enabled=true``) is applied when enabled, as for ``extend``, and merged after the fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from omegaconf import DictConfig
from torch import nn

from models.lora import apply_lora, has_lora, merge_lora
from pipeline.config.stage import STAGES, Stage, run_config_dict
from pipeline.train.module import LitLM

if TYPE_CHECKING:
    from pipeline.config.resolve import Resolved


@STAGES.register()
class Pretrain(Stage):
    name = "pretrain"

    def module(self, cfg: DictConfig, res: Resolved, model: nn.Module) -> L.LightningModule:
        apply_lora(model, res.lora)
        return LitLM(model, res.optim, config=run_config_dict(cfg), restart_share=res.data.curriculum_share)

    def after_fit(self, module: L.LightningModule, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        if has_lora(model):
            merge_lora(model)  # evaluation and export use plain merged weights
        return {}
