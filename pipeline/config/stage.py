"""What a training stage is (its checks, the LightningModule it fits, what its run leaves behind) and the
registry that names one (``stage=NAME``).

The protocol and its registry live in the config room, not beside the variants in
``pipeline/train/stages/``, because a stage is chosen and checked while the config is resolved
(``pipeline/config/resolve.py``) and ``Resolved`` holds it; training (``pipeline/train/fit.py: fit_stage``)
runs it. The registry discovers the variants by importing ``pipeline.train.stages`` module by module on
first lookup (discovery is not an import edge), so config never imports train.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pipeline.config.schema import to_dataclass
from registries import Registry

if TYPE_CHECKING:
    from pipeline.config.resolve import Resolved
    from tasks.base import Task


STAGES: Registry[type] = Registry("stage", "stage", package="pipeline.train.stages")


class Stage:
    """Base of every stage. Subclasses set ``name`` and override what differs.

    ``needs_init``: the stage starts from ``init_from`` (a checkpoint); ``learns_gates``: its run writes
    the gates ``cache.gates_path=learned`` serves; ``compiles``: its module trains under ``trainer.compile``;
    ``section``/``section_class``: the stage's own config
    node (``cfg.<section>``) and the dataclass it becomes (``res.stage_config``).
    """

    name: ClassVar[str] = "base"
    needs_init: ClassVar[bool] = False
    learns_gates: ClassVar[bool] = False
    section: ClassVar[Optional[str]] = None
    section_class: ClassVar[Optional[type]] = None
    compiles: ClassVar[bool] = True  # its module has compile_forward (trainer.compile)

    def settings(self, cfg: DictConfig) -> Any:
        """The stage's own section as its dataclass (None when it has none)."""
        if self.section_class is None:
            return None
        return to_dataclass(self.section_class, cfg.get(self.section), self.section)

    def check(self, cfg: DictConfig, res: Resolved) -> None:
        """What only this stage rules out, given the validated sections (raise ConfigError)."""

    def train_task(self, cfg: DictConfig, res: Resolved) -> Task:
        """The task the stage's training data come from (evaluation always runs ``res.eval_tasks``)."""
        return res.task

    def train_batch_size(self, res: Resolved) -> int:
        """Rows per training step (a stage whose ``data`` node belongs to a study's base may set its own)."""
        return res.data.batch_size

    def module(self, cfg: DictConfig, res: Resolved, model: nn.Module) -> L.LightningModule:
        """The LightningModule that trains ``model`` in this stage."""
        raise NotImplementedError

    def after_fit(self, module: L.LightningModule, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        """Leave the stage's products in ``run_dir``; return extra row fields."""
        return {}



def run_config_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config, saved in every checkpoint of the stage."""
    return OmegaConf.to_container(cfg, resolve=True)
