"""RULER's needle-in-a-haystack in text (Hsieh et al. 2024): single, multi-key, multi-value, multi-query.

Needles ``One of the special magic numbers for {key} is: {value}.`` sit in a haystack; the question
asks for the values of ``queries`` of the ``keys`` keys:

    Some special magic numbers are hidden within the following text. Make sure to memorize it. I will
    quiz you about the numbers afterwards.
    The grass is green. ... One of the special magic numbers for shiny-otter is: 4817302. ... One of
    the special magic numbers for calm-tulip is: 9920417. ...
    What are all the special magic numbers for calm-tulip mentioned in the provided text? The special
    magic numbers for calm-tulip mentioned in the provided text are | 9920417

RULER's variants as knobs: single (keys=1), multi-key (keys=4: three distractor needles, only the
key tells them apart), multi-value (values=4: one key holds 4 numbers, all asked), multi-query
(keys=4, queries=2: two keys asked, answers ", "-joined in question order, each key's values in
context order). ``haystack``: ``noise`` (the repeated grass/sky/sun sentences) or ``text`` (a
random stretch of ``corpus``: the default CPython prose or any local text files, see tasks/corpus.py).

Lengths and depths are in tokens of the run's tokenizer: the target needle (the first asked key's
first value) is inserted ``round(depth * F)`` tokens into the F haystack tokens, the others at
random depths. Scored on tokens (``accuracy``) and on decoded text like RULER (``text_accuracy``:
every asked value occurs in the decoded answer; ``text_recall``: the share that does).

Chance floor (prompt-only shortcuts, ``shortcut_predictions``): copying the first, the last or a
random number of the prompt scores about queries/keys on the defaults (keys=4, queries=1: 0.25).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tasks.base import TaskArrays, register
from tasks.common import check_depth
from tasks.corpus import corpus_tokens
from tasks.text import TextTask, assemble, contains_all, numbers_in
from tasks.tokenizer import BYTES
from tasks.vocab import Vocab

HAYSTACKS = ("noise", "text")
INSTRUCTION = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
               "I will quiz you about the numbers afterwards.\n")
NEEDLE = " One of the special magic numbers for {key} is: {value}."
QUESTION = ("\nWhat are all the special magic numbers for {query} mentioned in the provided text? "
            "The special magic numbers for {query} mentioned in the provided text are")
ADJECTIVES = ("amber", "bold", "brave", "calm", "clever", "cosmic", "crisp", "dusty", "eager", "fancy", "gentle",
              "giant", "golden", "happy", "hidden", "humble", "icy", "jolly", "lazy", "lively", "lucky", "mellow",
              "misty", "noble", "odd", "pale", "proud", "quick", "quiet", "rapid", "rosy", "rusty", "shiny", "silent",
              "sleepy", "smooth", "solid", "swift", "tidy", "vivid")
NOUNS = ("anchor", "badger", "beacon", "canyon", "cedar", "comet", "coral", "crane", "delta", "ember", "falcon",
         "fjord", "garden", "glacier", "harbor", "heron", "island", "jaguar", "kettle", "lantern", "lemon", "meadow",
         "otter", "panda", "pebble", "pepper", "quartz", "raven", "river", "saddle", "salmon", "summit", "thistle",
         "tiger", "tulip", "valley", "walnut", "willow", "yak", "zephyr")
NEEDLE_RE = re.compile(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d+)\.")
QUESTION_RE = re.compile(r"What are all the special magic numbers for (.+?) mentioned in the provided text\?")
VALUE_DIGITS = 7


def join_keys(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def split_keys(query: str) -> list[str]:
    return [k for k in re.split(r", and |, ", query) if k]


@register
@dataclass
class TextNiah(TextTask):
    name: ClassVar[str] = "text_niah"
    has_depth: ClassVar[bool] = True
    train_len: int = 1024
    keys: int = 4  # needles with distinct keys (RULER num_needle_k); the rest are distractors
    values: int = 1  # numbers per key (RULER num_needle_v)
    queries: int = 1  # keys asked (RULER num_needle_q), <= keys
    haystack: str = "noise"  # noise | text
    corpus: str = "default"  # haystack=text: where the text comes from

    def __post_init__(self) -> None:
        if not 1 <= self.keys <= len(ADJECTIVES) * len(NOUNS):
            raise ValueError(f"task.keys={self.keys} must be in [1, {len(ADJECTIVES) * len(NOUNS)}]")
        if self.values < 1:
            raise ValueError(f"task.values={self.values} must be >= 1")
        if not 1 <= self.queries <= self.keys:
            raise ValueError(f"task.queries={self.queries} must be in [1, keys={self.keys}]")
        if self.haystack not in HAYSTACKS:
            raise ValueError(f"task.haystack={self.haystack!r}; allowed: {list(HAYSTACKS)}")
        super().__post_init__()

    @property
    def floor(self) -> float:
        """Exact match of copying one prompt number: right only if one value is asked and hit by chance."""
        return 1.0 / self.keys if self.queries == 1 and self.values == 1 else 0.0

    def min_length(self) -> int:
        key = "sleepy-glacier"  # among the longest keys; slack covers tokenizers that split others more
        widest = "9" * VALUE_DIGITS
        needle = len(self.encode(NEEDLE.format(key=key, value=widest)))
        question = len(self.encode(QUESTION.format(query=join_keys([key] * self.queries))))
        answer = len(self.encode(" " + ", ".join([widest] * self.queries * self.values)))
        m = self.keys * self.values
        slack = 4 * (m + self.queries) + 2 * VALUE_DIGITS * (m + self.queries * self.values)
        return len(self.encode(INSTRUCTION)) + m * needle + question + answer + slack

    def _haystack(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.haystack == "noise":
            return self.filler(size)
        stream = corpus_tokens(self.corpus, self.tokenizer or BYTES, "all")
        if len(stream) < size:
            raise ValueError(f"task.corpus={self.corpus!r} has {len(stream)} tokens, fewer than the {size} needed")
        start = int(rng.integers(0, len(stream) - size + 1))
        return stream[start : start + size]

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        check_depth(depth)
        k, v, q = self.keys, self.values, self.queries
        intro = self.encode(INSTRUCTION)
        rows, depths = [], np.empty(n)
        for i in range(n):
            combos = rng.choice(len(ADJECTIVES) * len(NOUNS), size=k, replace=False)
            names = [f"{ADJECTIVES[c // len(NOUNS)]}-{NOUNS[c % len(NOUNS)]}" for c in combos]
            numbers = rng.choice(9 * 10 ** (VALUE_DIGITS - 1), size=k * v, replace=False) + 10 ** (VALUE_DIGITS - 1)
            needle_depths = rng.random(k * v)  # needle j holds value j % v of key j // v
            if depth is not None:
                needle_depths[0] = float(depth)
            depths[i] = needle_depths[0]
            needles = [self.encode(NEEDLE.format(key=names[j // v], value=numbers[j])) for j in range(k * v)]
            order = np.argsort(needle_depths, kind="stable")  # context order of the needles
            asked = [[int(numbers[j]) for j in order if j // v == key] for key in range(q)]
            question = self.encode(QUESTION.format(query=join_keys(names[:q])))
            answer = self.encode(" " + ", ".join(str(x) for values in asked for x in values))
            f = length - len(intro) - sum(len(x) for x in needles) - len(question) - len(answer)
            if f < 0:
                raise ValueError(f"length={length} is too short for these draws (needs {length - f})")
            hay = self._haystack(rng, f)
            at = np.rint(needle_depths[order] * f).astype(np.int64)
            pieces, prev = [(intro, False)], 0
            for j, pos in zip(order, at):
                pieces += [(hay[prev:pos], False), (needles[j], False)]
                prev = pos
            pieces += [(hay[prev:], False), (question, False), (answer, True)]
            rows.append(pieces)
        tokens, mask = assemble(rows, length)
        slices = {"keys": np.full(n, k), "values": np.full(n, v), "queries": np.full(n, q),
                  "haystack": np.full(n, HAYSTACKS.index(self.haystack))}
        return TaskArrays(tokens, mask, depths, slices)

    def references(self, prompt: str) -> list[str]:
        """The asked values, read from a prompt: per asked key (question order), its values in context order."""
        found = NEEDLE_RE.findall(prompt)
        asked = QUESTION_RE.findall(prompt)
        keys = split_keys(asked[-1]) if asked else []
        return [value for key in keys for name, value in found if name == key]

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        for i, prompt in enumerate(self.prompt_text(hidden, answer_mask)):
            out[i, answer_mask[i]] = self.encode(" " + ", ".join(self.references(prompt)))
        return out

    def extra_metrics(self, vocab: Vocab, arrays: TaskArrays, predictions: np.ndarray) -> dict[str, float]:
        refs = [self.references(p) for p in self.prompt_text(arrays.tokens, arrays.answer_mask)]
        scores = [contains_all(said, r) for said, r in zip(self.answer_text(predictions, arrays.answer_mask), refs)]
        return {"text_accuracy": float(np.mean([s[0] for s in scores])),
                "text_recall": float(np.mean([s[1] for s in scores]))}

    def shortcut_predictions(self, arrays: TaskArrays, rng: np.random.Generator) -> dict[str, list[str]]:
        """Prompt-only baselines that never read the question: the first, last or a random needle's number."""
        prompts = self.prompt_text(arrays.tokens, arrays.answer_mask)
        values = [[v for _, v in NEEDLE_RE.findall(p)] or numbers_in(p) or [""] for p in prompts]
        return {"first_number": [" " + x[0] for x in values], "last_number": [" " + x[-1] for x in values],
                "random_number": [" " + x[int(rng.integers(len(x)))] for x in values]}
