"""Frequent tokens (RULER ``fwe``/``cwe``): a synthesis task, the answer depends on the whole context.

Layout (types=4, k=2), L tokens in all; the context is made only of the ``types`` word tokens:

    b a c a b a d a b a c b ... a   FREQ ANSWER | a b
    <---------- context ----------->             <k most frequent, most frequent first>

Counts follow a Zipf law count(rank r) ~ r^-alpha over ``types`` word types (key tokens, drawn per
example), rounded so that they sum to the context exactly and the top k + 1 counts are strictly
decreasing: there is never a tie in the answer or at its boundary. Words are shuffled per example.
Slices: ``k``, ``alpha``.

Chance floor: the top k of half the context (the counts of a uniformly placed multiset seen in
a window are multivariate hypergeometric; the floor is the probability, estimated from 4000
seeded draws, that the window's top k is the whole context's top k in order, ties broken in the
answer's favour, so it bounds every tie-breaking rule). At ``alpha`` 1 the second half alone
answers about half the rows, so the default is 0.5 (floor 0.33, the plug-in half window scores
0.21): the counts are flatter, the whole context is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np

from tasks.base import Task, TaskArrays, register, sample_distinct
from tasks.vocab import N_SPECIAL, Vocab


@lru_cache(maxsize=64)
def zipf_counts(total: int, types: int, k: int, alpha: float) -> tuple[int, ...]:
    """Counts per rank summing to ``total``: Zipf-shaped, >= 1, strictly decreasing over the top k + 1.

    Needs total >= types + k(k+1)/2 (tail all 1, top k counts k+1 .. 2). Computed once per shape.
    """
    w = np.arange(1, types + 1, dtype=np.float64) ** -alpha
    c = np.maximum(np.floor(total * w / w.sum()), 1).astype(np.int64)
    top = min(k + 1, types)

    def tie_free(c: np.ndarray) -> np.ndarray:
        c = c.copy()
        c[top - 1] = max(c[top - 1], c[top:].max(initial=0))  # rank k+1 heads the tail (ties allowed below)
        for r in range(top - 2, -1, -1):  # each top count above the next
            c[r] = max(c[r], c[r + 1] + 1)
        return c

    c = tie_free(c)
    while c.sum() > total:  # shave the largest count that can lose a token without a tie
        for r in np.argsort(-c, kind="stable"):
            trial = c.copy()
            trial[r] -= 1
            trial = tie_free(trial)
            if trial[r] == c[r] - 1 and trial.min() >= 1 and trial.sum() < c.sum():
                c = trial
                break
        else:
            raise ValueError(f"cannot fit {types} types with a tie-free top {k} in {total} tokens")
    c[0] += total - c.sum()  # the most frequent absorbs the rounding slack
    return tuple(int(x) for x in c)


@register
@dataclass
class FrequentTokens(Task):
    name: ClassVar[str] = "frequent_tokens"
    suite_rank: ClassVar[int] = 50
    k: int = 3  # how many most frequent tokens to answer
    types: int = 16  # distinct word tokens in the context
    alpha: float = 0.5  # Zipf exponent: larger is more skewed, easier

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"task.k={self.k} must be >= 1")
        if self.types <= self.k:
            raise ValueError(f"task.types={self.types} must be > k={self.k}")
        if self.alpha < 0:
            raise ValueError(f"task.alpha={self.alpha} must be >= 0")
        super().__post_init__()

    def min_length(self) -> int:
        return self.types + self.k * (self.k + 1) // 2 + 2 + self.k

    def check_vocab(self, vocab: Vocab) -> None:
        if self.types > len(vocab.keys):
            raise ValueError(
                f"task.types={self.types} exceeds the {len(vocab.keys)} keys of vocab_size={vocab.size}"
            )

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        context = length - 2 - self.k
        counts = np.asarray(zipf_counts(context, self.types, self.k, float(self.alpha)))
        rng = np.random.default_rng(0)
        seen = rng.multivariate_hypergeometric(counts, context // 2, size=4000)  # (draws, types)
        order = np.argsort(-(seen - 1e-3 * np.arange(self.types)), axis=1)[:, : self.k]  # ties: the true order
        return {"accuracy": float((order == np.arange(self.k)).all(axis=1).mean())}

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(Vocab.FREQ, 0, self.k)}

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_vocab(vocab)
        context = length - 2 - self.k
        counts = np.asarray(zipf_counts(context, self.types, self.k, float(self.alpha)))
        words = sample_distinct(rng, n, vocab.keys, self.types)  # (n, types), column r has rank r
        ranks = np.broadcast_to(np.repeat(np.arange(self.types), counts), (n, context))
        shuffled = rng.permuted(ranks, axis=1)  # per-row Fisher-Yates of the multiset, O(L) not an argsort
        tokens = np.empty((n, length), dtype=np.int64)
        tokens[:, :context] = np.take_along_axis(words, shuffled, axis=1)
        tokens[:, context] = vocab.FREQ
        tokens[:, context + 1] = vocab.ANSWER
        tokens[:, context + 2 :] = words[:, : self.k]
        answer_mask = np.zeros((n, length), dtype=bool)
        answer_mask[:, context + 2 :] = True
        return TaskArrays(tokens, answer_mask, np.full(n, np.nan),
                          {"k": np.full(n, self.k), "alpha": np.full(n, float(self.alpha))})

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        for i, row in enumerate(hidden):
            prompt = row[: int(answer_mask[i].argmax())]
            counts = np.bincount(prompt[prompt >= N_SPECIAL], minlength=vocab.size)
            out[i, answer_mask[i]] = np.argsort(-counts, kind="stable")[: self.k]
        return out
