"""``trainer.compile``: the training and validation forward through ``torch.compile``, and its clock.

What is compiled is the model's ``hidden_states`` (the whole stack up to the last norm), as a bound
method: the module itself stays the plain ``nn.Module``, so checkpoints, resume, LoRA adapters,
activation checkpointing and exports see the same parameter names as an eager run. The answer-only head
(``hidden[keep]``: a data-dependent number of rows) and the loss stay eager, since a data-dependent
shape would recompile per batch. Decoding through a cache (evaluation) stays eager: one-token steps
are dominated by Python overhead that a graph per cache length would not remove.

Compile time: dynamo reports the start and end of every compilation it does (a new frame, the
backward compiled lazily at the first backward, a recompile for a new shape or grad mode), and
``CompileClock`` sums them. ``TrainCostProbe`` leaves steps that compiled out of ``train_step_s`` and
records the sum as ``compile_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch

_lock = threading.Lock()
_state = {"seconds": 0.0, "started": None, "count": 0}


def _on_start(*_args: Any) -> None:
    with _lock:
        _state["started"] = time.perf_counter()


def _on_end(*_args: Any) -> None:
    with _lock:
        if _state["started"] is not None:
            _state["seconds"] += time.perf_counter() - _state["started"]
            _state["started"] = None
            _state["count"] += 1


def compile_seconds() -> float:
    """Seconds this process has spent compiling with ``torch.compile`` since the clock was started."""
    with _lock:
        return _state["seconds"]


def compile_count() -> int:
    """Compilations (frames, lazy backwards, recompiles) this process has done since the clock was started."""
    with _lock:
        return _state["count"]


def start_compile_clock() -> None:
    """Register the dynamo callbacks, once (``torch._dynamo.reset()`` clears them: then again)."""
    from torch._dynamo.callback import callback_handler

    with _lock:
        if _on_start not in callback_handler.start_callbacks:
            callback_handler.register_start_callback(_on_start)
        if _on_end not in callback_handler.end_callbacks:
            callback_handler.register_end_callback(_on_end)


def compiled(fn: Callable[..., torch.Tensor], backend: str) -> Callable[..., torch.Tensor]:
    """``fn`` (a model's ``hidden_states``, or the model) compiled with ``backend``: one graph per shape
    and grad mode.

    ``dynamic=False``: the training length is fixed, so shapes are static; a smaller last batch or the
    validation batch recompiles once (counted in ``compile_s``) rather than making every dim symbolic.
    """
    start_compile_clock()
    return torch.compile(fn, backend=backend, dynamic=False)
