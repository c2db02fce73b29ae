"""In-context vs in-weight knowledge: a fixed world mapping, and documents that may contradict it.

A world maps every key k to a value W[k]; it comes from ``world_seed`` alone (never the split seed),
so the same facts recur in every training example that uses them and can be learned in the weights.
Each example asks one key; three kinds of rows (slices ``in_context`` and ``conflict``):

    closed book:   h h h h h h h h h h h h h h h h h h h        QUERY k ANSWER | W[k]
    consistent:    h h NEEDLE j W[j] NEEDLE k W[k] NEEDLE i W[i] h h  QUERY CONTEXT k ANSWER | W[k]
    conflict:      h h NEEDLE j W'[j] NEEDLE k W'[k] NEEDLE i W'[i] h h  QUERY CONTEXT k ANSWER | W'[k]

A document asserts ``facts`` facts about distinct keys: one block of facts starting at ``depth``
of the context, in random order (the asked fact's rank in the block is uniform, so no positional
guess such as "the first value of the context" beats 1 / facts in any depth cell;
``TaskArrays.depth`` is where the document starts, within ``depth_resolution``). A row is closed
book with probability ``closed_book_rate``; otherwise its whole document contradicts the world
with probability ``conflict_rate``. The label follows the context.
Every fact of a conflicting document is contradicted, so "the fact that disagrees with the world"
does not single out the asked one. The test split uses ``eval_closed_book_rate`` and
``eval_conflict_rate`` (default: only conflicting documents, so the reported accuracy is context
following), and its contradicting values come from a counter-world W' (W'[k] != W[k], also from
``world_seed``) that training never uses: a training conflict draws values outside {W[k], W'[k]},
so no (key, value) pair of a test document appears in any training row.

``context_marker`` adds CONTEXT ("according to the context") to questions whose context asserts
facts; without it the conflict is ambiguous, which is the point of comparing the two.
``extra_metrics``: on conflict rows, ``context_following`` (the context value was produced) and
``weight_recall`` (the world value was), reported separately; ``closed_book_accuracy``.

Chance floor (test split): eval_closed_book_rate + (1 - eval_closed_book_rate) *
(1 - eval_conflict_rate) (rows a context-blind world lookup gets right) plus the rest / facts (a
shortcut that reads the document but not the asked key picks one of ``facts`` values); 1 / facts
on the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Optional

import numpy as np

from tasks.base import Task, TaskArrays, register, sample_distinct, uniform_tokens
from tasks.common import check_depth, draw_excluding, place_blocks
from tasks.vocab import Vocab


@register
@dataclass
class Conflict(Task):
    name: ClassVar[str] = "conflict"
    suite_rank: ClassVar[int] = 80
    has_depth: ClassVar[bool] = True
    world_seed: int = 0  # fixes the world k -> W[k], independent of the data seed
    world_keys: Optional[int] = None  # how many keys the world knows (the first ones); None: all
    closed_book_rate: float = 0.5  # rows without any assertion in context
    conflict_rate: float = 0.0  # among asserting rows, the share whose document contradicts the world
    context_marker: bool = True  # CONTEXT in questions whose context asserts the fact
    facts: int = 4  # facts per document (distinct keys, the asked one among them)
    eval_closed_book_rate: float = 0.0  # the test split's closed_book_rate
    eval_conflict_rate: float = 1.0  # the test split's conflict_rate (values from the counter-world)
    counter_world: bool = False  # set by for_split("test"): conflicts take W'[k]

    def __post_init__(self) -> None:
        if self.facts < 1:
            raise ValueError(f"task.facts={self.facts} must be >= 1")
        if self.world_keys is not None and self.world_keys < self.facts:
            raise ValueError(f"task.world_keys={self.world_keys} must be >= facts={self.facts} (distinct keys)")
        for f in ("closed_book_rate", "conflict_rate", "eval_closed_book_rate", "eval_conflict_rate"):
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
        return 3 * self.facts + self.question_len + 1

    def for_split(self, split: str) -> Conflict:
        if split != "test":
            return self
        return replace(self, closed_book_rate=self.eval_closed_book_rate, conflict_rate=self.eval_conflict_rate,
                       counter_world=True)

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        closed, conflict = self.eval_closed_book_rate, self.eval_conflict_rate
        world_right = closed + (1 - closed) * (1 - conflict)
        return {"accuracy": world_right + (1 - world_right) / self.facts}

    def depth_resolution(self, length: int) -> float:
        spare = length - 1 - self.question_len - 3 * self.facts  # where the document may start
        return 1.0 / spare if spare > 0 else 1.0  # rounding to a token

    def check_vocab(self, vocab: Vocab) -> None:
        if self.facts > len(vocab.keys):
            raise ValueError(f"task.facts={self.facts} exceeds the {len(vocab.keys)} keys of vocab_size={vocab.size}")
        if self.world_keys is not None and self.world_keys > len(vocab.keys):
            raise ValueError(
                f"task.world_keys={self.world_keys} exceeds the {len(vocab.keys)} keys"
                f" of vocab_size={vocab.size}"
            )

    def world(self, vocab: Vocab) -> np.ndarray:
        """W as an array over key offsets: W[k - keys.start] is a value token."""
        rng = np.random.default_rng(np.random.SeedSequence([self.world_seed, vocab.size]))
        return rng.integers(vocab.values.start, vocab.values.stop, size=len(vocab.keys))

    def counter(self, vocab: Vocab) -> np.ndarray:
        """W' over key offsets: the test split's contradicting facts, W'[k] != W[k] for every k."""
        rng = np.random.default_rng(np.random.SeedSequence([self.world_seed, vocab.size, 1]))
        nv = len(vocab.values)
        off = self.world(vocab) - vocab.values.start
        return vocab.values.start + (off + rng.integers(1, nv, size=len(vocab.keys))) % nv

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(Vocab.QUERY, 1, 1), (Vocab.QUERY, 2, 1)} if self.context_marker else {(Vocab.QUERY, 1, 1)}

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_vocab(vocab)
        check_depth(depth)
        world, counter, nv, F = self.world(vocab), self.counter(vocab), len(vocab.values), self.facts
        context = length - 1 - self.question_len
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        key_off = sample_distinct(rng, n, range(0, self.world_keys or len(vocab.keys)), F)  # (n, F): 0 asked
        true = world[key_off]
        in_context = rng.random(n) >= self.closed_book_rate
        conflict = in_context & (rng.random(n) < self.conflict_rate)
        if self.counter_world:
            other = counter[key_off]
        else:  # training conflicts avoid both W and W': test documents stay unseen
            excluded = np.stack([true, counter[key_off]], axis=2).reshape(n * F, 2) - vocab.values.start
            other = vocab.values.start + draw_excluding(rng, nv, excluded, (n * F, 1)).reshape(n, F)
        values = np.where(conflict[:, None], other, true)
        answer = values[:, 0]
        # The document is one block of F facts at ``depth``, in random order: the asked fact's rank is
        # uniform in every depth cell, so "the first / last fact" is right 1 / F of the time.
        block = (rng.random(n) if depth is None else np.full(n, float(depth))) * (context - 3 * F)
        slot = np.argsort(rng.random((n, F)), axis=1)  # fact j's place in the block
        starts = np.rint(block).astype(np.int64)[:, None] + 3 * slot
        records = np.stack([np.full((n, F), vocab.NEEDLE), vocab.keys.start + key_off, values], axis=2)
        rows = np.flatnonzero(in_context)
        sub = tokens[rows]
        place_blocks(sub, starts[rows], records[rows])
        tokens[rows] = sub
        key = vocab.keys.start + key_off[:, 0]
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
        achieved = np.rint(block) / max(context - 3 * F, 1)  # where the document starts
        return TaskArrays(tokens, answer_mask, achieved,
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
