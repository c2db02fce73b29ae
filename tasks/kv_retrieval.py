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
between the records of a row. Slices: ``gold_index``, ``pairs`` and ``questions``.

Training rows may ask several questions (``train_queries``, set by ``for_split("train")``): each
row ends with 1..train_queries (uniform) ``QUERY key ANSWER value`` blocks about distinct records,
every value labelled, so one row carries several retrieval signals (MQAR's 4 labelled queries per
row are why it learns within ~1000 steps) while the one-question evaluation layout, filler
included, stays among the training rows. Records share the context the questions leave.
Validation and test rows always ask one question, so evaluation, the chance floor and the mix
signature are unchanged. With several questions, ``gold_index``/depth fix the first question's
record and ``TaskArrays.depth`` is where that record starts; the others are distinct random records.

Per depth cell (``cell_floor``): the depth is the gold index, so where it is the first, last or
middle record a positional guess finds it (floor 1.0 there, as in the paper's gold-index sweep).

Chance floor: 1 / pairs (every record has the same shape and token kinds as the gold one; the
gold index is uniform when not asked for).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Optional

import numpy as np

from tasks.base import Task, TaskArrays, register, uniform_tokens
from tasks.common import check_depth, digits, distinct_codes, place_blocks, question_counts
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
    train_queries: int = 1  # most questions per training row (1..this, uniform); val/test rows ask one
    questions: int = 1  # most questions per generated row: for_split sets it (train_queries, else 1)

    def __post_init__(self) -> None:
        for f in ("pairs", "key_len", "value_len"):
            if getattr(self, f) < 1:
                raise ValueError(f"task.{f}={getattr(self, f)} must be >= 1")
        if self.gold_index is not None and not 0 <= self.gold_index < self.pairs:
            raise ValueError(f"task.gold_index={self.gold_index} must be None or in [0, pairs={self.pairs})")
        for f in ("train_queries", "questions"):
            if not 1 <= getattr(self, f) <= self.pairs:
                raise ValueError(f"task.{f}={getattr(self, f)} must be in [1, pairs={self.pairs}]"
                                 " (each question asks a distinct record)")
        super().__post_init__()
        need = self.pairs * self.record_len + self.train_queries * self.question_len
        if self.train_len < need:
            raise ValueError(f"task.train_queries={self.train_queries} needs task.train_len >= {need} "
                             f"(pairs={self.pairs} records of {self.record_len} tokens and "
                             f"{self.train_queries} questions of {self.question_len}); got {self.train_len}")

    @property
    def record_len(self) -> int:
        return self.key_len + self.value_len + 1

    @property
    def question_len(self) -> int:
        """QUERY key ANSWER value."""
        return 2 + self.key_len + self.value_len

    def min_length(self) -> int:
        return self.pairs * self.record_len + self.questions * self.question_len

    def for_split(self, split: str) -> KvRetrieval:
        questions = self.train_queries if split == "train" else 1
        return self if questions == self.questions else replace(self, questions=questions)

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
        q, qlen = self.questions, self.question_len
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        nk = len(vocab.keys)
        keys = vocab.keys.start + digits(distinct_codes(rng, n, min(nk**kl, 2**62), N), nk, kl)  # (n, N, kl)
        vals = vocab.values.start + digits(distinct_codes(rng, n, len(vocab.values) ** vl, N), len(vocab.values), vl)
        records = np.concatenate([keys, vals, np.full((n, N, 1), vocab.SEP)], axis=2)
        asks = question_counts(rng, n, q)  # (n,) questions per row; all 1 in evaluation rows
        context = length - asks * qlen  # (n,)
        r = np.arange(N)[None, :]
        starts = (r * (context[:, None] - N * w)) // max(N - 1, 1) + r * w  # (n, N): spread evenly
        place_blocks(tokens, starts, records)
        if depth is not None:
            gold = np.full(n, int(round(float(depth) * (N - 1))))
        elif self.gold_index is not None:
            gold = np.full(n, self.gold_index)
        else:
            gold = rng.integers(0, N, size=n)
        # Question j asks record asked[:, j]: the gold one first, then distinct others at random.
        others = np.argsort(rng.random((n, N)) + (np.arange(N)[None, :] == gold[:, None]), axis=1)
        asked = np.concatenate([gold[:, None], others[:, : q - 1]], axis=1)
        rows = np.arange(n)
        answer_mask = np.zeros((n, length), dtype=bool)
        for j in range(q):
            i = rows[asks > j]
            at = (context[i] + j * qlen)[:, None]
            block = np.concatenate([np.full((len(i), 1), vocab.QUERY), keys[i, asked[i, j]],
                                    np.full((len(i), 1), vocab.ANSWER), vals[i, asked[i, j]]], axis=1)
            tokens[i[:, None], at + np.arange(qlen)] = block
            answer_mask[i[:, None], at + 2 + kl + np.arange(vl)] = True
        achieved = starts[rows, gold] / np.maximum(context - w, 1)
        slices = {"gold_index": gold, "pairs": np.full(n, N), "questions": asks}
        return TaskArrays(tokens, answer_mask, achieved, slices)

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        return {"accuracy": 1.0 / self.pairs}

    def cell_floor(self, vocab: Vocab, length: int, depth: float | None) -> dict[str, float]:
        """The depth asked is the gold index (the lost-in-the-middle axis): where that is the first,
        last or middle record a positional guess finds it, so the cell's floor is 1.0 there."""
        if depth is None or self.gold_index is not None:
            gold = self.gold_index
        else:
            gold = int(round(float(depth) * (self.pairs - 1)))
        if gold is not None and gold in (0, self.pairs - 1, self.pairs // 2):
            return {"accuracy": 1.0}
        return self.chance_floor(vocab, length)

    def depth_resolution(self, length: int) -> float:
        context = length - self.questions * self.question_len
        return (0.5 / (self.pairs - 1) if self.pairs > 1 else 1.0) + 1.0 / max(context - self.record_len, 1)

    def extra_metrics(self, vocab: Vocab, arrays: TaskArrays, predictions: np.ndarray) -> dict[str, float]:
        """achieved_depth: mean depth at which the gold record starts."""
        return {"achieved_depth": float(np.mean(arrays.depth))} if len(arrays.depth) else {}

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        kl, vl = self.key_len, self.value_len
        for i, row in enumerate(hidden):
            queries = np.flatnonzero(row == vocab.QUERY)
            seps = np.flatnonzero(row[: queries[0]] == vocab.SEP)
            for q in queries:  # every question of the row (training rows may ask several)
                key = row[q + 1 : q + 1 + kl]
                for s in seps:
                    if np.array_equal(row[s - vl - kl : s - vl], key):
                        out[i, q + 2 + kl : q + 2 + kl + vl] = row[s - vl : s]
                        break
        return out
