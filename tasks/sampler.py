"""A training sampler indexed by the optimizer step, so a resumed run sees exactly the same batches.

Position p of the (endless) training stream is example perm_e[p mod N'] with e = p // N' the epoch
(N' = N rounded down to whole global batches) and perm_e a permutation seeded by (seed, e). Global
batch s covers positions [s*G, (s+1)*G); data-parallel rank r takes every ``world``-th of them.
Iteration starts at the trainer's restored ``global_step``: killed at any point and resumed from
a checkpoint, training continues on the batches it would have seen.

``CurriculumSampler`` puts a first phase in front: optimizer steps 0..C-1 read one training set (a
warm-up task's), the steps after it another, each a ``StepSampler`` stream of its own; still
indexed by the optimizer step, so a resume mid-curriculum sees the same batches too.
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

    def batch_indices(self, s: int) -> Iterator[int]:
        """This rank's examples of global batch ``s``."""
        for pos in range(s * self.global_batch + self.rank, (s + 1) * self.global_batch, self.world):
            yield int(self._order(pos // self.n_eff)[pos % self.n_eff])

    def __iter__(self) -> Iterator[int]:
        for s in range(self.step(), self.total_steps):
            yield from self.batch_indices(s)

    def __len__(self) -> int:
        return self.total_steps * self.global_batch // self.world


class CurriculumSampler(Sampler[int]):
    """Steps < ``first_steps`` from ``first`` (indices 0..n_first-1 of a concatenated set), the rest
    from ``then`` (indices offset by ``n_first``), which starts at its own step 0."""

    def __init__(self, first: StepSampler, then: StepSampler, first_steps: int, n_first: int,
                 step: Callable[[], int]) -> None:
        self.first, self.then, self.first_steps, self.n_first, self.step = first, then, first_steps, n_first, step
        self.total_steps = first_steps + then.total_steps

    def __iter__(self) -> Iterator[int]:
        for s in range(self.step(), self.total_steps):
            if s < self.first_steps:
                yield from self.first.batch_indices(s)
            else:
                yield from (self.n_first + i for i in self.then.batch_indices(s - self.first_steps))

    def __len__(self) -> int:
        return self.total_steps * self.first.global_batch // self.first.world
