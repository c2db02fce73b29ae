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

``haystack``: ``distractor`` (the default: the context is a row of needle-shaped records
NEEDLE k' v' whose first key token differs from every real needle's, so only the key tells the
needle apart), ``noise`` (uniform filler tokens) or ``filler`` (one fixed filler pattern repeated,
the "grass is green" essay). With ``distractor`` the context is cut into S = context // needle
record slots (the few spare tokens spread evenly between them as filler), every needle takes a
whole slot, and a needle at depth d sits in slot round(d * (S - needles)) + its rank: the target
is within half a record of the depth asked; ``TaskArrays.depth`` is the depth achieved.

Per depth cell (``cell_floor``): the depth is the target's slot, so where that slot is the first,
last or middle record a positional guess finds it (floor 1.0 in those cells; lost-in-the-middle
curves are positional by design).

Chance floor: ``distractor``: 1 / S (a prompt-only shortcut cannot tell the asked record from the
S - 1 others: same token kinds, same shape, same value distribution). ``noise``/``filler``:
1 / needles (the values are the only value tokens in the prompt; with one needle, copying them is
a perfect shortcut, which is why they are not the default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from tasks.base import Task, TaskArrays, register, sample_distinct, uniform_tokens
from tasks.common import block_starts, check_depth, draw_excluding, place_blocks
from tasks.vocab import Vocab

HAYSTACKS = ("noise", "filler", "distractor")  # slice codes are indices: keep the order
FILLER_PATTERN = 10  # period of the fixed "filler" haystack


@register
@dataclass
class Niah(Task):
    name: ClassVar[str] = "niah"
    suite_rank: ClassVar[int] = 10
    has_depth: ClassVar[bool] = True
    key_len: int = 1  # tokens per key
    value_len: int = 2  # tokens per value (the answer of one query)
    haystack: str = "distractor"  # distractor | noise | filler
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

    def slots(self, length: int) -> int:
        """Record slots of the distractor haystack at this length."""
        return (length - self.question_len - self.answer_len) // self.needle_len

    def slot_starts(self, length: int) -> np.ndarray:
        """Token offset of each record slot: slots spread evenly, spare tokens between them."""
        context = length - self.question_len - self.answer_len
        S, w = self.slots(length), self.needle_len
        return np.arange(S) * w + (np.arange(S) * (context - S * w)) // max(S - 1, 1)

    def depth_resolution(self, length: int) -> float:
        """How far the target's achieved depth may be from the depth asked: half a record, plus one
        record per other needle that may precede it."""
        if self.haystack != "distractor":
            return 1e-9
        context = length - self.question_len - self.answer_len
        S = self.slots(length)
        return ((self.needles - 0.5) / (S - 1) if S > 1 else 1.0) + 1.0 / max(context - self.needle_len, 1)

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        if self.haystack == "distractor":
            return {"accuracy": 1.0 / self.slots(length)}
        return {"accuracy": 1.0 / self.needles}

    def cell_floor(self, vocab: Vocab, length: int, depth: float | None) -> dict[str, float]:
        """With the distractor haystack the depth asked is the target's record slot (the NIAH axis):
        in the cells where that slot is the first, last or middle record a positional guess finds it,
        so the cell's floor is 1.0 there (rows carry the measured one, ``floor``)."""
        floor = self.chance_floor(vocab, length)
        if self.haystack != "distractor" or depth is None or self.needles != 1 or self.depths is not None:
            return floor
        S = self.slots(length)
        slot = int(np.rint(float(depth) * (S - 1)))
        return {"accuracy": 1.0} if slot in (0, S - 1, S // 2) else floor

    def _distractors(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                     first_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filler noise with S needle-shaped records NEEDLE k' v' at the slot starts."""
        S, kl, vl = self.slots(length), self.key_len, self.value_len
        tokens = uniform_tokens(rng, vocab.filler, (n, length))
        first = vocab.keys.start + draw_excluding(rng, len(vocab.keys), first_keys - vocab.keys.start, (n, S))
        rest = uniform_tokens(rng, vocab.keys, (n, S, kl - 1))
        vals = uniform_tokens(rng, vocab.values, (n, S, vl))
        rec = np.concatenate([np.full((n, S, 1), vocab.NEEDLE), first[:, :, None], rest, vals], axis=2)
        starts = np.broadcast_to(self.slot_starts(length), (n, S))
        place_blocks(tokens, starts, rec)
        return tokens, starts

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
        needle = np.concatenate([np.full((n, m, 1), vocab.NEEDLE), keys, values], axis=2)
        if self.haystack == "distractor":
            tokens, slot_start = self._distractors(vocab, n, length, rng, keys[:, :, 0])
            slot = block_starts(depths, self.slots(length), 1)  # (n, m) distinct slots
            starts = np.take_along_axis(slot_start, slot, axis=1)
            achieved = starts[:, 0] / max(context - self.needle_len, 1)
        else:
            tokens = noise if noise is not None else self._filler(vocab, n, length)
            starts = block_starts(depths, context, self.needle_len)
            achieved = depths[:, 0].copy()
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
        return TaskArrays(tokens, answer_mask, achieved, slices)

    def _filler(self, vocab: Vocab, n: int, length: int) -> np.ndarray:
        pattern = vocab.filler.start + np.arange(min(FILLER_PATTERN, len(vocab.filler)))
        return np.broadcast_to(np.resize(pattern, length), (n, length)).copy()

    def extra_metrics(self, vocab: Vocab, arrays: TaskArrays, predictions: np.ndarray) -> dict[str, float]:
        """achieved_depth: mean depth of the asked needle (the distractor haystack rounds to a slot)."""
        return {"achieved_depth": float(np.mean(arrays.depth))} if len(arrays.depth) else {}

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

    def _unique_records(self, tokens: np.ndarray, length: int, k: int) -> np.ndarray:
        """(n, k) starts of records with a key unique in their row, spread evenly over the context."""
        slot = self.slot_starts(length)
        kl = self.key_len
        out = np.empty((tokens.shape[0], k), dtype=np.int64)
        for i, row in enumerate(tokens):
            keys = [row[s + 1 : s + 1 + kl].tobytes() for s in slot]
            unique = [j for j, key in enumerate(keys) if keys.count(key) == 1]
            out[i] = slot[np.asarray(unique)[np.linspace(0, len(unique) - 1, k).round().astype(int)]]
        return out

    def questions(self, vocab: Vocab, arrays: TaskArrays, k: int) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
        """Prefix caching: k single-key questions about one context, ``QUERY key_j ANSWER`` -> value_j.

        Returns the context length C (the context is ``arrays.tokens[:, :C]``) and k pairs of
        (question (n, 2 + key_len), answer (n, value_len)) asking needles 0..k-1 in depth order.
        With the distractor haystack every record is a fact: the k asked are spread over the
        records whose key occurs once in the context (the needles always do, so there are >= k).
        """
        if k > self.needles:
            raise ValueError(f"eval.n_questions={k} exceeds task.needles={self.needles}; allowed: <= needles")
        n, length = arrays.tokens.shape
        context = length - self.question_len - self.answer_len
        if self.haystack == "distractor":
            starts = self._unique_records(arrays.tokens, length, k)
        else:
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
