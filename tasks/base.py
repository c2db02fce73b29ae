"""What every task shares: the example arrays, the registry, seeds, and the derived views.

A task is a dataclass of knobs with ``generate(vocab, n, length, rng, depth) -> TaskArrays`` and
``oracle(vocab, hidden, answer_mask) -> predictions``. Everything else — training inputs and
labels, prompt/answer split, seeds, caching — is derived here once for all tasks.

The canonical example is one token row ``tokens`` (length L, exactly the requested length) and a
boolean ``answer_mask`` marking the answer tokens. Derived views:
  input_ids = tokens, labels[t] = tokens[t+1] where answer_mask[t+1] else -100 (last: -100)
  prompt_ids = tokens[:first answer], answer_ids = tokens[answer_mask]

A task whose later questions must not see earlier answers (MQAR, the zoology layout) also gives
``inputs``: the row the model reads, equal to ``tokens`` except that answer slots hold a blank.
Labels still come from ``tokens``; evaluation then feeds the blanks, never the predictions.

Every family states its chance floor (``chance_floor``): the exact match a prompt-only shortcut
can reach on that configuration (``tasks/baselines.py`` tries them; a default-suite test holds
each under its floor). ``for_split`` lets a task evaluate on a different distribution than it
trains on (conflict: contradicting documents only at test time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np

from tasks.registry import TASKS, register  # noqa: F401  (families import both from here)
from tasks.vocab import Vocab

IGNORE = -100
SPLIT_OFFSETS = {"train": 0, "val": 2**31, "test": 2**31 + 2**30}  # disjoint seed ranges
MAX_SEED = 2**30


@dataclass
class TaskArrays:
    tokens: np.ndarray  # int64 (n, L)
    answer_mask: np.ndarray  # bool (n, L)
    depth: np.ndarray  # float64 (n,), NaN where the task has no depth
    slices: dict[str, np.ndarray] = field(default_factory=dict)  # per-example knob values
    inputs: np.ndarray | None = None  # what the model reads where it differs from tokens (blank answers)

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        assert self.answer_mask.shape == self.tokens.shape, "answer_mask must match tokens"
        assert self.inputs is None or self.inputs.shape == self.tokens.shape, "inputs must match tokens"
        assert self.depth.shape == (n,), "depth must be (n,)"
        assert not self.answer_mask[:, 0].any(), "the first token cannot be an answer"


@dataclass
class Task:
    """Base of every task config. ``train_len`` is the training sequence length."""

    name: ClassVar[str] = "base"
    has_depth: ClassVar[bool] = False  # whether depth is a knob (NIAH-like) or NaN
    # Place in the synthetic suite (task=mix's default components, eval=ruler's tasks); None: not in it.
    # The rank fixes the order a default mix draws its rows in, so a new family takes a new, higher rank.
    suite_rank: ClassVar[Optional[int]] = None
    has_oracle: ClassVar[bool] = True  # False only where no prompt-only answer exists (language modelling)
    train_len: int = 128

    def __post_init__(self) -> None:
        self.check_length(self.train_len, "task.train_len")

    def min_length(self) -> int:
        """The shortest length this configuration fits in."""
        return 2

    def check_length(self, length: int, field_name: str) -> None:
        if length < self.min_length():
            raise ValueError(
                f"{field_name}={length} is too short for task {self.name!r} with these knobs; "
                f"allowed: >= {self.min_length()}"
            )

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        raise NotImplementedError

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        """Predict every answer token from the prompt alone (answers hidden as PAD)."""
        raise NotImplementedError

    def check_vocab(self, vocab: Vocab) -> None:
        """Raise if the vocabulary is too small for these knobs."""

    def for_split(self, split: str) -> Task:
        """The task as generated for ``split`` (train, val, test); most families are split-blind."""
        return self

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        """The best exact match (``accuracy``; and ``token_accuracy`` where stated) a prompt-only
        shortcut can reach on the test split at this length: the family's docstring says why."""
        raise NotImplementedError(f"task {self.name!r} states no chance floor")

    def cell_floor(self, vocab: Vocab, length: int, depth: float | None) -> dict[str, float]:
        """The stated floor of one (length, depth) cell of the evaluation grid: ``chance_floor``,
        unless the depth asked pins the target where a positional guess (first, last, middle record)
        finds it; a family whose depth is the target's position says so here."""
        return self.chance_floor(vocab, length)

    def extra_metrics(self, vocab: Vocab, arrays: TaskArrays, predictions: np.ndarray) -> dict[str, float]:
        """Task-specific metrics for one evaluation cell (predictions: (n, L), valid at answers)."""
        return {}

    def signatures(self) -> set[tuple[int, int, int]]:
        """The shapes of this configuration's questions: ``(opener, tokens between opener and ANSWER,
        answer tokens)``, as ``tasks.common.row_signature`` reads them off a row with hidden answers.

        ``task=mix`` tells its families' rows apart by these (so two mixed families must not share one),
        and evaluation feeds the question from its opener on token by token. Every family that joins
        the suite (``suite_rank``) must state them; the default (none) keeps a family out of mixes.
        """
        return set()

    def shortcuts(self) -> dict[str, Callable[..., np.ndarray]]:
        """Family-specific prompt-only shortcut baselines by name, beside the generic ones of
        ``tasks/baselines.py`` (each ``(task, vocab, hidden, answer_mask, prior) -> predictions``)."""
        return {}


def split_seed(split: str, seed: int) -> int:
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split={split!r}; allowed: {sorted(SPLIT_OFFSETS)}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed={seed} must be in [0, {MAX_SEED})")
    return SPLIT_OFFSETS[split] + seed


def make_rng(split: str, seed: int, task: str, length: int, depth: float | None) -> np.random.Generator:
    """One independent stream per (split seed, task, length, depth) cell."""
    depth_code = 0 if depth is None else 1 + int(round(depth * 1_000_000))
    task_code = int.from_bytes(task.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng(np.random.SeedSequence([split_seed(split, seed), task_code, length, depth_code]))


def hide_answers(tokens: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
    """What an oracle (or a model) may see: the answers replaced by PAD."""
    return np.where(answer_mask, Vocab.PAD, tokens)


def training_views(tokens: np.ndarray, answer_mask: np.ndarray,
                   inputs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (the whole row: exactly L tokens) and next-token labels aligned with them.

    labels[t] = tokens[t + 1] where that token is an answer, else -100; the last position has no
    next token. Keeping all L tokens as input makes the training length exactly ``train_len``.
    ``inputs`` (blank answer slots, see the module docstring) replaces tokens as the model input.
    """
    labels = np.full(tokens.shape, IGNORE, dtype=np.int64)
    labels[:, :-1] = np.where(answer_mask[:, 1:], tokens[:, 1:], IGNORE)
    return (tokens if inputs is None else inputs), labels


def prompt_length(answer_mask: np.ndarray) -> np.ndarray:
    """Index of the first answer token per example: the prompt is everything before it."""
    return answer_mask.argmax(axis=1)


def prompt_and_answer(tokens: np.ndarray, answer_mask: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Example i's ``prompt_ids`` and ``answer_ids``."""
    p = int(prompt_length(answer_mask[i : i + 1])[0])
    return tokens[i, :p], tokens[i][answer_mask[i]]


def sample_distinct(rng: np.random.Generator, n: int, pool: range, k: int) -> np.ndarray:
    """(n, k) tokens from ``pool``, distinct within each row (vectorised, no Python loop)."""
    if k > len(pool):
        raise ValueError(f"cannot draw {k} distinct tokens from a range of {len(pool)}")
    return pool.start + rng.random((n, len(pool))).argsort(axis=1)[:, :k]


def uniform_tokens(rng: np.random.Generator, pool: range, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(pool.start, pool.stop, size=shape, dtype=np.int64)
