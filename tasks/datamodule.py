"""The LightningDataModule: cached training and validation sets of one task at its train length."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.base import Task, training_views
from tasks.dataset import materialize, read_arrays, read_inputs
from tasks.sampler import StepSampler
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


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: Task, vocab: Vocab, n_train: int, n_val: int, batch_size: int,
                 seed: int, cache_dir: str | None, num_workers: int = 0, shuffle: bool = True) -> None:
        super().__init__()
        self.task, self.vocab = task, vocab
        self.n_train, self.n_val, self.batch_size = n_train, n_val, batch_size
        self.seed, self.cache_dir, self.num_workers, self.shuffle = seed, cache_dir, num_workers, shuffle
        self.train_set: TokenDataset | None = None
        self.val_set: TokenDataset | None = None

    def _load(self, split: str, n: int) -> TokenDataset:
        ds = materialize(self.task, self.vocab, split, n, self.task.train_len, self.seed, self.cache_dir)
        return TokenDataset(*read_arrays(ds), read_inputs(ds))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._load("train", self.n_train)
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
        per_epoch = len(self.train_set) // self.batch_size
        if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
            steps = trainer.max_steps
        else:  # epoch-based: all epochs form one step-indexed stream
            steps = per_epoch * max(1, (trainer.max_epochs or 1) if trainer is not None else 1)
        sampler = StepSampler(len(self.train_set), self.batch_size, steps,
                              step=lambda: trainer.global_step if trainer is not None else 0,
                              seed=self.seed, shuffle=self.shuffle, rank=rank, world=world)
        return DataLoader(self.train_set, batch_size=self.per_device_batch(), sampler=sampler, drop_last=True,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.per_device_batch(), num_workers=self.num_workers)
