"""Checkpoints: written atomically, loaded with ``weights_only=True`` (no arbitrary pickle), clear errors.

A Lightning checkpoint holds ``state_dict`` (keys prefixed ``model.``), the resolved run
``config`` and the ``code_version``. A truncated file, or weights that do not match the model
built from the config, fail with a message naming the path or the mismatched tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from models.lora import LoraPlusConfig, apply_lora, has_lora, merge_lora
from models.registry import build_model
from models.strict_load import mismatch_report, nonfinite_report

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    pass


def read_checkpoint(path: str | Path, field: str = "ckpt") -> dict[str, Any]:
    """Load a checkpoint safely; ``field`` is the config key that named it (ckpt, init_from)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{field}={str(path)!r} does not exist (or is not a file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{field}={str(path)!r} is truncated or corrupt and cannot be read: {err}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{field}={str(path)!r} has no 'state_dict': not a checkpoint of this project")
    return ckpt


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's own tensors (the LightningModule prefix ``model.`` removed)."""
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
                 allow_nonfinite: bool = False) -> None:
    """Strict load; every missing, unexpected or mis-shaped tensor is named, and so is every tensor holding
    NaN or inf (refused unless ``allow_nonfinite``: a diverged run's weights give rows that look measured)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} in {source} vs {tuple(own[k].shape)} in the model"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    report = mismatch_report(source, missing, unexpected, shapes)
    if report:
        raise CheckpointError(report)
    report = nonfinite_report(source, sorted(k for k, t in state.items()
                                             if t.is_floating_point() and not torch.isfinite(t).all()))
    if report and not allow_nonfinite:
        raise CheckpointError(report)
    model.load_state_dict(state, strict=True)


def load_trained_model(ckpt: dict[str, Any], model_cfg: Any, lora: LoraPlusConfig, source: str,
                       allow_nonfinite: bool = False) -> tuple[nn.Module, torch.Tensor | None]:
    """The checkpoint's model with plain weights (LoRA adapters folded in), and its DuoAttention gates if any."""
    model = build_model(model_cfg)
    state = model_state(ckpt)
    gates = state.pop("duo_gates", None)  # a duo_gates checkpoint: gates are not model weights
    if any(".lora_A." in k for k in state):  # a LoRA(+) extension checkpoint: load adapters, then fold them
        apply_lora(model, dataclasses.replace(lora, enabled=True))
    load_weights(model, state, source=source, allow_nonfinite=allow_nonfinite)
    if has_lora(model):
        merge_lora(model)
    return model, gates


# --- writing: atomic in the destination directory, the previous checkpoint kept ----------------

TMP_MARK = ".tmp-"  # temp files live beside their destination: ``.<name>.tmp-<random>``
PREVIOUS_SUFFIX = ".prev"


def previous_path(path: str | Path) -> Path:
    """``last.ckpt`` -> ``last.prev.ckpt``: the checkpoint before the newest, kept as a fallback."""
    path = Path(path)
    return path.with_name(path.stem + PREVIOUS_SUFFIX + path.suffix)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], keep_previous: bool = False) -> None:
    """Write ``path`` through a temp file beside it (same filesystem), fsync'd, then renamed over it.

    A kill, a full disk or any error leaves the old file untouched: a temp file in the same
    directory is renamed (atomic on POSIX), never copied across filesystems. With
    ``keep_previous`` the replaced file survives as ``previous_path(path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            _keep_previous(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _keep_previous(path: Path) -> None:
    prev = previous_path(path)
    link = prev.with_name(f".{prev.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
    try:  # a hard link keeps ``path`` in place until the new file replaces it
        os.link(path, link)
        os.replace(link, prev)
    except OSError:  # no hard links here: move it (resume falls back to prev in the gap)
        with contextlib.suppress(OSError):
            os.unlink(link)
        os.replace(path, prev)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete temp files of writes that a kill interrupted (call under the run lock)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.name.startswith(".") and TMP_MARK in p.name and p.is_file()]
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing through ``atomic_write`` and keeping the previous file.

    Lightning's own writer goes through a temp file in ``$TMPDIR`` and ``shutil.move``; across
    filesystems that move is a copy that first empties the destination, so a kill or a full disk
    during it loses both the new and the old checkpoint.
    """

    def __init__(self, keep_previous: bool = True) -> None:
        self.keep_previous = keep_previous

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_write(path, lambda f: torch.save(checkpoint, f), keep_previous=self.keep_previous)

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        prev = previous_path(path)
        if prev.exists():
            prev.unlink()


def resume_candidates(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run, newest first (temp files of interrupted writes excluded)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    files = [p for p in ckpt_dir.glob("*.ckpt") if p.is_file() and TMP_MARK not in p.name]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"), reverse=True)


def find_resume_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest loadable checkpoint of a run; unreadable newer ones are skipped with a warning.

    None when the run has no checkpoint; CheckpointError naming every file when none can be read.
    """
    candidates = resume_candidates(ckpt_dir)
    errors = []
    for path in candidates:
        try:
            read_checkpoint(path)
        except CheckpointError as err:
            errors.append(str(err)[:200])
            continue
        if errors:
            warnings.warn(f"resuming from {path}, the newest loadable checkpoint; skipped: " + "; ".join(errors),
                          stacklevel=2)
            log.warning("resuming from %s, the newest loadable checkpoint; skipped: %s", path, "; ".join(errors))
        return path
    if errors:
        raise CheckpointError(f"no checkpoint of this run can be resumed: {'; '.join(errors)}. Delete "
                              f"{Path(ckpt_dir)} to start the run over, or choose another run_id")
    return None
