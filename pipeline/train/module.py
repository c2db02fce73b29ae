"""The LightningModule shared by every family: cross-entropy on answer tokens, AdamW, warmup+cosine."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.sections import OptimConfig
from pipeline.results.provenance import RecordsProvenance
from tasks.base import IGNORE
from tasks.curriculum import curriculum_steps


def head_split(model: nn.Module) -> bool:
    """The model exposes its stack (``hidden_states``) and head (``lm_head``) apart."""
    return hasattr(model, "hidden_states") and hasattr(model, "lm_head")


HiddenFn = Callable[[torch.Tensor], torch.Tensor]


def answer_logits(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                  hidden_fn: Optional[HiddenFn] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, V) and targets (N,) at the answer positions only.

    The head runs only where a label exists: with a few answer tokens per sequence this skips
    almost all of the (B, T, V) projection. ``hidden_fn``: what computes the hidden states in place of
    ``model.hidden_states`` (its ``torch.compile``d form under ``trainer.compile``).
    """
    keep = labels != IGNORE  # (B, T)
    if head_split(model):
        hidden = (hidden_fn or model.hidden_states)(input_ids)  # (B, T, d)
        return model.lm_head(hidden[keep]), labels[keep]
    return (hidden_fn or model)(input_ids)[keep], labels[keep]


def answer_metrics(logits: torch.Tensor, targets: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token accuracy and exact match (every answer token of a sequence right)."""
    correct = logits.argmax(-1) == targets  # (N,)
    keep = labels != IGNORE
    per_seq = torch.ones(keep.shape, dtype=torch.bool, device=labels.device)
    per_seq[keep] = correct
    has_answer = keep.any(dim=1)
    exact = per_seq.all(dim=1)[has_answer].float().mean()
    return correct.float().mean(), exact


def phase_lr(step: int, total: int, optim: OptimConfig) -> float:
    """The lr multiplier at ``step`` of a ``total``-step phase: linear warmup, then cosine to min_lr_ratio."""
    warmup, floor = min(optim.warmup_steps, total), optim.min_lr_ratio
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or "embed" in name or "norm" in name or getattr(param, "_no_weight_decay", False)


class LitLM(RecordsProvenance, L.LightningModule):
    def __init__(self, model: nn.Module, optim: OptimConfig, config: dict[str, Any] | None = None,
                 restart_share: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.optim = optim
        # a curriculum's second phase starts at floor(share x steps): warmup and cosine start again there
        self.restart_share = restart_share
        self.restart_step = 0  # that step, set with the schedule in configure_optimizers (0: no restart)
        self.config = config or {}  # resolved run config, saved in every checkpoint
        self.compile_backend: Optional[str] = None  # set by compile_forward (trainer.compile)
        self.hidden_fn: Optional[HiddenFn] = None  # compiled in on_fit_start

    def compile_forward(self, backend: str) -> None:
        """Train and validate through ``torch.compile`` (pipeline/train/compile.py); the weights stay ``self.model``'s.

        The compiled function is made in ``on_fit_start``, in the process that trains: a spawned DDP worker
        receives the module pickled, and a compiled function does not pickle.
        """
        self.compile_backend = backend

    def on_fit_start(self) -> None:
        if self.compile_backend and self.hidden_fn is None:
            from pipeline.train.compile import compiled

            target = self.model.hidden_states if head_split(self.model) else self.model
            self.hidden_fn = compiled(target, self.compile_backend)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits, targets = answer_logits(self.model, batch["input_ids"], batch["labels"], self.hidden_fn)
        loss = F.cross_entropy(logits.float(), targets)
        token_acc, exact = answer_metrics(logits, targets, batch["labels"])
        bs = batch["input_ids"].shape[0]
        on_step = stage == "train"
        # Averaged over data-parallel ranks, so a DDP run logs the global batch's numbers.
        sync = self.trainer.world_size > 1
        kw = dict(batch_size=bs, on_step=on_step, on_epoch=not on_step, sync_dist=sync)
        self.log(f"{stage}/loss", loss, prog_bar=True, **kw)
        self.log(f"{stage}/exact_match", exact, prog_bar=stage == "val", **kw)
        self.log(f"{stage}/token_accuracy", token_acc, **kw)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at step {self.global_step}; "
                "the last good checkpoint is kept (lower optim.lr or check the data)")
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """At a curriculum's second phase the optimizer starts afresh (moments and bias correction), as a
        new run from the first phase's weights would: carried-over moments did not transfer the circuit."""
        if self.restart_step and self.global_step == self.restart_step:
            for opt in self.trainer.optimizers:
                opt.state.clear()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in params if not no_decay(n, p)], "weight_decay": self.optim.weight_decay},
            {"params": [p for n, p in params if no_decay(n, p)], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.optim.lr, betas=tuple(self.optim.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        cut = curriculum_steps(self.restart_share, total) if (self.trainer.max_steps or 0) > 0 else 0
        self.restart_step = cut

        def schedule(step: int) -> float:
            if cut:  # each curriculum phase gets its own warmup and cosine
                return phase_lr(step, cut, self.optim) if step < cut else phase_lr(step - cut, total - cut, self.optim)
            return phase_lr(step, total, self.optim)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
