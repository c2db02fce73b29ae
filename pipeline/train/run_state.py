"""What a run directory holds about its own run: a lock, and the config it was started with.

A named run (``run_id=NAME``) resumes when its command is run again, so two things must hold:
only one process works in a run directory at a time (``RunLock``), and the same run_id with a
different config stops with the differing fields named (``claim_run_config``) instead of resuming
a checkpoint under a config that no longer describes it. ``resume=force`` continues anyway and
records the new config.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from pipeline.config.config_hash import hashed_config
from pipeline.config.schema import ConfigError
from pipeline.train.checkpoint import atomic_write
from registries import plugin_modules

ROWS_FILE = "results.jsonl"  # a run dir's results rows (JSON lines)

log = logging.getLogger(__name__)
LOCK_FILE = ".run.lock"
OWNER_FILE = ".run.owner"
RECORD_FILE = "run.json"


class RunInUseError(RuntimeError):
    """Another process holds this run directory."""

    foreign_run_dir = True  # pipeline.failures writes no error row into a run that is not ours


class RunConfigMismatch(ConfigError):
    """The run directory belongs to a run with another config."""

    foreign_run_dir = True


def is_launcher_rank() -> bool:
    """True in the process that owns the run (rank 0; DDP/SLURM workers share its directory)."""
    return (rank_zero_only.rank or 0) == 0


class RunLock:
    """An exclusive lock on a run directory, released by the OS when the process dies (even kill -9)."""

    def __init__(self, run_dir: str | Path, run_id: str | None = None) -> None:
        self.run_dir, self.run_id = Path(run_dir), run_id
        self._lock = FileLock(str(self.run_dir / LOCK_FILE), timeout=0)

    def __enter__(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            owner = ""
            try:
                owner = " (" + (self.run_dir / OWNER_FILE).read_text().strip() + ")"
            except OSError:
                pass
            name = f"run_id={self.run_id!r}" if self.run_id else "this run"
            raise RunInUseError(
                f"{name} is in use by another process{owner}: {self.run_dir} is locked. Wait for it to "
                f"finish, or choose another run_id") from None
        (self.run_dir / OWNER_FILE).write_text(
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            (self.run_dir / OWNER_FILE).unlink()
        except OSError:
            pass
        self._lock.release()


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``field: old -> new`` for every dotted field whose value differs (absent shown as <unset>)."""
    a, b = _flat(old), _flat(new)
    unset = "<unset>"
    return [f"{k}: {a.get(k, unset)!r} -> {b.get(k, unset)!r}" for k in sorted(set(a) | set(b))
            if a.get(k, unset) != b.get(k, unset)]


def claim_run_config(cfg: DictConfig, run_dir: str | Path, config_hash: str) -> None:
    """Record this run's config in ``run_dir/run.json``, or stop if the directory holds another config."""
    run_dir = Path(run_dir)
    record_path = run_dir / RECORD_FILE
    current = hashed_config(cfg)
    mode = str(cfg.get("resume", "auto"))
    record: dict[str, Any] = {}
    if record_path.exists():
        try:
            record = json.loads(record_path.read_text())
        except ValueError as err:
            raise ConfigError(f"{record_path} is unreadable ({err}); it records which config this run "
                              f"belongs to. Delete it only if you know the run's config") from None
    if record and record.get("config_hash") != config_hash:
        diffs = config_differences(record.get("config", {}), current) or ["(fields equal; hash scheme changed)"]
        name = f"run_id={cfg.get('run_id')!r}" if cfg.get("run_id") else f"run_dir={str(run_dir)!r}"
        if mode != "force":
            raise RunConfigMismatch(
                f"{name} was started with a different config, so resuming it would change what it means. "
                f"Differing fields: {'; '.join(diffs)}. Use another run_id, or resume=force to continue this run "
                f"under the new config")
        log.warning("resume=force: continuing %s under a changed config: %s", name, "; ".join(diffs))
    threads = torch.get_num_threads()  # how it ran (trainer.threads), outside the config hash
    if record.get("config_hash") == config_hash:
        changed = False
        if record.get("plugins", []) != plugin_modules():  # the same config, other code loaded: say so
            record["plugins"], changed = plugin_modules(), True
        if record.get("threads") != threads:
            record["threads"], changed = threads, True
        if changed:
            atomic_write(record_path, lambda f: f.write(json.dumps(record, indent=1, default=str).encode()))
        return
    history = record.get("history", []) + ([{k: record[k] for k in ("config_hash", "config")}] if record else [])
    new = {"run_id": cfg.get("run_id"), "config_hash": config_hash, "config": current, "threads": threads,
           "history": history, "plugins": plugin_modules()}  # $LONGCTX_PLUGINS: modules whose code ran in this run
    atomic_write(record_path, lambda f: f.write(json.dumps(new, indent=1, default=str).encode()))
