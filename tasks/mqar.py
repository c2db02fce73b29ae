"""Multi-query associative recall (zoology ``multiquery_ar``): many key-value pairs, many queries.

Layout with 3 pairs and 2 queries, L tokens in all (the zoology layout):

    tokens:  k1 v1 k2 v2 k3 v3 | f f k3 [v3] f f f k1 [v1] f f
    inputs:  k1 v1 k2 v2 k3 v3 | f f k3  f'  f f f k1  f'  f f
             <---- context ----><--------- query region -------->

Keys are distinct per example and so are values. Query slots (even offsets of the query region)
are drawn without replacement with P(slot g) proportional to a*g^(a-1) (``power_a``; 1 is
uniform, 0.01 clusters queries near the start, zoology's default). Non-query slots hold filler.
The label of each query sits at its key (the value is predicted there, as in zoology after the
next-token shift), and the model never reads an answer: in ``inputs`` the slot after a query key
holds a random filler token f', in training and in evaluation alike, so a later query cannot
learn anything from the earlier answers (with the answers fed back, "a context value not yet
seen in the query region" is a query-free shortcut).

Defaults follow zoology's L=64 training cell: 4 pairs, every pair queried, ``power_a`` 0.01 (its
reference grid trains (L, kv) = (64, 4), (128, 8), (256, 16..64)). Zoology draws keys and values
from 4096 tokens each; ours come from the vocabulary's key and value ranges (90 each at
vocab_size 256), which only bounds ``num_kv_pairs``.

``context_offset`` (default 0, zoology's layout) starts the pairs after a uniform 0..offset filler
prefix per row (the query region follows the largest offset, so it is the same for every row):

    tokens:  f f k1 v1 k2 v2 k3 v3 f | f k3 [v3] f f k1 [v1] f   (offset 2 of at most 3)

It is a check of what the model learned, not a harder task (the floor is the same). Measured on
issue 12: a 2-layer d=64 transformer trained on the default layout answers shifted rows as well
(exact match 1.000 at offset 30 after 750 steps), but trained on shifted rows from the start it
stays at chance (0.25 per query after 2500 steps): pairs at the start of the sequence, where causal
attention has few tokens to choose from, are what let the lookup circuit form within ~500 steps.

Chance floor: a shortcut can read which keys were already queried and exclude their values, but
without reading the asked key it can only guess among the kv - j values left at query j:
exact match prod_j 1 / (kv - j), token accuracy mean_j 1 / (kv - j) (0.042 and 0.52 at kv = 4,
every pair queried; use ``token_accuracy`` with that floor in mind).
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
    suite_rank = 90
    train_len: int = 64
    num_kv_pairs: int = 4
    num_queries: Optional[int] = None  # None: one query per pair
    power_a: float = 0.01
    context_offset: int = 0  # pairs start after 0..this filler tokens (uniform per row); 0: zoology

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
        if self.context_offset < 0:
            raise ValueError(f"task.context_offset={self.context_offset} must be >= 0")
        super().__post_init__()

    def min_length(self) -> int:
        return 2 * self.num_kv_pairs + 2 * self.num_queries + self.context_offset

    def check_vocab(self, vocab: Vocab) -> None:
        if self.num_kv_pairs > len(vocab.keys):
            raise ValueError(
                f"task.num_kv_pairs={self.num_kv_pairs} exceeds the {len(vocab.keys)} keys"
                f" of vocab_size={vocab.size}"
            )

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(-1, -1, self.num_queries)}  # answers follow keys directly, no ANSWER marker

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        left = self.num_kv_pairs - np.arange(self.num_queries)
        return {"accuracy": float(np.prod(1.0 / left)), "token_accuracy": float(np.mean(1.0 / left))}

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_vocab(vocab)
        kv, nq = self.num_kv_pairs, self.num_queries
        keys = sample_distinct(rng, n, vocab.keys, kv)  # (n, kv)
        values = sample_distinct(rng, n, vocab.values, kv)
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        rows = np.arange(n)[:, None]
        # Drawn only when asked for, so offset-0 rows are byte-identical to the zoology layout's.
        offset = rng.integers(0, self.context_offset + 1, size=(n, 1)) if self.context_offset else np.zeros((n, 1), int)
        tokens[rows, offset + np.arange(0, 2 * kv, 2)] = keys
        tokens[rows, offset + np.arange(1, 2 * kv, 2)] = values
        region = 2 * kv + self.context_offset  # the query region starts after the largest offset
        n_slots = (length - region) // 2
        # Power-law slots without replacement: Gumbel top-k over log P(g), g = 1..n_slots.
        g = np.arange(1, n_slots + 1)
        logp = np.log(self.power_a) + (self.power_a - 1) * np.log(g)
        slots = np.argsort(-(logp[None, :] + rng.gumbel(size=(n, n_slots))), axis=1)[:, :nq]
        which = sample_distinct(rng, n, range(0, kv), nq)  # which pairs are queried
        key_pos = region + 2 * slots
        tokens[rows, key_pos] = keys[rows, which]
        inputs = tokens.copy()
        tokens[rows, key_pos + 1] = values[rows, which]
        answer_mask = np.zeros((n, length), dtype=bool)
        answer_mask[rows, key_pos + 1] = True
        return TaskArrays(tokens, answer_mask, np.full(n, np.nan),
                          {"num_kv_pairs": np.full(n, kv), "context_offset": offset[:, 0]}, inputs=inputs)

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        for i, row in enumerate(hidden):
            table = dict(self.pairs(vocab, row))
            for pos in np.flatnonzero(answer_mask[i]):
                out[i, pos] = table[int(row[pos - 1])]
        return out

    def pairs(self, vocab: Vocab, row: np.ndarray) -> list[tuple[int, int]]:
        """The context's (key, value) pairs in order: they start at the row's first key token (the
        prefix before them is filler)."""
        start = int(np.argmax((row >= vocab.keys.start) & (row < vocab.keys.stop)))
        span = row[start : start + 2 * self.num_kv_pairs]
        return list(zip(span[0::2].tolist(), span[1::2].tolist()))
