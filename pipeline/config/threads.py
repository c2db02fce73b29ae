"""``trainer.threads``: how many CPU threads torch's intra-op pool uses in this process.

torch defaults to one thread per core it can see. On a shared or loaded machine that oversubscribes:
with one other process busy on one of 2 cores, 200 steps of the default job took 136 s wall with
torch's 2 threads and 41 s with 1 (issue 33), because a thread that waits for a busy core stalls
every parallel op. ``auto`` therefore counts the cores actually free (the cores this process may run
on, minus the 1-minute load average, capped by a cgroup CPU quota), divides them among the processes
of a CPU data-parallel run, and uses one thread per job inside a multirun sweep (its jobs may run side
by side under a parallel launcher). ``OMP_NUM_THREADS`` set in the environment is the user's choice
and wins over ``auto``; an integer wins over both. The number used is recorded in ``run.json`` and in
every row (``threads``), since it changes speed (tokens/s, step times), never results.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from pipeline.config.schema import ConfigError

log = logging.getLogger(__name__)
AUTO = "auto"


def usable_cores() -> float:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 quota (containers)."""
    cores = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cores


def free_cores() -> int:
    """Usable cores not already busy (1-minute load average), at least 1."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, math.floor(usable_cores() - load + 0.5))


def in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError):
        return False


def processes_per_machine(trainer: Any) -> int:
    """CPU data parallel runs ``trainer.devices`` processes here, each with its own thread pool."""
    trainer = trainer or {}
    devices = trainer.get("devices", 1)
    if str(trainer.get("accelerator", "cpu")) == "cpu" and isinstance(devices, int) and devices > 1:
        return devices
    return 1


def check_threads(value: Any) -> None:
    if value != AUTO and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigError(f"trainer.threads={value!r}; allowed: {AUTO!r} (from the cores free now; 1 per job "
                          f"in a multirun sweep) or an integer >= 1")


def resolve_threads(trainer: Any) -> tuple[int, str]:
    """(threads, why) for ``trainer.threads``: ``auto`` or an integer >= 1."""
    value = (trainer or {}).get("threads", AUTO)
    check_threads(value)
    if value != AUTO:
        return value, "trainer.threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    if in_multirun():
        return 1, "auto: one per job in a multirun sweep"
    free = free_cores()
    procs = processes_per_machine(trainer)
    return max(1, free // procs), f"auto: {free} of {usable_cores():g} cores free" + (
        f", {procs} processes" if procs > 1 else "")


def apply_threads(trainer: Any) -> int:
    """Set torch's intra-op threads from ``trainer.threads`` before any work; return the number."""
    threads, why = resolve_threads(trainer)
    torch.set_num_threads(threads)
    log.info("threads: %d (%s)", threads, why)
    return threads
