"""Counting: how many MARK tokens hide in a noise context (aggregation over the whole context).

Layout (count 3), L tokens in all:

    h h MARK h h h h MARK h h h MARK h h   COUNT ANSWER | values[3]

The count is uniform in [min_count, max_count] per example, the marks at distinct random positions
of the context; the answer is the single value token ``vocab.values[count]``. Slice: ``count``.

Chance floor: the best guess from half the context. Marks seen in the second half follow a
hypergeometric law given the count; the floor is the accuracy of the maximum a posteriori count
from that half (sum over m of max_c P(c) P(m | c)): 0.22 on the defaults, against 1/17 for a guess
that reads nothing. A model must read the whole context to beat it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import ClassVar

import numpy as np

from tasks.base import Task, TaskArrays, register, uniform_tokens
from tasks.vocab import Vocab


@register
@dataclass
class Counting(Task):
    name: ClassVar[str] = "counting"
    suite_rank: ClassVar[int] = 60
    min_count: int = 0
    max_count: int = 16

    def __post_init__(self) -> None:
        if self.min_count < 0:
            raise ValueError(f"task.min_count={self.min_count} must be >= 0")
        if self.max_count < self.min_count:
            raise ValueError(f"task.max_count={self.max_count} must be >= min_count={self.min_count}")
        super().__post_init__()

    def min_length(self) -> int:
        return self.max_count + 3

    def check_vocab(self, vocab: Vocab) -> None:
        if self.max_count >= len(vocab.values):
            raise ValueError(
                f"task.max_count={self.max_count} must be < {len(vocab.values)}"
                f" (the values of vocab_size={vocab.size})"
            )

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        context = length - 3
        window = context // 2
        counts = range(self.min_count, self.max_count + 1)

        def p_seen(m: int, c: int) -> float:  # m of c marks among `window` of `context` positions
            return comb(c, m) * comb(context - c, window - m) / comb(context, window)

        best = sum(max(p_seen(m, c) for c in counts) for m in range(0, self.max_count + 1))
        return {"accuracy": best / len(counts)}

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(Vocab.COUNT, 0, 1)}

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_vocab(vocab)
        context = length - 3
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        count = rng.integers(self.min_count, self.max_count + 1, size=n)
        if self.max_count > 0:
            # The max_count smallest of random scores are distinct positions; keep the first `count`.
            cand = np.argpartition(rng.random((n, context)), self.max_count - 1, axis=1)[:, : self.max_count]
            rows, cols = np.nonzero(np.arange(self.max_count) < count[:, None])
            tokens[rows, cand[rows, cols]] = vocab.MARK
        tokens[:, context] = vocab.COUNT
        tokens[:, context + 1] = vocab.ANSWER
        tokens[:, -1] = vocab.values.start + count
        answer_mask = np.zeros((n, length), dtype=bool)
        answer_mask[:, -1] = True
        return TaskArrays(tokens, answer_mask, np.full(n, np.nan), {"count": count})

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        prompt_len = answer_mask.argmax(axis=1)
        for i, row in enumerate(hidden):
            out[i, answer_mask[i]] = vocab.values.start + int((row[: prompt_len[i]] == vocab.MARK).sum())
        return out
