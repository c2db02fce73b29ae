"""The plain sections of a run's config: top-level scalars, data, optimiser (each checks its values)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.config.schema import ConfigError, to_dataclass
from tasks.base import MAX_SEED

RESUME_MODES = ("auto", "force")  # force: continue a named run whose config changed (pipeline/train/run_state.py)


@dataclass
class RunConfig:
    """The top-level scalars of train.py / eval.py configs (those present are checked)."""

    seed: int = 0
    vocab_size: int = 256
    checkpoint_every: int = 200
    run_id: Optional[str] = None
    init_from: Optional[str] = None
    resume: str = "auto"
    evaluate: bool = True
    fit: bool = True
    zero_shot_eval: bool = False
    allow_sparse_eval: bool = False
    allow_nonfinite: bool = False  # load imported / checkpoint weights holding NaN or inf (+allow_nonfinite=true)

    def __post_init__(self) -> None:
        if not 0 <= self.seed < MAX_SEED:
            raise ConfigError(f"seed={self.seed} is out of range; allowed: 0 <= seed < {MAX_SEED}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every} must be >= 1 (training steps)")
        if self.resume not in RESUME_MODES:
            raise ConfigError(f"resume={self.resume!r}; allowed: {RESUME_MODES}")


@dataclass
class DataConfig:
    n_train: int = 20000
    n_val: int = 256
    batch_size: int = 32
    num_workers: int = 0
    cache_dir: Optional[str] = None  # None: generate in memory, no cache
    shuffle: bool = True  # false: fixed order (DDP vs single-process equivalence checks)
    # A first training phase on another task family (its defaults at the task's train_len): the first
    # floor(curriculum_share x max_steps) optimizer steps read fresh rows of it (tasks/curriculum.py).
    curriculum_task: Optional[str] = None
    curriculum_share: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be >= 1")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0")
        if not 0.0 <= self.curriculum_share < 1.0:
            raise ConfigError(f"data.curriculum_share={self.curriculum_share} must be in [0, 1)")
        if (self.curriculum_task is None) != (self.curriculum_share == 0.0):
            raise ConfigError(f"data.curriculum_task={self.curriculum_task!r} with data.curriculum_share="
                              f"{self.curriculum_share}: set both (a family and a share > 0) or neither")


@dataclass
class OptimConfig:
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay={self.weight_decay} must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas} must be two numbers in [0, 1)")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")


def run_config(cfg: Any) -> RunConfig:
    names = [f.name for f in dataclasses.fields(RunConfig)]
    return to_dataclass(RunConfig, {k: cfg[k] for k in names if k in cfg}, "")
