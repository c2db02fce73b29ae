"""``duo_gates``: the model frozen, DuoAttention's per-layer x KV-head gates learned by distillation.

The stage owns the ``duo`` section (``DuoConfig``: lr, lam, objective) and leaves ``gates.pt`` in the
run dir, which ``cache.gates_path=learned`` serves to the duo cache policy at evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from omegaconf import DictConfig
from torch import nn

from models.duo import detach_duo_gates
from pipeline.duo_stage import DuoConfig, DuoGatesLM, save_gates
from pipeline.schema import ConfigError
from pipeline.stages import STAGES
from pipeline.stages.base import Stage, run_config_dict

if TYPE_CHECKING:
    from pipeline.config import Resolved


@STAGES.register()
class DuoGates(Stage):
    name = "duo_gates"
    needs_init = True
    learns_gates = True
    section = "duo"
    section_class = DuoConfig

    def check(self, cfg: DictConfig, res: Resolved) -> None:
        if res.lora.enabled:
            raise ConfigError("lora.enabled=true with stage=duo_gates: the duo stage trains only the gates")
        if res.model.family != "transformer":
            raise ConfigError(f"stage=duo_gates needs model.family=transformer (attention heads), "
                              f"got {res.model.family!r}")
        if res.activation_checkpointing:
            # the stage switches attention patterns around each forward; a recompute in the backward
            # would run outside that switch, with the wrong pattern
            raise ConfigError("trainer.activation_checkpointing=true with stage=duo_gates: not supported "
                              "(the gates are the only weights trained; set it to false)")

    def module(self, cfg: DictConfig, res: Resolved, model: nn.Module) -> L.LightningModule:
        return DuoGatesLM(model, res.stage_config, query_token=res.vocab.QUERY, config=run_config_dict(cfg))

    def after_fit(self, module: L.LightningModule, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        path = save_gates(module.gates, run_dir)
        detach_duo_gates(model)
        return {"gates_path": str(path)}
