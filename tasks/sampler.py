"""A training sampler indexed by the optimizer step, so a resumed run sees exactly the same batches.

Position p of the (endless) training stream is example perm_e[p mod N'] with e = p // N' the epoch
(N' = N rounded down to whole global batches) and perm_e a permutation seeded by (seed, e). Global
batch s covers positions [s*G, (s+1)*G); data-parallel rank r takes every ``world``-th of them.
Iteration starts at the trainer's restored ``global_step``: killed at any point and resumed from
a checkpoint, training continues on the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import Sampler


class StepSampler(Sampler[int]):
    def __init__(self, n: int, global_batch: int, total_steps: int, step: Callable[[], int], seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world: int = 1) -> None:
        if n < global_batch:
            raise ValueError(f"data.n_train={n} must be >= data.batch_size={global_batch}")
        self.n_eff = (n // global_batch) * global_batch
        self.n, self.global_batch, self.total_steps, self.step = n, global_batch, total_steps, step
        self.seed, self.shuffle, self.rank, self.world = seed, shuffle, rank, world
        self._perm: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            order = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
                     else np.arange(self.n))
            self._perm = (epoch, order)
        return self._perm[1]

    def __iter__(self) -> Iterator[int]:
        for pos in range(self.step() * self.global_batch + self.rank, self.total_steps * self.global_batch,
                         self.world):
            yield int(self._order(pos // self.n_eff)[pos % self.n_eff])

    def __len__(self) -> int:
        return self.total_steps * self.global_batch // self.world
