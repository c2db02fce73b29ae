"""Multi-key NIAH that needs the whole key: one target record among look-alikes on a key grid.

Layout (key_len=2, value_len=2, 8 distractors: a 3 x 3 grid), L tokens in all:

    h h NEEDLE a y v1 v2 NEEDLE c x w1 w2 ... NEEDLE b z u1 u2 h h  QUERY a y ANSWER | v1 v2
        <------------------- 9 records, in random order --------------->

Each row draws, per key position j, an alphabet of s_j key tokens (distinct across positions), and
the records' keys are the whole grid A_0 x ... x A_{k-1}: every combination exactly once. So every
proper subset of the target's key positions also matches other records (all but position j:
s_j records; one position: R / s_j records), every key token of a row appears equally often at
its position, and the target is an arbitrary grid point: voting, rarest-token, first-token and
key-subset lookups all leave at least ``min(s_j)`` equally good candidates. Values differ between
all records of a row, so answering a look-alike's value is always wrong (``extra_metrics``:
``distractor_rate``). ``distractors=None`` fills the context with the largest balanced grid that
fits (the "haystack made of needles").

The grid shape is the most balanced factorisation of records = distractors + 1 into ``key_len``
factors of at least 2 (the largest smallest factor): 9 records with 2-token keys are 3 x 3, 8 with
3-token keys 2 x 2 x 2. A record count without such a factorisation is a config error. Why not
"every proper subset matches, floor 1/records": the lookup on all positions but j matches s_j
records, and a grid's s_j satisfy prod s_j = R, so the best key-subset lookup scores
1 / min s_j >= R^(-1/key_len); by the Loomis-Whitney inequality no other arrangement of R distinct
keys makes every (key_len - 1)-position lookup ambiguous among more records.

The records sit as one contiguous block at ``depth`` of the context (filler noise around it), in a
random order, so the target's rank inside the block is uniform in every depth cell: a positional
guess (first, last, middle record, or the earliest / latest record matching part of the key) has
no cell in which it beats the floor. ``TaskArrays.depth`` is where the block starts (the depth
achieved); ``achieved_depth`` reports its mean.

Training rows may ask several questions (``train_queries``, applied by ``for_split("train")``):
1..train_queries (uniform per row) ``QUERY key ANSWER value`` blocks about distinct records, every
value labelled. Training rows may hold another grid (``train_distractors``; None:
``distractors``). Validation and test rows always have ``distractors`` look-alikes and one
question, so evaluation, the chance floor, the baselines and the mix signature are unchanged.
Slices: ``distractors``, ``key_len``, ``questions``.

Chance floor: 1 / min(s_j), the best key-subset lookup (1/3 on the defaults); 1 / records when
``key_len`` is 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import ClassVar, Optional

import numpy as np

from tasks.base import Task, TaskArrays, register, sample_distinct, uniform_tokens
from tasks.common import check_depth, digits, distinct_codes, place_blocks, question_counts
from tasks.vocab import Vocab


@lru_cache(maxsize=256)
def grid_shape(records: int, key_len: int) -> Optional[tuple[int, ...]]:
    """The factorisation of ``records`` into ``key_len`` factors >= 2 with the largest smallest
    factor (ties: the fewest distinct sizes), ascending; None when there is none. One key position:
    (records,)."""
    if key_len == 1:
        return (records,) if records >= 1 else None

    def splits(r: int, k: int, lo: int) -> list[tuple[int, ...]]:
        if k == 1:
            return [(r,)] if r >= lo else []
        out = []
        f = lo
        while f ** k <= r:
            if r % f == 0:
                out += [(f, *rest) for rest in splits(r // f, k - 1, f)]
            f += 1
        return out

    options = splits(records, key_len, 2)
    return max(options, key=lambda s: (s[0], -s[-1])) if options else None


def fill_shape(slots: int, key_len: int) -> tuple[int, ...]:
    """The largest balanced grid (factors s or s + 1, s = floor(slots^(1/key_len))) of at most
    ``slots`` records: the haystack made of needles."""
    if key_len == 1:
        return (max(slots, 2),)
    s = max(int(round(slots ** (1.0 / key_len))), 2)
    while s > 2 and s ** key_len > slots:
        s -= 1
    shape = [s] * key_len
    for j in range(key_len):
        if np.prod(shape) // s * (s + 1) <= slots:
            shape[j] = s + 1
    return tuple(sorted(shape))


def allowed_records(key_len: int, upto: int = 40) -> list[int]:
    return [r for r in range(1, upto + 1) if grid_shape(r, key_len) is not None]


@register
@dataclass
class Multikey(Task):
    name: ClassVar[str] = "multikey"
    suite_rank: ClassVar[int] = 20
    has_depth: ClassVar[bool] = True
    key_len: int = 2  # tokens per key
    value_len: int = 2  # tokens per value (the answer)
    distractors: Optional[int] = 8  # look-alike records (records = distractors + 1 form the key grid); None: fill
    train_queries: int = 1  # most questions per training row (1..this, uniform); val/test rows ask one
    train_distractors: Optional[int] = None  # look-alikes in training rows; None: distractors
    questions: int = 1  # most questions per generated row: for_split sets it (train_queries, else 1)

    def __post_init__(self) -> None:
        if self.key_len < 1:
            raise ValueError(f"task.key_len={self.key_len} must be >= 1")
        if self.value_len < 1:
            raise ValueError(f"task.value_len={self.value_len} must be >= 1")
        for f in ("distractors", "train_distractors"):
            d = getattr(self, f)
            if d is not None and (d < 0 or grid_shape(d + 1, self.key_len) is None):
                allowed = [r - 1 for r in allowed_records(self.key_len)]
                raise ValueError(
                    f"task.{f}={d} with key_len={self.key_len}: records = {f} + 1 must factor into "
                    f"key_len={self.key_len} grid sizes >= 2 (every key position ambiguous); "
                    f"allowed: None or one of {allowed}...")
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
    def record_len(self) -> int:
        return 1 + self.key_len + self.value_len

    @property
    def question_len(self) -> int:
        return 2 + self.key_len

    def shape(self, length: int) -> tuple[int, ...]:
        """The key grid (alphabet size per key position, ascending) at this length."""
        if self.distractors is None:
            slots = (length - self.questions * (self.question_len + self.value_len)) // self.record_len
            return fill_shape(slots, self.key_len)
        return grid_shape(1 + self.distractors, self.key_len)

    def records(self, length: int) -> int:
        """Records (target + distractors) at this length."""
        return int(np.prod(self.shape(length)))

    def min_length(self) -> int:
        m = 2 ** self.key_len if self.distractors is None else 1 + self.distractors
        return m * self.record_len + self.questions * (self.question_len + self.value_len)

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(Vocab.QUERY, self.key_len, self.value_len)}

    def check_records(self, vocab: Vocab, length: int) -> None:
        shape, m = self.shape(length), self.records(length)
        if sum(shape) > len(vocab.keys) or m > len(vocab.values) ** self.value_len:
            raise ValueError(
                f"length={length} needs a {' x '.join(map(str, shape))} key grid ({sum(shape)} distinct key tokens) "
                f"and {m} distinct values; vocab_size={vocab.size} has {len(vocab.keys)} key tokens and "
                f"value_len={self.value_len} allows {len(vocab.values) ** self.value_len} values"
            )

    def check_vocab(self, vocab: Vocab) -> None:
        if self.distractors is not None:
            self.check_records(vocab, self.train_len)

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        """The best key-subset lookup: all positions but the smallest alphabet's leave min(s_j) records."""
        return {"accuracy": 1.0 / self.shape(length)[0]}

    def depth_resolution(self, length: int) -> float:
        context = length - self.questions * (self.question_len + self.value_len)
        return 1.0 / max(context - self.records(length) * self.record_len, 1)

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_records(vocab, length)
        check_depth(depth)
        kl, vl, nv, w = self.key_len, self.value_len, len(vocab.values), self.record_len
        shape = self.shape(length)
        m, q, qlen = self.records(length), self.questions, self.question_len + vl
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        # Per row: the alphabets of every key position, distinct tokens across positions.
        alphabet = sample_distinct(rng, n, vocab.keys, sum(shape))  # (n, sum(shape))
        offsets = np.cumsum((0, *shape[:-1]))
        grid = np.stack(np.unravel_index(np.arange(m), shape), axis=1)  # (m, kl): every combination once
        order = np.argsort(rng.random((n, m)), axis=1)  # block slot -> grid point, per row
        at = offsets[None, None, :] + grid[order]  # (n, m, kl) column into the row's alphabet
        keys = np.take_along_axis(alphabet[:, None, :], at, axis=2)  # (n, m, kl), slot order
        vals = vocab.values.start + digits(distinct_codes(rng, n, nv**vl, m), nv, vl)  # (n, m, vl)
        asks = question_counts(rng, n, q)  # (n,) questions per row; all 1 in evaluation rows
        context = length - asks * qlen  # (n,)
        spare = context - m * w
        depths = rng.random(n) if depth is None else np.full(n, float(depth))
        start = np.rint(depths * spare).astype(np.int64)
        records = np.concatenate([np.full((n, m, 1), vocab.NEEDLE), keys, vals], axis=2)
        place_blocks(tokens, start[:, None] + np.arange(m)[None, :] * w, records)
        asked = np.argsort(rng.random((n, m)), axis=1)[:, :q]  # distinct slots; the first is the target
        answer_mask = np.zeros((n, length), dtype=bool)
        rows = np.arange(n)
        for j in range(q):
            i = rows[asks > j]
            slot = asked[i, j]
            pos = (context[i] + j * qlen)[:, None]
            block = np.concatenate([np.full((len(i), 1), vocab.QUERY), keys[i, slot],
                                    np.full((len(i), 1), vocab.ANSWER), vals[i, slot]], axis=1)
            tokens[i[:, None], pos + np.arange(qlen)] = block
            answer_mask[i[:, None], pos + 2 + kl + np.arange(vl)] = True
        achieved = start / np.maximum(spare, 1)
        slices = {"distractors": np.full(n, m - 1), "key_len": np.full(n, kl), "questions": asks}
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
