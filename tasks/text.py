"""What the text tasks share: a tokenizer knob, row assembly from text pieces, decoded-text scoring.

A text task builds each example from pieces of text, each encoded by the run's tokenizer and
concatenated as token ids (so lengths and depths are exact in tokens of that tokenizer); filler
fills the row to exactly the requested length. Answers are token spans like every other task's,
and the task also scores them on decoded text (``text_accuracy``): with a subword tokenizer a
model may spell the right answer with other tokens.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from tasks.base import Task
from tasks.tokenizer import BYTES, Tokenizer, check_spec, load_tokenizer
from tasks.vocab import Vocab

# The filler of the LongLoRA / landmark-attention passkey test (and RULER's "noise" haystack).
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


@functools.lru_cache(maxsize=4096)
def _encode(spec: str, text: str) -> tuple[int, ...]:
    return tuple(load_tokenizer(spec).encode(text))


@dataclass
class TextTask(Task):
    """A task whose rows are tokenized text. ``tokenizer``: None = the run's ``tokenizer`` (default bytes)."""

    text_scored: ClassVar[bool] = True
    tokenizer: Optional[str] = None

    def __post_init__(self) -> None:
        if self.tokenizer is not None:
            check_spec(self.tokenizer, "task.tokenizer")
        super().__post_init__()

    @property
    def tok(self) -> Tokenizer:
        return load_tokenizer(self.tokenizer or BYTES)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(_encode(self.tokenizer or BYTES, text), dtype=np.int64)

    def decode(self, ids: np.ndarray) -> str:
        return self.tok.decode([int(i) for i in ids])

    def check_vocab(self, vocab: Vocab) -> None:
        n = self.tok.vocab_size
        if n > vocab.size:
            raise ValueError(f"tokenizer={self.tokenizer or BYTES!r} has {n} tokens but vocab_size={vocab.size}; "
                             f"allowed: vocab_size (and model.vocab_size) >= {n}")

    def filler(self, n_tokens: int, unit: str = NOISE) -> np.ndarray:
        """``n_tokens`` ids of ``unit`` repeated (space-separated), tiled in token space."""
        ids = self.encode(unit + " ")
        return np.resize(ids, n_tokens) if n_tokens > 0 else ids[:0]

    def prompt_text(self, hidden: np.ndarray, answer_mask: np.ndarray) -> list[str]:
        """Each row's prompt (everything before its first answer token), decoded."""
        first = answer_mask.argmax(axis=1)
        return [self.decode(row[:p]) for row, p in zip(hidden, first)]

    def answer_text(self, tokens: np.ndarray, answer_mask: np.ndarray) -> list[str]:
        return [self.decode(row[m]) for row, m in zip(tokens, answer_mask)]


def bind_tokenizer(task: Task, spec: str | None) -> None:
    """Give a text task the run's tokenizer unless the task names its own."""
    if isinstance(task, TextTask) and task.tokenizer is None and spec:
        check_spec(spec)
        task.tokenizer = spec


def assemble(rows: list[list[tuple[np.ndarray, bool]]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (ids, is_answer) pieces -> tokens (n, length) int64 and answer_mask (n, length)."""
    n = len(rows)
    tokens = np.zeros((n, length), dtype=np.int64)
    mask = np.zeros((n, length), dtype=bool)
    for i, pieces in enumerate(rows):
        at = 0
        for ids, is_answer in pieces:
            tokens[i, at : at + len(ids)] = ids
            mask[i, at : at + len(ids)] = is_answer
            at += len(ids)
        if at != length:
            raise ValueError(f"length={length}: example {i} needs {at} tokens with these knobs")
    return tokens, mask


def numbers_in(text: str) -> list[str]:
    return re.findall(r"\d+", text)


def contains_all(prediction: str, references: list[str]) -> tuple[bool, float]:
    """RULER's string match: whether every reference occurs in the prediction, and the share that does."""
    found = [r in prediction for r in references]
    return all(found), sum(found) / max(1, len(found))
