"""A mixture of task families at one length: the pretraining data, or a multi-task evaluation cell.

``components`` maps a family name to its knob overrides (the knobs of ``conf/task/<family>.yaml``),
``weights`` (optional, by family) sets the share of examples; by default every family gets an
equal share. With components {niah: {}, counting: {max_count: 8}} and n=4 the rows might be

    row 0  counting:  h MARK h h MARK h ... COUNT ANSWER | values[2]
    row 1  niah:      h h NEEDLE k v1 v2 h ... QUERY k ANSWER | v1 v2
    row 2  niah:      ...
    row 3  counting:  ...

Each family generates its rows with its own generator (same length, same rng stream in turn); rows
are then shuffled. Slices are aligned: every family's slice columns, NaN on other families' rows,
plus ``family`` (name) and ``family_index`` (position in ``components``) to slice results by family.

The oracle tells families apart from the question alone (opener token, question and answer
lengths: each family's ``signatures()``); components whose signatures overlap are rejected.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Optional

import numpy as np

from tasks.base import TASKS, Task, TaskArrays, register
from tasks.common import check_depth, row_signature
from tasks.registry import suite_families
from tasks.vocab import Vocab


def split_counts(n: int, weights: np.ndarray) -> np.ndarray:
    """n split proportionally to weights; the remainder goes to the largest fractional parts."""
    share = n * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    extra = np.argsort(-(share - counts), kind="stable")[: n - counts.sum()]
    counts[extra] += 1
    return counts


@register
@dataclass
class Mix(Task):
    name: ClassVar[str] = "mix"
    has_depth: ClassVar[bool] = True  # the depth goes to the families that have one
    # family -> knob overrides; None: every family of the suite (suite_families()) with its defaults. (A dict default
    # would be merged into, never replaced, by an OmegaConf override, so None it is.)
    components: Optional[dict[str, dict[str, Any]]] = None
    weights: Optional[dict[str, float]] = None  # by family; None: equal shares

    def __post_init__(self) -> None:
        if self.components is None:
            self.components = {f: {} for f in suite_families()}
        if not self.components:
            raise ValueError("task.components is empty; allowed: None or a mapping family -> knob overrides")
        self.tasks: dict[str, Task] = {family: self._component(family, overrides)
                                       for family, overrides in self.components.items()}
        self._check_weights()
        self._owner = self._signature_owners()
        super().__post_init__()

    def _component(self, family: str, overrides: Optional[dict[str, Any]]) -> Task:
        """One family's task with its knob overrides (and the mix's train_len)."""
        if family not in TASKS or family == "mix":
            allowed = sorted(set(TASKS) - {"mix"})
            raise ValueError(f"task.components has family {family!r}; allowed: {allowed}")
        overrides = dict(overrides or {})
        known = {f.name for f in fields(TASKS.get(family))}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"task.components.{family} has unknown knobs {unknown}; allowed: {sorted(known)}")
        overrides.setdefault("train_len", self.train_len)
        try:
            task = TASKS.get(family)(**overrides)
        except ValueError as e:
            raise ValueError(f"task.components.{family}: {e}") from e
        if getattr(task, "train_queries", 1) != 1:  # rows are told apart by one question's shape
            raise ValueError(f"task.components.{family}.train_queries={overrides['train_queries']}; "
                             "allowed in a mix: 1 (mix tells rows apart by the shape of their one question)")
        return task

    def _check_weights(self) -> None:
        if self.weights is None:
            return
        self.weights = {k: float(v) for k, v in dict(self.weights).items()}
        if set(self.weights) != set(self.components) or min(self.weights.values()) < 0 \
                or sum(self.weights.values()) <= 0:
            raise ValueError(
                f"task.weights={self.weights} must give a weight >= 0 to each of {list(self.components)}"
                " (not all zero)"
            )

    def _signature_owners(self) -> dict[tuple[int, int, int], str]:
        """Which family asks each question shape; two families sharing one could not be told apart."""
        owner: dict[tuple[int, int, int], str] = {}
        for family, task in self.tasks.items():
            sigs = task.signatures()
            if not sigs:
                raise ValueError(f"task.components.{family}: no signatures() to tell its rows apart by")
            for sig in sigs:
                if sig in owner:
                    raise ValueError(
                        f"task.components: {owner[sig]!r} and {family!r} ask questions of the same shape"
                        f" {sig} (opener, question, answer lengths); change key_len/value_len of one"
                    )
                owner[sig] = family
        return owner

    def min_length(self) -> int:
        return max(t.min_length() for t in self.tasks.values())

    def check_vocab(self, vocab: Vocab) -> None:
        for family, task in self.tasks.items():
            try:
                task.check_vocab(vocab)
            except ValueError as e:
                raise ValueError(f"task.components.{family}: {e}") from e

    def signatures(self) -> set[tuple[int, int, int]]:
        return set(self._owner)

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        self.check_vocab(vocab)
        check_depth(depth)
        families = list(self.tasks)
        w = np.ones(len(families)) if self.weights is None else np.array([self.weights[f] for f in families])
        parts = []
        for family, count in zip(families, split_counts(n, w)):
            task = self.tasks[family]
            parts.append(task.generate(vocab, int(count), length, rng, depth if task.has_depth else None))
        keys = sorted({k for p in parts for k in p.slices})
        slices = {k: np.concatenate([p.slices[k].astype(np.float64) if k in p.slices
                                     else np.full(len(p.depth), np.nan) for p in parts]) for k in keys}
        index = np.concatenate([np.full(len(p.depth), j) for j, p in enumerate(parts)])
        slices["family_index"] = index
        slices["family"] = np.asarray(families)[index]
        perm = rng.permutation(n)  # interleave families
        tokens = np.concatenate([p.tokens for p in parts])[perm]
        answer_mask = np.concatenate([p.answer_mask for p in parts])[perm]
        depths = np.concatenate([p.depth for p in parts])[perm]
        inputs = None
        if any(p.inputs is not None for p in parts):  # MQAR rows read blanks; the others their tokens
            inputs = np.concatenate([p.tokens if p.inputs is None else p.inputs for p in parts])[perm]
        return TaskArrays(tokens, answer_mask, depths, {k: v[perm] for k, v in slices.items()}, inputs)

    def for_split(self, split: str) -> Mix:
        """Each component as generated for ``split`` (conflict evaluates on contradicting documents)."""
        out = copy.copy(self)
        out.tasks = {family: task.for_split(split) for family, task in self.tasks.items()}
        return out

    def chance_floor(self, vocab: Vocab, length: int) -> dict[str, float]:
        """The components' floors weighted by their shares of the rows."""
        families = list(self.tasks)
        w = np.ones(len(families)) if self.weights is None else np.array([self.weights[f] for f in families])
        floors = [self.tasks[f].chance_floor(vocab, length)["accuracy"] for f in families]
        return {"accuracy": float(np.dot(w / w.sum(), floors))}

    def family_of(self, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        """The family name of each row, read off its question."""
        return np.array([self._owner[row_signature(r, m)] for r, m in zip(hidden, answer_mask)])

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        out = hidden.copy()
        fam = self.family_of(hidden, answer_mask)
        for family, task in self.tasks.items():
            rows = np.flatnonzero(fam == family)
            if len(rows):
                out[rows] = task.oracle(vocab, hidden[rows], answer_mask[rows])
        return out

    def extra_metrics(self, vocab: Vocab, arrays: TaskArrays, predictions: np.ndarray) -> dict[str, float]:
        """Each family's own extra metrics on its rows, as ``family/metric``."""
        out: dict[str, float] = {}
        for family, task in self.tasks.items():
            rows = np.flatnonzero(arrays.slices["family"] == family)
            if not len(rows):
                continue
            sub = TaskArrays(arrays.tokens[rows], arrays.answer_mask[rows], arrays.depth[rows],
                             {k: v[rows] for k, v in arrays.slices.items()})
            metrics = task.extra_metrics(vocab, sub, predictions[rows])
            out.update({f"{family}/{k}": v for k, v in metrics.items()})
        return out
