"""The LightningDataModule: cached training and validation sets of one task at its train length."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.base import Task, training_views
from tasks.curriculum import curriculum_steps
from tasks.dataset import materialize, read_arrays, read_inputs
from tasks.sampler import CurriculumSampler, StepSampler
from tasks.vocab import Vocab


class TokenDataset(Dataset):
    """In-memory (input_ids, labels) pairs: the sets are small, so no per-item Arrow decoding."""

    def __init__(self, tokens: np.ndarray, answer_mask: np.ndarray, inputs: np.ndarray | None = None) -> None:
        inputs, labels = training_views(tokens, answer_mask, inputs)
        self.input_ids = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}

    def extended(self, other: TokenDataset) -> TokenDataset:
        """This set's rows followed by ``other``'s (same length)."""
        out = TokenDataset.__new__(TokenDataset)
        out.input_ids = torch.cat([self.input_ids, other.input_ids])
        out.labels = torch.cat([self.labels, other.labels])
        return out


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: Task, vocab: Vocab, n_train: int, n_val: int, batch_size: int,
                 seed: int, cache_dir: str | None, num_workers: int = 0, shuffle: bool = True,
                 curriculum: Task | None = None, curriculum_share: float = 0.0) -> None:
        super().__init__()
        # the first floor(share x steps) steps read fresh rows of another family (tasks/curriculum.py)
        self.curriculum, self.curriculum_share = curriculum, curriculum_share
        self.first_steps = self.n_first = 0
        self.task, self.vocab = task, vocab
        self.n_train, self.n_val, self.batch_size = n_train, n_val, batch_size
        self.seed, self.cache_dir, self.num_workers, self.shuffle = seed, cache_dir, num_workers, shuffle
        self.train_set: TokenDataset | None = None
        self.val_set: TokenDataset | None = None

    def _load(self, split: str, n: int, task: Task | None = None) -> TokenDataset:
        task = task or self.task
        ds = materialize(task, self.vocab, split, n, self.task.train_len, self.seed, self.cache_dir)
        return TokenDataset(*read_arrays(ds), read_inputs(ds))

    def total_steps(self, n_task: int) -> int:
        trainer = self.trainer
        if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps
        # epoch-based: all epochs of the task's set form one step-indexed stream (no curriculum share)
        return n_task // self.batch_size * max(1, (trainer.max_epochs or 1) if trainer is not None else 1)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._load("train", self.n_train)
            if self.curriculum is not None and self.trainer is not None and (self.trainer.max_steps or 0) > 0:
                self.first_steps = curriculum_steps(self.curriculum_share, self.trainer.max_steps)
            if self.first_steps:  # rows [0, n_first) are the first phase's, each read once
                self.n_first = self.first_steps * self.batch_size
                self.train_set = self._load("train", self.n_first, self.curriculum).extended(self.train_set)
            self.val_set = self._load("val", self.n_val)

    def per_device_batch(self) -> int:
        """``batch_size`` is the global batch: each data-parallel process takes its share."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise ValueError(f"data.batch_size={self.batch_size} must be divisible by the "
                             f"{world} data-parallel processes (trainer.devices x num_nodes)")
        return self.batch_size // world

    def train_dataloader(self) -> DataLoader:
        """Batches indexed by the optimizer step (tasks/sampler.py): resumes see the same data."""
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        n_task, first = len(self.train_set) - self.n_first, self.first_steps
        steps = self.total_steps(n_task)
        step = (lambda: trainer.global_step) if trainer is not None else (lambda: 0)
        kw = dict(seed=self.seed, shuffle=self.shuffle, rank=rank, world=world)
        sampler = StepSampler(n_task, self.batch_size, steps - first, step=lambda: max(0, step() - first), **kw)
        if first:
            warm = StepSampler(self.n_first, self.batch_size, first, step=step, **kw)
            sampler = CurriculumSampler(warm, sampler, first, self.n_first, step)
        return DataLoader(self.train_set, batch_size=self.per_device_batch(), sampler=sampler, drop_last=True,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.per_device_batch(), num_workers=self.num_workers)
