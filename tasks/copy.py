"""Copy (long output): reproduce a span of the context as is, or reversed.

Layout (span=4, reverse=False), L tokens in all:

    h h h SEP a b c d SEP h h h h   COPY ANSWER | a b c d
    (reverse=True: ...   REVERSE ANSWER | d c b a)

The span (key and value tokens, uniform) is delimited by SEP and sits at ``depth`` of a context
whose other tokens are drawn from the same key and value ranges, so only the SEP markers find
it (a filler-only haystack would let "copy the key/value tokens" solve the task without the
markers); the answer is ``span`` tokens long (up to about L/2), all produced by the model in
decode. At least one context word precedes and follows ``SEP span SEP`` (depth 0 and 1 are the
first and last places that leave it), so the span is never the first or last words of the context
and no positional guess passes in the end cells. Slices: ``span``, ``reverse``.

Chance floor: a shortcut that does not find the delimited span copies from a fixed place, right
only when the span happens to start there: 1 / (number of span starts), at least 1 / 180.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tasks.base import Task, TaskArrays, register, uniform_tokens
from tasks.common import check_depth
from tasks.vocab import Vocab


@register
@dataclass
class Copy(Task):
    name: ClassVar[str] = "copy"
    suite_rank: ClassVar[int] = 70
    has_depth: ClassVar[bool] = True
    span: int = 16  # tokens to reproduce
    reverse: bool = False

    def __post_init__(self) -> None:
        if self.span < 1:
            raise ValueError(f"task.span={self.span} must be >= 1")
        super().__post_init__()

    def min_length(self) -> int:
        return 2 * self.span + 6  # word SEP span SEP word, marker ANSWER, answer

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        starts = length - 5 - 2 * self.span  # 1 + rint(depth * (context - s - 4)) takes this many values
        return {"accuracy": max(1.0 / (vocab.values.stop - vocab.keys.start), 1.0 / max(starts, 1))}

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(Vocab.REVERSE if self.reverse else Vocab.COPY, 0, self.span)}

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        check_depth(depth)
        s = self.span
        context = length - 2 - s
        words = range(vocab.keys.start, vocab.values.stop)
        tokens = uniform_tokens(rng, words, (n, length))
        text = uniform_tokens(rng, words, (n, s))
        depths = rng.random(n) if depth is None else np.full(n, float(depth))
        # At least one context word before and after the delimited span: the span is never the first
        # or the last words of the context, so "copy the first / last words" never passes for copying.
        start = 1 + np.rint(depths * (context - s - 4)).astype(np.int64)
        cols = start[:, None] + np.arange(s + 2)
        tokens[np.arange(n)[:, None], cols] = np.concatenate(
            [np.full((n, 1), vocab.SEP), text, np.full((n, 1), vocab.SEP)], axis=1
        )
        tokens[:, context] = vocab.REVERSE if self.reverse else vocab.COPY
        tokens[:, context + 1] = vocab.ANSWER
        tokens[:, context + 2 :] = text[:, ::-1] if self.reverse else text
        answer_mask = np.zeros((n, length), dtype=bool)
        answer_mask[:, context + 2 :] = True
        return TaskArrays(tokens, answer_mask, depths,
                          {"span": np.full(n, s), "reverse": np.full(n, int(self.reverse))})

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        for i, row in enumerate(hidden):
            a, b = np.flatnonzero(row == vocab.SEP)[:2]
            text = row[a + 1 : b]
            marker = row[int(answer_mask[i].argmax()) - 2]
            out[i, answer_mask[i]] = text[::-1] if marker == vocab.REVERSE else text
        return out
