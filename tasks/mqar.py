"""Multi-query associative recall (zoology ``multiquery_ar``): many key-value pairs, many queries.

Layout with 3 pairs and 2 queries, L tokens in all:

    k1 v1 k2 v2 k3 v3 | f f k3 [v3] f f f k1 [v1] f f
    <---- context ----><--------- query region -------->

Keys are distinct per example. Query slots (even offsets of the query region) are drawn without
replacement with P(slot g) proportional to a*g^(a-1) (``power_a``; 1 is uniform, small values
cluster queries near the start, as in zoology). Non-query slots hold filler tokens.
Labels sit only on the bracketed values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from tasks.base import Task, TaskArrays, register, sample_distinct, uniform_tokens
from tasks.vocab import Vocab


@register
@dataclass
class Mqar(Task):
    name = "mqar"
    num_kv_pairs: int = 8
    num_queries: Optional[int] = None  # None: one query per pair
    power_a: float = 1.0

    def __post_init__(self) -> None:
        if self.num_kv_pairs < 1:
            raise ValueError(f"task.num_kv_pairs={self.num_kv_pairs} must be >= 1")
        if self.num_queries is None:
            self.num_queries = self.num_kv_pairs
        if not 1 <= self.num_queries <= self.num_kv_pairs:
            raise ValueError(
                f"task.num_queries={self.num_queries} must be in [1, num_kv_pairs={self.num_kv_pairs}]"
            )
        if self.power_a <= 0:
            raise ValueError(f"task.power_a={self.power_a} must be > 0")
        super().__post_init__()

    def min_length(self) -> int:
        return 2 * self.num_kv_pairs + 2 * self.num_queries

    def check_vocab(self, vocab: Vocab) -> None:
        if self.num_kv_pairs > len(vocab.keys):
            raise ValueError(
                f"task.num_kv_pairs={self.num_kv_pairs} exceeds the {len(vocab.keys)} keys"
                f" of vocab_size={vocab.size}"
            )

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(-1, -1, self.num_queries)}  # answers follow keys directly, no ANSWER marker

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_vocab(vocab)
        kv, nq = self.num_kv_pairs, self.num_queries
        keys = sample_distinct(rng, n, vocab.keys, kv)  # (n, kv)
        values = uniform_tokens(rng, vocab.values, (n, kv))
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        tokens[:, 0 : 2 * kv : 2], tokens[:, 1 : 2 * kv : 2] = keys, values
        n_slots = (length - 2 * kv) // 2
        # Power-law slots without replacement: Gumbel top-k over log P(g), g = 1..n_slots.
        g = np.arange(1, n_slots + 1)
        logp = np.log(self.power_a) + (self.power_a - 1) * np.log(g)
        slots = np.argsort(-(logp[None, :] + rng.gumbel(size=(n, n_slots))), axis=1)[:, :nq]
        which = sample_distinct(rng, n, range(0, kv), nq)  # which pairs are queried
        rows = np.arange(n)[:, None]
        key_pos = 2 * kv + 2 * slots
        tokens[rows, key_pos] = keys[rows, which]
        tokens[rows, key_pos + 1] = values[rows, which]
        answer_mask = np.zeros((n, length), dtype=bool)
        answer_mask[rows, key_pos + 1] = True
        return TaskArrays(tokens, answer_mask, np.full(n, np.nan),
                          {"num_kv_pairs": np.full(n, kv)})

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        kv = self.num_kv_pairs
        for i, row in enumerate(hidden):
            table = dict(zip(row[0 : 2 * kv : 2].tolist(), row[1 : 2 * kv : 2].tolist()))
            for pos in np.flatnonzero(answer_mask[i]):
                out[i, pos] = table[int(row[pos - 1])]
        return out
