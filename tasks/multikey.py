"""Multi-key NIAH with hard distractors: one target record among look-alike records.

Layout (key_len=3, value_len=2, 2 distractors, similarity 2/3), L tokens in all:

    NEEDLE a b x u1 u2 h h NEEDLE a y c v1 v2 h h NEEDLE z b c w1 w2 h  QUERY a y c ANSWER | v1 v2
    <- look-alike ->       <------ target ----->      <- look-alike ->

Look-alikes are drawn around a hidden centre key (here a b c) that no record has: every record,
the target included, keeps exactly round(similarity * key_len) centre tokens (at random
positions) and changes the others, and all keys in a row differ. The target is therefore
exchangeable with the distractors: voting per position spells the centre, which is no record's
key, and every record is equally close to it. (Deriving the distractors from the target instead
makes the per-position mode spell the target: a query-free shortcut.) Values differ between all
records of a row, so answering a distractor's value is always wrong (``extra_metrics``:
``distractor_rate``). ``distractors=None`` tiles the context with records (the "haystack made of
needles").

Records are spread evenly over the context (filler noise between them, kv_retrieval's rule):
record i sits at depth i / (records - 1). The target is record round(depth * (records - 1)), within
half a record of the depth asked (``TaskArrays.depth`` and ``achieved_depth``: the depth
achieved); with no depth given its rank is uniform.

Training rows may ask several questions (``train_queries``, applied by ``for_split("train")``):
1..train_queries (uniform per row) ``QUERY key ANSWER value`` blocks about distinct records (the
first at the requested depth, the others at random slots), every value labelled, so one row
carries several retrieval signals; records share the context the questions leave. At
L=64 nine records leave room for one question only, so training rows may hold fewer look-alikes
(``train_distractors``; None: ``distractors``). Validation and test rows always have
``distractors`` look-alikes and one question, so evaluation, the chance floor, the baselines and
the mix signature are unchanged. Slices: ``similarity``, ``distractors``, ``key_len``, ``questions``.

Chance floor: 1 / records (target + distractors): a prompt-only shortcut sees records that are
exchangeable with the target in keys, values and placement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import combinations
from math import comb
from typing import ClassVar, Optional

import numpy as np

from tasks.base import Task, TaskArrays, register, uniform_tokens
from tasks.common import check_depth, digits, distinct_codes, place_blocks, question_counts
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
    suite_rank: ClassVar[int] = 20
    has_depth: ClassVar[bool] = True
    key_len: int = 3  # tokens per key
    value_len: int = 2  # tokens per value (the answer)
    distractors: Optional[int] = 8  # look-alike records; None: as many as fill the context
    similarity: float = 0.67  # fraction of key tokens every record keeps from the hidden centre key
    train_queries: int = 1  # most questions per training row (1..this, uniform); val/test rows ask one
    train_distractors: Optional[int] = None  # look-alikes in training rows; None: distractors
    questions: int = 1  # most questions per generated row: for_split sets it (train_queries, else 1)

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
        if self.train_distractors is not None and self.train_distractors < 0:
            raise ValueError(f"task.train_distractors={self.train_distractors} must be None (distractors) or >= 0")
        for f in ("train_queries", "questions"):
            if getattr(self, f) < 1:
                raise ValueError(f"task.{f}={getattr(self, f)} must be >= 1")
        td, tq, block = self.train_distractors, self.train_queries, self.question_len + self.value_len
        td = self.distractors if td is None else td
        m = max((self.train_len - tq * block) // self.record_len, 2) if td is None else 1 + td
        if tq > m:
            raise ValueError(f"task.train_queries={tq} must be <= the {m} records of a training row"
                             " (each question asks a distinct record)")
        if self.train_len < m * self.record_len + tq * block:
            raise ValueError(
                f"task.train_queries={tq} with train_distractors={self.train_distractors} needs task.train_len >= "
                f"{m * self.record_len + tq * block} ({m} records of {self.record_len} tokens and {tq} questions "
                f"of {block}); got {self.train_len}")
        super().__post_init__()

    def for_split(self, split: str) -> Multikey:
        """Training rows: ``train_queries`` questions among ``train_distractors`` look-alikes."""
        if split != "train":
            return self if self.questions == 1 else replace(self, questions=1)
        distractors = self.distractors if self.train_distractors is None else self.train_distractors
        if (self.questions, self.distractors) == (self.train_queries, distractors):
            return self
        return replace(self, questions=self.train_queries, distractors=distractors)

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
            return max((length - self.questions * (self.question_len + self.value_len)) // self.record_len, 2)
        return 1 + self.distractors

    def min_length(self) -> int:
        m = 2 if self.distractors is None else 1 + self.distractors
        return m * self.record_len + self.questions * (self.question_len + self.value_len)

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(Vocab.QUERY, self.key_len, self.value_len)}

    def key_space(self, vocab: Vocab) -> int:
        """Distinct look-alike keys around one centre: which positions change, and to what."""
        changed = self.key_len - self.shared
        return comb(self.key_len, changed) * (len(vocab.keys) - 1) ** changed

    def check_records(self, vocab: Vocab, length: int) -> None:
        m = self.records(length)
        if m > self.key_space(vocab) or m > len(vocab.values) ** self.value_len:
            raise ValueError(
                f"length={length} needs {m} multikey records with distinct keys and values; "
                f"key_len={self.key_len} with similarity={self.similarity} allows {self.key_space(vocab)} keys and "
                f"value_len={self.value_len} {len(vocab.values) ** self.value_len} values (vocab_size={vocab.size})"
            )

    def check_vocab(self, vocab: Vocab) -> None:
        if self.distractors is not None:
            self.check_records(vocab, self.train_len)

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        return {"accuracy": 1.0 / self.records(length)}

    def depth_resolution(self, length: int) -> float:
        context = length - self.questions * (self.question_len + self.value_len)
        m = self.records(length)
        return (0.5 / (m - 1) if m > 1 else 1.0) + 1.0 / max(context - self.record_len, 1)

    def record_starts(self, length: int, asks: np.ndarray | int = 1) -> np.ndarray:
        """(rows, records) starts: spread evenly over the context the row's ``asks`` questions leave."""
        m, w = self.records(length), self.record_len
        context = length - np.atleast_1d(asks)[:, None] * (self.question_len + self.value_len)
        return np.arange(m) * w + (np.arange(m) * (context - m * w)) // max(m - 1, 1)

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_records(vocab, length)
        check_depth(depth)
        kl, vl, nk, nv = self.key_len, self.value_len, len(vocab.keys), len(vocab.values)
        m, changed, q, qlen = self.records(length), kl - self.shared, self.questions, self.question_len + vl
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        centre = rng.integers(0, nk, size=(n, 1, kl))
        # One code per record: (which positions change, by how much); distinct codes = distinct keys.
        per_mask = (nk - 1) ** changed
        codes = distinct_codes(rng, n, self.key_space(vocab), m)  # (n, m)
        which = shared_masks(kl, changed)[codes // per_mask]  # (n, m, kl): True where the key changes
        steps = 1 + digits(codes % per_mask, nk - 1, changed)  # (n, m, changed) in 1..nk-1
        shift = np.zeros((n, m, kl), dtype=np.int64)
        shift[which] = steps.reshape(-1)  # row-major: each record's changed positions in order
        keys = vocab.keys.start + (centre + shift) % nk  # (n, m, kl), record 0 is the target
        vals = vocab.values.start + digits(distinct_codes(rng, n, nv**vl, m), nv, vl)
        asks = question_counts(rng, n, q)  # (n,) questions per row; all 1 in evaluation rows
        context = length - asks * qlen  # (n,)
        if depth is not None:
            rank = np.full(n, int(round(float(depth) * (m - 1))))
        else:
            rank = rng.integers(0, m, size=n)
        # Slot order: the target at its rank, distractors 1..m-1 in the other slots.
        slot = np.arange(m)[None, :]
        order = np.where(slot < rank[:, None], slot + 1, np.where(slot == rank[:, None], 0, slot))
        if q > 1:  # records 1..q-1 are asked too: shuffle the look-alikes so they land at random slots
            shuffled = 1 + np.argsort(rng.random((n, m - 1)), axis=1)
            order = np.where(order > 0, np.take_along_axis(shuffled, np.maximum(order - 1, 0), axis=1), 0)
        records = np.concatenate([np.full((n, m, 1), vocab.NEEDLE), keys, vals], axis=2)
        records = np.take_along_axis(records, order[:, :, None], axis=1)
        starts = np.broadcast_to(self.record_starts(length, asks), (n, m))
        place_blocks(tokens, starts, records)
        answer_mask = np.zeros((n, length), dtype=bool)
        rows = np.arange(n)
        for j in range(q):  # question j asks record j (record 0: the target at the requested depth)
            i = rows[asks > j]
            at = (context[i] + j * qlen)[:, None]
            block = np.concatenate([np.full((len(i), 1), vocab.QUERY), keys[i, j],
                                    np.full((len(i), 1), vocab.ANSWER), vals[i, j]], axis=1)
            tokens[i[:, None], at + np.arange(qlen)] = block
            answer_mask[i[:, None], at + 2 + kl + np.arange(vl)] = True
        achieved = starts[rows, rank] / np.maximum(context - self.record_len, 1)
        slices = {"similarity": np.full(n, self.shared / kl), "distractors": np.full(n, m - 1),
                  "key_len": np.full(n, kl), "questions": asks}
        return TaskArrays(tokens, answer_mask, achieved, slices)

    def _records(self, vocab: Vocab, row: np.ndarray, end: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        kl, vl = self.key_len, self.value_len
        starts = np.flatnonzero(row[:end] == vocab.NEEDLE)
        return [row[s + 1 : s + 1 + kl] for s in starts], [row[s + 1 + kl : s + 1 + kl + vl] for s in starts]

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        kl, vl = self.key_len, self.value_len
        for i, row in enumerate(hidden):
            queries = np.flatnonzero(row == vocab.QUERY)
            records = list(zip(*self._records(vocab, row, int(queries[0]))))
            for q in queries:  # every question of the row (training rows may ask several)
                key = row[q + 1 : q + 1 + kl]
                for k, v in records:
                    if np.array_equal(k, key):
                        out[i, q + 2 + kl : q + 2 + kl + vl] = v
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
        return {"distractor_rate": hits / max(len(arrays.tokens), 1),
                "achieved_depth": float(np.mean(arrays.depth)) if len(arrays.depth) else float("nan")}
