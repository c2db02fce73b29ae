"""In-context vs in-weight knowledge: a fixed world mapping, and a context that may contradict it.

A world maps every key k to a value W[k]; it comes from ``world_seed`` alone (never the split seed),
so the same facts recur in every training example that uses them and can be learned in the weights.
Each example asks one key; three kinds of rows (slices ``in_context`` and ``conflict``):

    closed book:   h h h h h h h h h h h h     QUERY k ANSWER | W[k]
    consistent:    h h NEEDLE k W[k] h h h  QUERY CONTEXT k ANSWER | W[k]
    conflict:      h h NEEDLE k v' h h h h  QUERY CONTEXT k ANSWER | v'      (v' != W[k])

A row is closed book with probability ``closed_book_rate``; otherwise the context asserts k -> value
at ``depth``, contradicting the world with probability ``conflict_rate`` (train with 0, evaluate
with > 0). The label follows the context. ``context_marker`` adds CONTEXT ("according to the
context") to questions whose context asserts the fact; without it the conflict is ambiguous, which
is the point of comparing the two. ``extra_metrics``: on conflict rows, ``context_following`` (the
context value was produced) and ``weight_recall`` (the world value was); ``closed_book_accuracy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from tasks.base import Task, TaskArrays, register, uniform_tokens
from tasks.common import check_depth
from tasks.vocab import Vocab


@register
@dataclass
class Conflict(Task):
    name: ClassVar[str] = "conflict"
    has_depth: ClassVar[bool] = True
    world_seed: int = 0  # fixes the world k -> W[k], independent of the data seed
    world_keys: Optional[int] = None  # how many keys the world knows (the first ones); None: all
    closed_book_rate: float = 0.5  # rows without any assertion in context
    conflict_rate: float = 0.0  # among asserting rows, the share contradicting the world
    context_marker: bool = True  # CONTEXT in questions whose context asserts the fact

    def __post_init__(self) -> None:
        for f in ("closed_book_rate", "conflict_rate"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ValueError(f"task.{f}={getattr(self, f)} must be in [0, 1]")
        if self.world_keys is not None and self.world_keys < 1:
            raise ValueError(f"task.world_keys={self.world_keys} must be None or >= 1")
        if self.world_seed < 0:
            raise ValueError(f"task.world_seed={self.world_seed} must be >= 0")
        super().__post_init__()

    @property
    def question_len(self) -> int:
        return 4 if self.context_marker else 3

    def min_length(self) -> int:
        return 3 + self.question_len + 1

    def check_vocab(self, vocab: Vocab) -> None:
        if self.world_keys is not None and self.world_keys > len(vocab.keys):
            raise ValueError(
                f"task.world_keys={self.world_keys} exceeds the {len(vocab.keys)} keys"
                f" of vocab_size={vocab.size}"
            )

    def world(self, vocab: Vocab) -> np.ndarray:
        """W as an array over key offsets: W[k - keys.start] is a value token."""
        rng = np.random.default_rng(np.random.SeedSequence([self.world_seed, vocab.size]))
        return rng.integers(vocab.values.start, vocab.values.stop, size=len(vocab.keys))

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(Vocab.QUERY, 1, 1), (Vocab.QUERY, 2, 1)} if self.context_marker else {(Vocab.QUERY, 1, 1)}

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_vocab(vocab)
        check_depth(depth)
        world, nv = self.world(vocab), len(vocab.values)
        context = length - 1 - self.question_len
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        key_off = rng.integers(0, self.world_keys or len(vocab.keys), size=n)
        true = world[key_off]
        in_context = rng.random(n) >= self.closed_book_rate
        conflict = in_context & (rng.random(n) < self.conflict_rate)
        other = vocab.values.start + (true - vocab.values.start + rng.integers(1, nv, size=n)) % nv
        answer = np.where(conflict, other, true)
        depths = rng.random(n) if depth is None else np.full(n, float(depth))
        start = np.rint(depths * (context - 3)).astype(np.int64)
        rows = np.flatnonzero(in_context)
        key = vocab.keys.start + key_off
        for j, tok in enumerate((np.full(n, vocab.NEEDLE), key, answer)):
            tokens[rows, start[rows] + j] = tok[rows]
        # Question at the end; a closed-book row's question is one token shorter (no CONTEXT),
        # its first slot stays haystack.
        tokens[:, length - 3] = key
        tokens[:, length - 2] = vocab.ANSWER
        tokens[:, length - 1] = answer
        if self.context_marker:
            tokens[:, length - 5] = np.where(in_context, vocab.QUERY, tokens[:, length - 5])
            tokens[:, length - 4] = np.where(in_context, vocab.CONTEXT, vocab.QUERY)
        else:
            tokens[:, length - 4] = vocab.QUERY
        answer_mask = np.zeros((n, length), dtype=bool)
        answer_mask[:, -1] = True
        return TaskArrays(tokens, answer_mask, depths,
                          {"in_context": in_context.astype(np.int64), "conflict": conflict.astype(np.int64)})

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        """Perfect in-weight memory of the world, overridden by any assertion in the context."""
        out = hidden.copy()
        world = self.world(vocab)
        for i, row in enumerate(hidden):
            p = int(answer_mask[i].argmax())
            key = int(row[p - 2])
            value = world[key - vocab.keys.start]
            for s in np.flatnonzero(row[:p] == vocab.NEEDLE):
                if row[s + 1] == key:
                    value = row[s + 2]
            out[i, p] = value
        return out

    def extra_metrics(self, vocab: Vocab, arrays: TaskArrays, predictions: np.ndarray) -> dict[str, float]:
        world = self.world(vocab)
        last = arrays.answer_mask.shape[1] - 1
        pred, label = predictions[:, last], arrays.tokens[:, last]
        true = world[arrays.tokens[:, last - 2] - vocab.keys.start]
        conflict = arrays.slices["conflict"].astype(bool)
        closed = ~arrays.slices["in_context"].astype(bool)
        mean = lambda x, m: float(x[m].mean()) if m.any() else float("nan")
        return {"context_following": mean(pred == label, conflict),
                "weight_recall": mean(pred == true, conflict),
                "closed_book_accuracy": mean(pred == true, closed)}
