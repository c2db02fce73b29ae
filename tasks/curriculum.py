"""A curriculum's first phase: another task family whose rows train the first optimizer steps.

Why: a 2-layer transformer forms its lookup circuit within ~500 steps on MQAR, whose pairs sit at
the start of the sequence, but not within 10000 steps on NIAH, kv_retrieval or multikey, whose
records sit at random depths (nor on MQAR with the pairs shifted by a random filler prefix, which
stays at chance). Once formed on MQAR the circuit is position-free (shifted MQAR: 1.000) and, at
d_model 128 (not at 64), NIAH / kv_retrieval reach >= 0.97 exact match within ~250 further steps
(issue 12, docs/reproductions.md).
The warm-up family is built with its own defaults at the task's training length, so only its name
and the share of the optimizer steps it takes are knobs (``data.curriculum_task``,
``data.curriculum_share``: the first floor(share x max_steps) steps; a share, not a count, so a
one-step smoke run of a recipe simply has no first phase). Each phase gets its own lr warmup and
cosine (pipeline/train/module.py): the second phase starting at a low, annealed lr did not transfer.
"""

from __future__ import annotations

from typing import Optional

from tasks.base import Task
from tasks.registry import TASKS
from tasks.vocab import Vocab


def curriculum_task(name: Optional[str], task: Task, vocab: Vocab) -> Optional[Task]:
    """The warm-up family ``name`` at ``task.train_len`` (None: no curriculum), checked to fit."""
    if name is None:
        return None
    family = TASKS.get(name, field="data.curriculum_task")
    try:
        warm = family(train_len=task.train_len)
        warm.check_vocab(vocab)
    except ValueError as err:
        raise ValueError(f"data.curriculum_task={name!r} at task.train_len={task.train_len}: {err}") from None
    return warm


def curriculum_steps(share: float, total_steps: int) -> int:
    """The first phase's optimizer steps: floor(share x total), and none where that leaves the task none."""
    first = int(share * total_steps)
    return first if 0 < first < total_steps else 0
