"""Passkey retrieval (landmark attention, Mohtashami & Jaggi 2023; LongLoRA's evaluation): a number in filler text.

The prompt, in text (``\\n`` joins the parts, the filler repeats to fill the row exactly):

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize them.
    I will quiz you about the important information there.
    The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. The grass ...
    The pass key is 68203. Remember it. 68203 is the pass key.
    ... The sun is yellow. Here we go. There and back again.
    What is the pass key? The pass key is | 68203

Every part is encoded by the run's tokenizer and the ids concatenated, so ``length`` and ``depth``
are in tokens: the needle line starts ``round(depth * F)`` tokens into the F filler tokens (depth 0:
right after the instruction, 1: right before the question). The answer is `` 68203``; rows are also
scored on decoded text (``text_accuracy``: the passkey occurs in the decoded answer).

Chance floor: this is the published test as published: the filler holds no digits, so copying the
only number of the prompt solves it. It measures whether a model can reach a token at a distance,
not whether it can tell a needle from look-alikes (``text_niah`` with several keys does that).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tasks.base import TaskArrays, register
from tasks.common import check_depth
from tasks.text import TextTask, assemble, contains_all
from tasks.vocab import Vocab

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
               "I will quiz you about the important information there.\n")
NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\nWhat is the pass key? The pass key is"
ANSWER = " {key}"


@register
@dataclass
class Passkey(TextTask):
    name: ClassVar[str] = "passkey"
    has_depth: ClassVar[bool] = True
    train_len: int = 512
    digits: int = 5  # the passkey is uniform over the numbers with this many digits

    def __post_init__(self) -> None:
        if not 1 <= self.digits <= 18:
            raise ValueError(f"task.digits={self.digits} must be in [1, 18]")
        super().__post_init__()

    def _fixed(self) -> int:
        return len(self.encode(INSTRUCTION)) + len(self.encode(QUESTION))

    def min_length(self) -> int:
        widest = "9" * self.digits  # a token spans at least one character: at most one more token per digit
        slack = 3 * self.digits
        needle, answer = self.encode(NEEDLE.format(key=widest)), self.encode(ANSWER.format(key=widest))
        return self._fixed() + len(needle) + len(answer) + slack

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        check_depth(depth)
        lo = 10 ** (self.digits - 1) if self.digits > 1 else 0
        keys = rng.integers(lo, 10**self.digits, size=n)
        depths = np.full(n, float(depth)) if depth is not None else rng.random(n)
        intro, question = self.encode(INSTRUCTION), self.encode(QUESTION)
        rows = []
        for key, d in zip(keys, depths):
            needle, answer = self.encode(NEEDLE.format(key=key)), self.encode(ANSWER.format(key=key))
            f = length - len(intro) - len(needle) - len(question) - len(answer)
            filler = self.filler(f)
            at = int(np.rint(d * f))
            rows.append([(intro, False), (filler[:at], False), (needle, False), (filler[at:], False),
                         (question, False), (answer, True)])
        tokens, mask = assemble(rows, length)
        return TaskArrays(tokens, mask, depths, {"digits": np.full(n, self.digits)})

    def passkeys(self, prompts: list[str]) -> list[str]:
        keys = []
        for text in prompts:
            found = re.search(r"The pass key is (\d+)\. Remember it\.", text)
            keys.append(found.group(1) if found else "")
        return keys

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        for i, key in enumerate(self.passkeys(self.prompt_text(hidden, answer_mask))):
            out[i, answer_mask[i]] = self.encode(ANSWER.format(key=key))
        return out

    def extra_metrics(self, vocab: Vocab, arrays: TaskArrays, predictions: np.ndarray) -> dict[str, float]:
        keys = self.passkeys(self.prompt_text(arrays.tokens, arrays.answer_mask))
        said = self.answer_text(predictions, arrays.answer_mask)
        return {"text_accuracy": float(np.mean([contains_all(s, [k])[0] for s, k in zip(said, keys)]))}
