"""Training cost probe: mean step time and peak memory of one training step (fwd + bwd + optimizer).

Peak memory uses pipeline.train.memory (CUDA allocator stats on GPU, the allocation tracker on CPU) on
one chosen step; that step is excluded from the timing since the CPU tracker slows every op.
The measurements live in the checkpoint (callback state), so a resumed run still reports them.
Under ``trainer.compile`` a step during which torch.compile compiled (the first, a recompile) is not
timed either, and the seconds spent compiling over the fit are ``compile_s`` (pipeline/train/compile.py).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from pipeline.train.compile import compile_seconds
from pipeline.train.memory import AllocationTracker, module_bytes


class TrainCostProbe(L.Callback):
    def __init__(self, probe_step: int = 2, skip: int = 1, compiled: bool = False) -> None:
        self.probe_step, self.skip, self.compiled = probe_step, skip, compiled
        self.compile_s = 0.0  # seconds compiling in earlier sessions of a resumed run
        self._compile_clock = 0.0  # the process's compile clock when this session's fit started
        self._step_compile = 0.0  # ... when the current step started
        self.time_sum, self.time_count = 0.0, 0  # timed steps (over every session of a resumed run)
        self.peak_bytes: int | None = None
        self._t0 = 0.0
        self._probing = False
        self._tracker: AllocationTracker | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._compile_clock = compile_seconds()

    def compile_seconds(self) -> float:
        """Seconds compiling over the whole run (every session of a resumed one)."""
        return self.compile_s + compile_seconds() - self._compile_clock

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # >=: a run resumed past the probe step from a checkpoint without a measurement probes now
        self._probing = trainer.global_step >= self.probe_step and self.peak_bytes is None
        if self._probing:
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)
            else:
                self._tracker = AllocationTracker()
                self._tracker.__enter__()
        self._step_compile = compile_seconds()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._t0
        if not self._probing:
            if trainer.global_step > self.skip and compile_seconds() == self._step_compile:
                self.time_sum += elapsed
                self.time_count += 1
            return
        self._probing = False
        if self._tracker is None:
            self.peak_bytes = int(torch.cuda.max_memory_allocated(pl_module.device))
            return
        self._tracker.__exit__(None, None, None)
        # optimizer state persists across steps, so count it with the module's own tensors
        self.peak_bytes = module_bytes(pl_module) + optimizer_bytes(trainer) + self._tracker.peak
        self._tracker = None

    def state_dict(self) -> dict[str, Any]:
        return {"time_sum": self.time_sum, "time_count": self.time_count, "peak_bytes": self.peak_bytes,
                "compile_s": self.compile_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.time_sum = float(state_dict.get("time_sum", 0.0))
        self.time_count = int(state_dict.get("time_count", 0))
        self.peak_bytes = state_dict.get("peak_bytes")
        self.compile_s = float(state_dict.get("compile_s", 0.0))

    def summary(self) -> dict[str, Any]:
        return {"train_step_s": self.time_sum / self.time_count if self.time_count else None,
                "train_peak_mem_bytes": self.peak_bytes,
                "compile_s": round(self.compile_seconds(), 3) if self.compiled else None}


def optimizer_bytes(trainer: L.Trainer) -> int:
    total = 0
    for opt in trainer.optimizers:
        for state in opt.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


class TrainFitProbe(L.Callback):
    """How well the model fits its own training rows at the end: the mean training loss and exact match of
    the last ``window`` steps (rows: ``train_loss``, ``train_em``).

    A low held-out score says something about an architecture only if one knows whether the arm fitted
    its training data (scripts/arch_compare.py draws an arm below a threshold hollow, "unfitted"). Kept
    in the checkpoint, so a resumed run reports the same numbers.
    """

    def __init__(self, window: int = 50) -> None:
        self.window = window
        self.losses: list[float] = []
        self.exact: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        metrics = trainer.callback_metrics
        for key, kept in (("train/loss", self.losses), ("train/exact_match", self.exact)):
            if key in metrics:
                kept.append(float(metrics[key]))
                del kept[:-self.window]

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "exact": list(self.exact)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = [float(v) for v in state_dict.get("losses", [])]
        self.exact = [float(v) for v in state_dict.get("exact", [])]

    def summary(self) -> dict[str, Any]:
        mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
        return {"train_loss": mean(self.losses), "train_em": mean(self.exact)}
