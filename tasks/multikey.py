"""Multi-key NIAH with hard distractors: one target record among look-alike records.

Layout (key_len=3, value_len=2, 2 distractors, similarity 2/3), L tokens in all:

    h NEEDLE a b x u1 u2 h h NEEDLE a b c v1 v2 h NEEDLE y b c w1 w2 h  QUERY a b c ANSWER | v1 v2
      <- distractor: shares a b ->  <------ target ------>  <- shares b c ->

Every distractor key shares exactly round(similarity * key_len) tokens with the target key, at
random positions, and differs at the others, so no distractor key equals the target's; distractor
values differ from the target value in their first token, so answering a distractor's value is
always wrong (``extra_metrics`` reports how often that happens). ``distractors=None`` tiles the
whole context with records (the "haystack made of needles"). The target record sits at ``depth``;
distractors at random depths (records never overlap, see ``common.block_starts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from math import comb
from typing import ClassVar, Optional

import numpy as np

from tasks.base import Task, TaskArrays, register, uniform_tokens
from tasks.common import block_starts, check_depth, depth_matrix, place_blocks
from tasks.vocab import Vocab


@lru_cache(maxsize=32)
def shared_masks(key_len: int, shared: int) -> np.ndarray:
    """Every (key_len,) bool mask with exactly ``shared`` True: a random row is a random subset."""
    masks = np.zeros((comb(key_len, shared), key_len), dtype=bool)
    for i, pos in enumerate(combinations(range(key_len), shared)):
        masks[i, list(pos)] = True
    return masks


@register
@dataclass
class Multikey(Task):
    name: ClassVar[str] = "multikey"
    has_depth: ClassVar[bool] = True
    key_len: int = 3  # tokens per key
    value_len: int = 2  # tokens per value (the answer)
    distractors: Optional[int] = 16  # look-alike records; None: as many as fill the context
    similarity: float = 0.67  # fraction of key tokens each distractor shares with the target

    def __post_init__(self) -> None:
        if self.key_len < 1:
            raise ValueError(f"task.key_len={self.key_len} must be >= 1")
        if self.value_len < 1:
            raise ValueError(f"task.value_len={self.value_len} must be >= 1")
        if self.distractors is not None and self.distractors < 0:
            raise ValueError(f"task.distractors={self.distractors} must be None (fill) or >= 0")
        top = (self.key_len - 1) / self.key_len
        if not 0.0 <= self.similarity <= 1.0 or self.shared == self.key_len:
            raise ValueError(
                f"task.similarity={self.similarity} with key_len={self.key_len} must be in [0, {top:.3f}]"
                " (a distractor must differ from the target in at least one key token)"
            )
        super().__post_init__()

    @property
    def shared(self) -> int:
        return int(round(self.similarity * self.key_len))

    @property
    def record_len(self) -> int:
        return 1 + self.key_len + self.value_len

    @property
    def question_len(self) -> int:
        return 2 + self.key_len

    def records(self, length: int) -> int:
        """Records (target + distractors) at this length."""
        if self.distractors is None:
            return max((length - self.question_len - self.value_len) // self.record_len, 2)
        return 1 + self.distractors

    def min_length(self) -> int:
        m = 2 if self.distractors is None else 1 + self.distractors
        return m * self.record_len + self.question_len + self.value_len

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(Vocab.QUERY, self.key_len, self.value_len)}

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        check_depth(depth)
        kl, vl, nk, nv = self.key_len, self.value_len, len(vocab.keys), len(vocab.values)
        m = self.records(length)
        context = length - self.question_len - vl
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        target = rng.integers(0, nk, size=(n, 1, kl))
        value = rng.integers(0, nv, size=(n, 1, vl))
        # Distractor keys: keep `shared` target tokens (random positions), shift the others by 1..nk-1.
        if comb(kl, self.shared) <= 4096:  # a table lookup beats an argsort per distractor
            keep = shared_masks(kl, self.shared)[rng.integers(0, comb(kl, self.shared), size=(n, m - 1))]
        else:
            keep = rng.random((n, m - 1, kl)).argsort(axis=2) < self.shared
        shift = np.where(keep, 0, rng.integers(1, nk, size=(n, m - 1, kl)))
        dkeys = (target + shift) % nk
        dvals = rng.integers(0, nv, size=(n, m - 1, vl))
        dvals[:, :, 0] = (value[:, :, 0] + rng.integers(1, nv, size=(n, m - 1))) % nv  # never the target's
        keys = np.concatenate([target, dkeys], axis=1) + vocab.keys.start  # (n, m, kl), record 0: target
        vals = np.concatenate([value, dvals], axis=1) + vocab.values.start
        records = np.concatenate([np.full((n, m, 1), vocab.NEEDLE), keys, vals], axis=2)
        depths = depth_matrix(rng, n, m, depth)
        place_blocks(tokens, block_starts(depths, context, self.record_len), records)
        tokens[:, context] = vocab.QUERY
        tokens[:, context + 1 : context + 1 + kl] = keys[:, 0]
        tokens[:, context + 1 + kl] = vocab.ANSWER
        tokens[:, length - vl :] = vals[:, 0]
        answer_mask = np.zeros((n, length), dtype=bool)
        answer_mask[:, length - vl :] = True
        slices = {"similarity": np.full(n, self.shared / kl), "distractors": np.full(n, m - 1),
                  "key_len": np.full(n, kl)}
        return TaskArrays(tokens, answer_mask, depths[:, 0].copy(), slices)

    def _records(self, vocab: Vocab, row: np.ndarray, end: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        kl, vl = self.key_len, self.value_len
        starts = np.flatnonzero(row[:end] == vocab.NEEDLE)
        return [row[s + 1 : s + 1 + kl] for s in starts], [row[s + 1 + kl : s + 1 + kl + vl] for s in starts]

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        for i, row in enumerate(hidden):
            q = int(np.flatnonzero(row == vocab.QUERY)[-1])
            key = row[q + 1 : q + 1 + self.key_len]
            for k, v in zip(*self._records(vocab, row, q)):
                if np.array_equal(k, key):
                    out[i, answer_mask[i]] = v
                    break
        return out

    def extra_metrics(self, vocab: Vocab, arrays: TaskArrays, predictions: np.ndarray) -> dict[str, float]:
        """distractor_rate: fraction of examples answered with a distractor's value (attention captured)."""
        hits = 0
        for i, row in enumerate(arrays.tokens):
            q = int(np.flatnonzero(row == vocab.QUERY)[-1])
            key, pred = row[q + 1 : q + 1 + self.key_len], predictions[i][arrays.answer_mask[i]]
            hits += any(not np.array_equal(k, key) and np.array_equal(v, pred)
                        for k, v in zip(*self._records(vocab, row, q)))
        return {"distractor_rate": hits / max(len(arrays.tokens), 1)}
