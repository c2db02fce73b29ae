"""The ``duo_gates`` stage: the model frozen, one gate per layer x KV head learned by distillation.

The student mixes (1 - alpha) * its own sink_window attention + alpha * the teacher's full
attention per head (DuoAttention's two-way forward, models/duo.py); the loss is the squared error
of its final hidden states against the frozen full-attention model over the question/answer
region, plus lam * mean|alpha|. AdamW, no weight decay, lr 0.02; the reference's schedule
min(1, max((s+1)/(N/5), 0.1), max((N-s)/(N/5), 0.1)): warm-up and decay over a fifth of the steps
each, never below 0.1. How many heads stream is decided at deployment only (``cache.sparsity``).

The stage owns the ``duo`` section (``DuoConfig``) and leaves ``gates.pt`` in the run dir, which
``cache.gates_path=learned`` serves to the duo cache policy at evaluation. The gates may learn on other
data than the run evaluates (``duo.data_task``: overrides of ``task``, e.g. several keyed needles at
spread depths, as the reference's passkey data), so a study's duo arm is scored on the study's task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from models.duo import OBJECTIVES, attach_duo_gates, clamp_gates_, detach_duo_gates, duo_distill_loss, duo_hidden_pair
from models.duo import save_gates as save_gate_file
from pipeline.config.schema import ConfigError
from pipeline.config.stage import STAGES, Stage, run_config_dict
from pipeline.config.task_config import build_task
from pipeline.results.provenance import RecordsProvenance
from tasks.base import IGNORE, Task

if TYPE_CHECKING:
    from pipeline.config.resolve import Resolved


@dataclass
class DuoConfig:
    lr: float = 0.02
    lam: float = 0.05  # weight of mean|alpha|
    objective: str = "two_way"  # two_way (DuoAttention) | same_states (ablation: full branch on student states)
    data_task: dict[str, Any] = field(default_factory=dict)  # overrides of `task` for the gate data only
    batch_size: Optional[int] = None  # rows per gate step (None: data.batch_size); the study's data node is its base's

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"duo.lr={self.lr} must be > 0")
        if self.lam < 0:
            raise ValueError(f"duo.lam={self.lam} must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"duo.batch_size={self.batch_size} must be >= 1 (or null: data.batch_size)")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"duo.objective={self.objective!r}; allowed: {list(OBJECTIVES)}")


def qa_region(input_ids: torch.Tensor, labels: torch.Tensor, query_token: int) -> torch.Tensor:
    """(B, T) True from the first question marker on (the QA block), or at answer labels if none."""
    is_query = input_ids == query_token
    has = is_query.any(dim=1, keepdim=True)
    first = is_query.float().argmax(dim=1, keepdim=True)
    from_query = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] >= first
    return torch.where(has, from_query, labels != IGNORE)


def duo_schedule(total: int, floor: float = 0.1):
    """DuoAttention's LR multiplier per step: linear ramps over total // 5 steps, clipped to [floor, 1]."""
    ramp = max(1, total // 5)

    def lr(step: int) -> float:
        return min(1.0, max((step + 1) / ramp, floor), max((total - step) / ramp, floor))

    return lr


class DuoGatesLM(RecordsProvenance, L.LightningModule):
    def __init__(self, model: nn.Module, duo: DuoConfig, query_token: int,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model, self.duo, self.query_token = model, duo, query_token
        self.config = config or {}
        self.gates = attach_duo_gates(model)

    def _loss(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        h_full, h_mix = duo_hidden_pair(self.model, batch["input_ids"], self.duo.objective)
        mask = qa_region(batch["input_ids"], batch["labels"], self.query_token)
        loss = duo_distill_loss(h_full, h_mix, mask, self.gates, self.duo.lam)
        bs = batch["input_ids"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=bs)
        self.log(f"{stage}/mean_gate", self.gates.detach().mean(), batch_size=bs)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        clamp_gates_(self.gates)  # clamped before every step, as the reference does
        return self._loss(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._loss(batch, "val")

    def on_train_end(self) -> None:
        clamp_gates_(self.gates)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW([self.gates], lr=self.duo.lr, weight_decay=0.0)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, duo_schedule(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def save_gates(gates: torch.Tensor, run_dir: Path) -> Path:
    """Write learned DuoAttention gates as run_dir/gates.pt; evaluation serves them to
    ``cache.gates_path=learned`` (validation accepts that name before the gates exist)."""
    path = run_dir / "gates.pt"
    save_gate_file(gates, str(path))
    return path


@STAGES.register()
class DuoGates(Stage):
    name = "duo_gates"
    compiles = False  # the gate-distillation forward (two passes per step) is not compiled
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

        self.train_task(cfg, res)  # a bad duo.data_task fails here, before any work

    def train_task(self, cfg: DictConfig, res: Resolved) -> Task:
        overrides = res.stage_config.data_task
        if not overrides:
            return res.task
        return build_task({**OmegaConf.to_container(cfg.task, resolve=True), **overrides}, "duo.data_task")

    def train_batch_size(self, res: Resolved) -> int:
        return res.stage_config.batch_size or res.data.batch_size

    def module(self, cfg: DictConfig, res: Resolved, model: nn.Module) -> L.LightningModule:
        return DuoGatesLM(model, res.stage_config, query_token=res.vocab.QUERY, config=run_config_dict(cfg))

    def after_fit(self, module: L.LightningModule, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        path = save_gates(module.gates, run_dir)
        detach_duo_gates(model)
        return {"gates_path": str(path)}
