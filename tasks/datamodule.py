"""The LightningDataModule: cached training and validation sets of one task at its train length."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.base import Task, training_views
from tasks.dataset import materialize, read_arrays
from tasks.vocab import Vocab


class TokenDataset(Dataset):
    """In-memory (input_ids, labels) pairs: the sets are small, so no per-item Arrow decoding."""

    def __init__(self, tokens: np.ndarray, answer_mask: np.ndarray) -> None:
        inputs, labels = training_views(tokens, answer_mask)
        self.input_ids = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: Task, vocab: Vocab, n_train: int, n_val: int, batch_size: int,
                 seed: int, cache_dir: str | None, num_workers: int = 0) -> None:
        super().__init__()
        self.task, self.vocab = task, vocab
        self.n_train, self.n_val, self.batch_size = n_train, n_val, batch_size
        self.seed, self.cache_dir, self.num_workers = seed, cache_dir, num_workers
        self.train_set: TokenDataset | None = None
        self.val_set: TokenDataset | None = None

    def _load(self, split: str, n: int) -> TokenDataset:
        ds = materialize(self.task, self.vocab, split, n, self.task.train_len, self.seed, self.cache_dir)
        return TokenDataset(*read_arrays(ds))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self._load("train", self.n_train)
            self.val_set = self._load("val", self.n_val)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          generator=g, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)
