"""A checkpoint on Ctrl-C (SIGINT) and SIGTERM, so an interrupted run resumes where it stopped.

Lightning stops on SIGTERM at the end of a step (``SIGTERMException``); Ctrl-C would land anywhere,
possibly inside an optimiser step, so SIGINT only sets a flag here and the run stops at the end of
the current step. Either way ``checkpoints/last.ckpt`` is written before the process exits; a second
Ctrl-C interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnInterrupt(L.Callback):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.stop_requested = False
        self._previous: Any = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop_requested = True
        log.warning("Ctrl-C: stopping after this step and writing %s (Ctrl-C again to stop at once)", self.path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        log.info("training from step %d; Ctrl-C stops after the current step and writes %s",
                 trainer.global_step, self.path)

    def _restore(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.stop_requested:
            self._save(trainer)
            self._restore()
            raise KeyboardInterrupt  # Lightning's graceful shutdown; the process exits with status 1

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException):  # raised at a step boundary: the state is whole
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        log.warning("interrupted at step %d: wrote %s; the same command resumes from it",
                    trainer.global_step, self.path)
