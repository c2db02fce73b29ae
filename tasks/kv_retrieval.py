"""Key-value retrieval, "lost in the middle": which position among many records can be recalled.

Layout (pairs=3, key_len=2, value_len=2, gold_index=1), L tokens in all:

    a1 a2 x1 x2 SEP h h b1 b2 y1 y2 SEP h h c1 c2 z1 z2 SEP  QUERY b1 b2 ANSWER | y1 y2
    <-- record 0 -->    <-- record 1 (gold) ->   <-- record 2 -->

Keys are distinct per example (multi-token keys are distinct as tuples). Records are spread evenly
over the context with noise filler between them (contiguous when they fill it), so record i sits at
depth i / (pairs - 1). The gold record is ``gold_index`` (None: random); a ``depth`` given to
``generate`` picks gold = round(depth * (pairs - 1)), so the length x depth grid is the
lost-in-the-middle curve: the gold record is within half a record of the depth asked, and
``TaskArrays.depth`` (the row's ``achieved_depth``) is where it actually starts. Values differ
between the records of a row. Slices: ``gold_index`` and ``pairs``.

Chance floor: 1 / pairs (every record has the same shape and token kinds as the gold one; the
gold index is uniform when not asked for).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from tasks.base import Task, TaskArrays, register, uniform_tokens
from tasks.common import check_depth, digits, distinct_codes, place_blocks
from tasks.vocab import Vocab


@register
@dataclass
class KvRetrieval(Task):
    name: ClassVar[str] = "kv_retrieval"
    suite_rank: ClassVar[int] = 30
    has_depth: ClassVar[bool] = True
    pairs: int = 8  # records in the context
    key_len: int = 1
    value_len: int = 3
    gold_index: Optional[int] = None  # which record is asked; None: random

    def __post_init__(self) -> None:
        for f in ("pairs", "key_len", "value_len"):
            if getattr(self, f) < 1:
                raise ValueError(f"task.{f}={getattr(self, f)} must be >= 1")
        if self.gold_index is not None and not 0 <= self.gold_index < self.pairs:
            raise ValueError(f"task.gold_index={self.gold_index} must be None or in [0, pairs={self.pairs})")
        super().__post_init__()

    @property
    def record_len(self) -> int:
        return self.key_len + self.value_len + 1

    def min_length(self) -> int:
        return self.pairs * self.record_len + 2 + self.key_len + self.value_len

    def check_vocab(self, vocab: Vocab) -> None:
        if len(vocab.values) ** self.value_len < self.pairs:
            raise ValueError(f"task.pairs={self.pairs} exceeds the {len(vocab.values) ** self.value_len} distinct"
                             f" values of value_len={self.value_len} with vocab_size={vocab.size}")
        if len(vocab.keys) ** self.key_len < self.pairs:
            raise ValueError(
                f"task.pairs={self.pairs} exceeds the {len(vocab.keys) ** self.key_len} distinct keys of"
                f" key_len={self.key_len} with vocab_size={vocab.size}"
            )

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(Vocab.QUERY, self.key_len, self.value_len)}

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_vocab(vocab)
        check_depth(depth)
        N, kl, vl, w = self.pairs, self.key_len, self.value_len, self.record_len
        context = length - 2 - kl - vl
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        nk = len(vocab.keys)
        keys = vocab.keys.start + digits(distinct_codes(rng, n, min(nk**kl, 2**62), N), nk, kl)  # (n, N, kl)
        vals = vocab.values.start + digits(distinct_codes(rng, n, len(vocab.values) ** vl, N), len(vocab.values), vl)
        records = np.concatenate([keys, vals, np.full((n, N, 1), vocab.SEP)], axis=2)
        starts = (np.arange(N) * (context - N * w)) // max(N - 1, 1) + np.arange(N) * w
        place_blocks(tokens, np.broadcast_to(starts, (n, N)), records)
        if depth is not None:
            gold = np.full(n, int(round(float(depth) * (N - 1))))
        elif self.gold_index is not None:
            gold = np.full(n, self.gold_index)
        else:
            gold = rng.integers(0, N, size=n)
        rows = np.arange(n)
        tokens[:, context] = vocab.QUERY
        tokens[:, context + 1 : context + 1 + kl] = keys[rows, gold]
        tokens[:, context + 1 + kl] = vocab.ANSWER
        tokens[:, length - vl :] = vals[rows, gold]
        answer_mask = np.zeros((n, length), dtype=bool)
        answer_mask[:, length - vl :] = True
        achieved = starts[gold] / max(context - w, 1)
        return TaskArrays(tokens, answer_mask, achieved, {"gold_index": gold, "pairs": np.full(n, N)})

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        return {"accuracy": 1.0 / self.pairs}

    def depth_resolution(self, length: int) -> float:
        context = length - 2 - self.key_len - self.value_len
        return (0.5 / (self.pairs - 1) if self.pairs > 1 else 1.0) + 1.0 / max(context - self.record_len, 1)

    def extra_metrics(self, vocab: Vocab, arrays: TaskArrays, predictions: np.ndarray) -> dict[str, float]:
        """achieved_depth: mean depth at which the gold record starts."""
        return {"achieved_depth": float(np.mean(arrays.depth))} if len(arrays.depth) else {}

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        kl, vl = self.key_len, self.value_len
        for i, row in enumerate(hidden):
            q = int(np.flatnonzero(row == vocab.QUERY)[-1])
            key = row[q + 1 : q + 1 + kl]
            for s in np.flatnonzero(row[:q] == vocab.SEP):
                if np.array_equal(row[s - vl - kl : s - vl], key):
                    out[i, answer_mask[i]] = row[s - vl : s]
                    break
        return out
