"""Test-only plugin: one toy training stage and one toy task family, each one class in this one file.

Nothing else in the repository names them: the registries find them (tests/conftest.py imports every
module of tests/plugins), and the registry-parametrized contract tests (tests/test_task_contracts.py,
tests/test_stage_contracts.py, tests/test_baselines.py, tests/test_tasks_suite.py, ``eval=ruler``,
``task=mix``) pick them up. That is the proof that a stage or a task family is one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
from omegaconf import DictConfig
from torch import nn

from pipeline.config.schema import ConfigError
from pipeline.config.stage import STAGES, Stage, run_config_dict
from pipeline.train.module import LitLM
from tasks.base import Task, TaskArrays, register, sample_distinct, uniform_tokens
from tasks.baselines import Prior
from tasks.common import place_blocks
from tasks.vocab import Vocab


@register
@dataclass
class ToyMarked(Task):
    """Recall the value that follows the one MARK among ``decoys`` SEP-marked values (filler between).

        f f SEP d1 f MARK v f f SEP d2 f ...   UNUSED ANSWER | v

    Chance floor: the marked pair sits in a uniformly random one of the decoys + 1 pair slots, so a
    shortcut that ignores the marker names one of decoys + 1 equally likely values: 1 / (decoys + 1).
    """

    name: ClassVar[str] = "toy_marked"
    suite_rank: ClassVar[int] = 1000  # joins task=mix's defaults and eval=ruler after every in-tree family
    train_len: int = 64
    decoys: int = 8

    def __post_init__(self) -> None:
        if self.decoys < 0:
            raise ValueError(f"task.decoys={self.decoys} must be >= 0")
        super().__post_init__()

    def min_length(self) -> int:
        return 2 * (self.decoys + 1) + 3  # the pairs, then UNUSED ANSWER value

    def check_vocab(self, vocab: Vocab) -> None:
        if len(vocab.values) < self.decoys + 1:
            raise ValueError(f"task.decoys={self.decoys} needs {self.decoys + 1} distinct values; "
                             f"vocab_size={vocab.size} has {len(vocab.values)}")

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(Vocab.UNUSED, 0, 1)}

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        return {"accuracy": 1.0 / (self.decoys + 1)}

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_vocab(vocab)
        m, context = self.decoys + 1, length - 3
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        slots = sample_distinct(rng, n, range(context // 2), m)  # (n, m) pair slots; column 0 is marked
        values = sample_distinct(rng, n, vocab.values, m)  # (n, m)
        markers = np.full((n, m), vocab.SEP)
        markers[:, 0] = vocab.MARK
        place_blocks(tokens, 2 * slots, np.stack([markers, values], axis=2))  # (n, m, 2) at even offsets
        tokens[:, context], tokens[:, context + 1], tokens[:, context + 2] = vocab.UNUSED, vocab.ANSWER, values[:, 0]
        answer_mask = np.zeros((n, length), dtype=bool)
        answer_mask[:, context + 2] = True
        return TaskArrays(tokens, answer_mask, np.full(n, np.nan), {"decoys": np.full(n, self.decoys)})

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        marked = (hidden == vocab.MARK).argmax(axis=1)
        out[answer_mask] = hidden[np.arange(len(hidden)), marked + 1]
        return out

    def shortcuts(self) -> dict[str, Any]:
        return {"last_pair": last_pair}


def last_pair(task: Task, vocab: Vocab, hidden: np.ndarray, mask: np.ndarray, prior: Prior) -> np.ndarray:
    """The value of the last pair, whatever its marker (a recency guess that never tells MARK from SEP)."""
    out = hidden.copy()
    is_marker = np.isin(hidden, (vocab.SEP, vocab.MARK))
    last = hidden.shape[1] - 1 - is_marker[:, ::-1].argmax(axis=1)
    out[mask] = hidden[np.arange(len(hidden)), last + 1]
    return out


@STAGES.register()
class ToyHeadOnly(Stage):
    """``stage=toy_head_only``: a linear probe, only the output head trains (the rest is frozen)."""

    name = "toy_head_only"

    def check(self, cfg: DictConfig, res: Any) -> None:
        if res.lora.enabled:
            raise ConfigError("lora.enabled=true with stage=toy_head_only: only the head trains")

    def module(self, cfg: DictConfig, res: Any, model: nn.Module) -> L.LightningModule:
        for p in model.parameters():
            p.requires_grad_(False)
        model.lm_head.weight.requires_grad_(True)
        return LitLM(model, res.optim, config=run_config_dict(cfg))

    def after_fit(self, module: L.LightningModule, model: nn.Module, run_dir: Path) -> dict[str, Any]:
        model.requires_grad_(True)
        return {}
