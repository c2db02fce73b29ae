"""Fitting one stage's LightningModule: data, Trainer, checkpoints, resume, interrupt handling.

Shared by every stage (``fit_stage``); a stage differs only in the module it hands over.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from models.lora import trainable_parameters
from pipeline.config.trainer_config import compile_settings, trainer_kwargs
from pipeline.train.checkpoint import AtomicCheckpointIO, find_resume_checkpoint
from pipeline.train.costs import TrainCostProbe, TrainFitProbe
from pipeline.train.interrupt import CheckpointOnInterrupt
from tasks.curriculum import curriculum_task
from tasks.datamodule import TaskDataModule

if TYPE_CHECKING:
    from pipeline.config.resolve import Resolved
    from pipeline.config.stage import Stage

log = logging.getLogger(__name__)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def curriculum_of(res: Resolved) -> tuple[Any, float]:
    """The first phase's task and share: only a model trained from scratch (stage=pretrain) runs one."""
    if res.stage.name != "pretrain":
        return None, 0.0
    return curriculum_task(res.data.curriculum_task, res.task, res.vocab), res.data.curriculum_share


def fit_module(cfg: DictConfig, res: Resolved, module: L.LightningModule, model: nn.Module,
               run_dir: Path) -> Optional[dict[str, Any]]:
    """Train ``module`` (which holds ``model``); row fields of the fit, or None on a non-zero DDP rank."""
    trainable = trainable_parameters(model)
    log.info("trainable parameters: %d of %d", trainable, count_params(model))
    data = TaskDataModule(res.stage.train_task(cfg, res), res.vocab, res.data.n_train, res.data.n_val,
                          res.stage.train_batch_size(res), int(cfg.seed), res.data.cache_dir, res.data.num_workers,
                          res.data.shuffle, *curriculum_of(res))
    ckpt_dir = run_dir / "checkpoints"
    compile_on, backend = compile_settings(cfg.get("trainer"))
    if compile_on:  # the stage's check (check_combinations) refused modules without compile_forward
        module.compile_forward(backend)
    costs, fit = TrainCostProbe(compiled=compile_on), TrainFitProbe()
    trainer = build_trainer(cfg, run_dir, ckpt_dir, costs, fit)
    for lg in trainer.loggers:
        lg.log_hyperparams({"config_hash": res.config_hash, "trainable_params": trainable, **flat_config(cfg)})
    # a killed or requeued run continues from its newest loadable checkpoint (a corrupt one is skipped)
    resume = find_resume_checkpoint(ckpt_dir)
    if resume is not None:
        log.info("resuming from %s", resume)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=True)
    except SIGTERMException:  # checkpointed by CheckpointOnInterrupt; exit as a terminated process, not 0
        raise SystemExit(128 + signal.SIGTERM) from None
    if trainer.global_rank != 0:
        return None
    if not trainer.fast_dev_run:
        trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # a full checkpoint: the resume point
    return dict(trainable_params=trainable, finetuned=bool(cfg.get("init_from")),
                compiled=backend if compile_on else None, train_steps=trainer.global_step, **costs.summary(),
                **fit.summary())


def build_trainer(cfg: DictConfig, run_dir: Path, ckpt_dir: Path, *probes: L.Callback) -> L.Trainer:
    """The Trainer of ``cfg.trainer``: checkpoints every ``checkpoint_every`` steps, atomically written."""
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                 every_n_train_steps=int(cfg.get("checkpoint_every", 200)))
    kwargs = trainer_kwargs(cfg.trainer)
    plugins = kwargs.pop("plugins", None) or []
    plugins = [plugins] if isinstance(plugins, (str, dict)) else list(plugins)
    callbacks = [checkpoint, *probes, CheckpointOnInterrupt(ckpt_dir / "last.ckpt")]
    if kwargs.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())
    return L.Trainer(**kwargs, default_root_dir=str(run_dir), use_distributed_sampler=False,
                     logger=build_loggers(cfg, run_dir) or False, callbacks=callbacks,
                     plugins=[*plugins, AtomicCheckpointIO()])  # checkpoints: temp beside, fsync, rename


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    node = cfg.get("logger")
    if not node:
        return []
    return [instantiate(v, save_dir=str(run_dir)) for v in node.values() if v and "_target_" in v]


class StepProgressBar(RichProgressBar):
    """Lightning's bar without "Epoch 0/-2": step-based runs have no epoch count to show."""

    def _get_train_description(self, current_epoch: int) -> str:
        steps = self.trainer.max_steps
        return f"train (max_steps={steps})" if steps and steps > 0 else f"train, epoch {current_epoch}"


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """Hyperparameters for loggers: the resolved config flattened to dotted keys."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) or node is None else str(node)

    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    walk(container, "")
    return out


def fit_stage(stage: Stage, cfg: DictConfig, res: Resolved, model: nn.Module,
              run_dir: Path) -> Optional[dict[str, Any]]:
    """Fit ``model`` in ``stage``; the row fields it adds (None on a non-zero DDP rank)."""
    if hasattr(model, "set_activation_checkpointing"):
        model.set_activation_checkpointing(res.activation_checkpointing)
    module = stage.module(cfg, res, model)
    extra = fit_module(cfg, res, module, model, run_dir)
    if extra is None:
        return None
    return {**extra, **stage.after_fit(module, model, run_dir)}
