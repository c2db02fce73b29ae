"""Variable tracking (RULER ``vt``): follow chains of assignments, a multi-hop retrieval.

Layout (chains=2, hops=2; the default has 6 chains of 4 hops), L tokens in all; variables are key
tokens, values value tokens:

    h ASSIGN X1 v h ASSIGN Y1 u h h ASSIGN X2 X1 h ASSIGN Y2 Y1 ASSIGN X3 X2 h ASSIGN Y3 Y2 h
    HOP v ANSWER | X1 X2 X3

Each chain c is ``hops + 1`` statements ``ASSIGN dst src``: X1 = value, then X(j+1) = Xj. The
question (HOP value ANSWER) asks which variables hold the first chain's value; the answer lists
that chain's variables in order of assignment. Chains are interleaved at random, each chain's
statements in order; variables are distinct across chains and so are the chains' values.
The asked chain (chain 0) is exchangeable with the others, so only the value in the question
says which chain to follow. Slices: ``hops`` and ``chains``.

Chance floor: 1 / chains (following any chain without reading the question, e.g. the first one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tasks.base import Task, TaskArrays, register, sample_distinct, uniform_tokens
from tasks.common import block_starts, place_blocks
from tasks.vocab import Vocab

STATEMENT = 3  # ASSIGN dst src


@register
@dataclass
class VariableTracking(Task):
    name: ClassVar[str] = "variable_tracking"
    suite_rank: ClassVar[int] = 40
    chains: int = 6  # independent assignment chains (the others are distractors)
    hops: int = 4  # assignments after the first: the answer has hops + 1 variables

    def __post_init__(self) -> None:
        if self.chains < 1:
            raise ValueError(f"task.chains={self.chains} must be >= 1")
        if self.hops < 0:
            raise ValueError(f"task.hops={self.hops} must be >= 0")
        super().__post_init__()

    @property
    def statements(self) -> int:
        return self.chains * (self.hops + 1)

    def min_length(self) -> int:
        return STATEMENT * self.statements + 3 + self.hops + 1

    def check_vocab(self, vocab: Vocab) -> None:
        if self.statements > len(vocab.keys):
            raise ValueError(
                f"task.chains={self.chains} x (hops={self.hops} + 1) = {self.statements} variables exceed"
                f" the {len(vocab.keys)} keys of vocab_size={vocab.size}"
            )
        if self.chains > len(vocab.values):
            raise ValueError(f"task.chains={self.chains} exceeds the {len(vocab.values)} values")

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        return {"accuracy": 1.0 / self.chains}

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(Vocab.HOP, 1, self.hops + 1)}

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_vocab(vocab)
        C, H = self.chains, self.hops + 1
        answer_len = H
        context = length - 3 - answer_len
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        names = sample_distinct(rng, n, vocab.keys, C * H).reshape(n, C, H)
        values = sample_distinct(rng, n, vocab.values, C)  # (n, C)
        src = np.concatenate([values[:, :, None], names[:, :, :-1]], axis=2)  # X1 <- v, X(j+1) <- Xj
        stmts = np.stack([np.full((n, C, H), vocab.ASSIGN), names, src], axis=3).reshape(n, C * H, STATEMENT)
        # Depths sorted within each chain keep its statements in order; chains interleave freely.
        depths = np.sort(rng.random((n, C, H)), axis=2).reshape(n, C * H)
        place_blocks(tokens, block_starts(depths, context, STATEMENT), stmts)
        tokens[:, context] = vocab.HOP
        tokens[:, context + 1] = values[:, 0]
        tokens[:, context + 2] = vocab.ANSWER
        tokens[:, length - answer_len :] = names[:, 0]
        answer_mask = np.zeros((n, length), dtype=bool)
        answer_mask[:, length - answer_len :] = True
        return TaskArrays(tokens, answer_mask, np.full(n, np.nan),
                          {"hops": np.full(n, self.hops), "chains": np.full(n, C)})

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        for i, row in enumerate(hidden):
            q = int(np.flatnonzero(row == vocab.HOP)[-1])
            assigned = {int(row[s + 2]): int(row[s + 1]) for s in np.flatnonzero(row[:q] == vocab.ASSIGN)}
            chain, cur = [], int(row[q + 1])
            while cur in assigned:  # value -> X1 -> X2 ...: each source is assigned exactly once
                cur = assigned[cur]
                chain.append(cur)
            out[i, answer_mask[i]] = chain
        return out
