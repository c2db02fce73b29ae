"""Needle in a haystack: key -> value needles hidden at chosen depths of a haystack.

Layout (key_len=1, value_len=2, one needle, the default), L tokens in all:

    h h h NEEDLE k v1 v2 h h ... h  QUERY k ANSWER | v1 v2
    <------------ context ----------><-- question --><answer>

The needle starts at round(depth * (context - needle)), so depth 0 is the first token and
depth 1 ends the needle at the end of the context. Labels are only on v1 v2.

With ``needles=3, queries=2`` (value_len=1) the first two needles are asked, answers concatenated:

    h NEEDLE k2 b h h NEEDLE k1 a h NEEDLE k3 c h  QUERY k1 k2 ANSWER | a b

Needle j sits at depth ``depths[j]`` (random when ``depths`` is None); the ``depth`` given to
``generate`` overrides the first (target) needle's depth. m needles never overlap: the one of rank r
by depth starts at round(d * (context - m * needle)) + r * needle (see ``common.block_starts``).

``haystack``: ``noise`` (uniform filler tokens), ``filler`` (one fixed filler pattern repeated, the
"grass is green" essay), ``distractor`` (the context tiled with needle-shaped records
NEEDLE k' v' whose first key token differs from every real needle's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from tasks.base import Task, TaskArrays, register, sample_distinct, uniform_tokens
from tasks.common import block_starts, check_depth, draw_excluding, place_blocks
from tasks.vocab import Vocab

HAYSTACKS = ("noise", "filler", "distractor")
FILLER_PATTERN = 10  # period of the fixed "filler" haystack


@register
@dataclass
class Niah(Task):
    name: ClassVar[str] = "niah"
    has_depth: ClassVar[bool] = True
    key_len: int = 1  # tokens per key
    value_len: int = 2  # tokens per value (the answer of one query)
    haystack: str = "noise"  # noise | filler | distractor
    needles: int = 1  # needles in the context
    queries: int = 1  # needles asked (the first ones), answers concatenated
    depths: Optional[list[float]] = None  # per-needle depth in [0, 1]; None: random

    def __post_init__(self) -> None:
        if self.key_len < 1:
            raise ValueError(f"task.key_len={self.key_len} must be >= 1")
        if self.value_len < 1:
            raise ValueError(f"task.value_len={self.value_len} must be >= 1")
        if self.haystack not in HAYSTACKS:
            raise ValueError(f"task.haystack={self.haystack!r}; allowed: {list(HAYSTACKS)}")
        if self.needles < 1:
            raise ValueError(f"task.needles={self.needles} must be >= 1")
        if not 1 <= self.queries <= self.needles:
            raise ValueError(f"task.queries={self.queries} must be in [1, needles={self.needles}]")
        if self.depths is not None:
            self.depths = [float(d) for d in self.depths]
            if len(self.depths) != self.needles or not all(0.0 <= d <= 1.0 for d in self.depths):
                raise ValueError(
                    f"task.depths={self.depths} must be None or {self.needles} (needles) values in [0, 1]"
                )
        super().__post_init__()

    @property
    def needle_len(self) -> int:
        return 1 + self.key_len + self.value_len

    @property
    def question_len(self) -> int:
        return 2 + self.queries * self.key_len

    @property
    def answer_len(self) -> int:
        return self.queries * self.value_len

    def min_length(self) -> int:
        return self.needles * self.needle_len + self.question_len + self.answer_len + 1

    def check_vocab(self, vocab: Vocab) -> None:
        # All key tokens of all needles are distinct, and distractor keys need a first token left over.
        spare = 1 if self.haystack == "distractor" else 0
        need = self.needles * self.key_len + spare
        if need > len(vocab.keys):
            raise ValueError(
                f"task.needles={self.needles} x key_len={self.key_len} needs {need} distinct keys;"
                f" vocab_size={vocab.size} has {len(vocab.keys)}"
            )

    def signatures(self) -> set[tuple[int, int, int]]:
        return {(Vocab.QUERY, self.queries * self.key_len, self.answer_len)}

    def _haystack(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                  first_keys: np.ndarray) -> np.ndarray:
        if self.haystack == "noise":
            return uniform_tokens(rng, vocab.filler, (n, length))
        if self.haystack == "filler":
            pattern = vocab.filler.start + np.arange(min(FILLER_PATTERN, len(vocab.filler)))
            return np.broadcast_to(np.resize(pattern, length), (n, length)).copy()
        # distractor: records NEEDLE k' v' tiled over the whole row (the needles overwrite some).
        w, reps = self.needle_len, -(-length // self.needle_len)
        nk = len(vocab.keys)
        first = vocab.keys.start + draw_excluding(rng, nk, first_keys - vocab.keys.start, (n, reps))
        rest = uniform_tokens(rng, vocab.keys, (n, reps, self.key_len - 1))
        vals = uniform_tokens(rng, vocab.values, (n, reps, self.value_len))
        rec = np.concatenate([np.full((n, reps, 1), vocab.NEEDLE), first[:, :, None], rest, vals], axis=2)
        return rec.reshape(n, reps * w)[:, :length].copy()

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_vocab(vocab)
        check_depth(depth)
        m, kl, vl = self.needles, self.key_len, self.value_len
        context = length - self.question_len - self.answer_len
        # Draw order matches the single-needle generator, so needles=1/noise streams are unchanged.
        noise = uniform_tokens(rng, vocab.filler, (n, length)) if self.haystack == "noise" else None
        keys = sample_distinct(rng, n, vocab.keys, m * kl).reshape(n, m, kl)
        values = uniform_tokens(rng, vocab.values, (n, m * vl)).reshape(n, m, vl)
        if self.depths is not None:
            depths = np.tile(np.asarray(self.depths, dtype=np.float64), (n, 1))
            if depth is not None:
                depths[:, 0] = float(depth)
        elif depth is None:
            depths = rng.random((n, m))
        else:
            depths = np.concatenate([np.full((n, 1), float(depth)), rng.random((n, m - 1))], axis=1)
        tokens = noise if noise is not None else self._haystack(vocab, n, length, rng, keys[:, :, 0])
        starts = block_starts(depths, context, self.needle_len)
        needle = np.concatenate([np.full((n, m, 1), vocab.NEEDLE), keys, values], axis=2)
        place_blocks(tokens, starts, needle)
        q = self.queries
        asked = keys[:, :q].reshape(n, q * kl)
        question = np.concatenate([np.full((n, 1), vocab.QUERY), asked, np.full((n, 1), vocab.ANSWER)], 1)
        tokens[:, context : context + self.question_len] = question
        tokens[:, length - self.answer_len :] = values[:, :q].reshape(n, q * vl)
        answer_mask = np.zeros((n, length), dtype=bool)
        answer_mask[:, length - self.answer_len :] = True
        slices = {"needles": np.full(n, m), "queries": np.full(n, q),
                  "haystack": np.full(n, HAYSTACKS.index(self.haystack))}
        return TaskArrays(tokens, answer_mask, depths[:, 0].copy(), slices)

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        kl, vl = self.key_len, self.value_len
        for i, row in enumerate(hidden):
            qpos = int(np.flatnonzero(row == vocab.QUERY)[-1])
            needles = np.flatnonzero(row[:qpos] == vocab.NEEDLE)
            answer = []
            for j in range(self.queries):
                key = row[qpos + 1 + j * kl : qpos + 1 + (j + 1) * kl]
                for s in needles:
                    if np.array_equal(row[s + 1 : s + 1 + kl], key):
                        answer.append(row[s + 1 + kl : s + 1 + kl + vl])
                        break
            out[i, answer_mask[i]] = np.concatenate(answer)
        return out

    def questions(self, vocab: Vocab, arrays: TaskArrays, k: int) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
        """Prefix caching: k single-key questions about one context, ``QUERY key_j ANSWER`` -> value_j.

        Returns the context length C (the context is ``arrays.tokens[:, :C]``) and k pairs of
        (question (n, 2 + key_len), answer (n, value_len)) asking needles 0..k-1 in depth order.
        """
        if self.haystack == "distractor":
            raise ValueError("task.haystack='distractor': prefix-cache questions need needles told apart "
                             "from the haystack; use noise or filler")
        if k > self.needles:
            raise ValueError(f"eval.n_questions={k} exceeds task.needles={self.needles}; allowed: <= needles")
        n, length = arrays.tokens.shape
        context = length - self.question_len - self.answer_len
        rows, cols = np.nonzero(arrays.tokens[:, :context] == vocab.NEEDLE)
        starts = cols.reshape(n, self.needles)  # row-major: each row's needles in position order
        kl, vl = self.key_len, self.value_len
        out = []
        for j in range(k):
            at = starts[:, j : j + 1] + 1 + np.arange(kl + vl)[None, :]  # (n, kl + vl)
            block = np.take_along_axis(arrays.tokens, at, axis=1)
            question = np.concatenate([np.full((n, 1), vocab.QUERY), block[:, :kl], np.full((n, 1), vocab.ANSWER)], 1)
            out.append((question, block[:, kl:]))
        return context, out
