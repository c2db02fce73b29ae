"""``trainer``: Lightning Trainer arguments, each checked against the Trainer before any step."""

from __future__ import annotations

import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config.schema import ConfigError
from pipeline.config.threads import AUTO, check_threads

TRAINER_INTS = ("max_steps", "min_steps", "max_epochs", "min_epochs", "log_every_n_steps", "num_sanity_val_steps",
                "accumulate_grad_batches", "check_val_every_n_epoch", "num_nodes")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def activation_checkpointing(node: Any) -> bool:
    """``trainer.activation_checkpointing``: ours (per-block recompute in models/lm.py), not Lightning's."""
    value = (node or {}).get("activation_checkpointing", False)
    if not isinstance(value, bool):
        raise ConfigError(f"trainer.activation_checkpointing={value!r} must be true or false")
    return value


COMPILE_BACKENDS_HINT = "inductor (the default: generated C++/OpenMP on CPU, Triton on GPU), aot_eager (tracing only)"


def compile_settings(node: Any) -> tuple[bool, str]:
    """``trainer.compile`` (true/false) and ``trainer.compile_backend`` (a torch.compile backend name)."""
    node = node or {}
    enabled, backend = node.get("compile", False), node.get("compile_backend", "inductor")
    if not isinstance(enabled, bool):
        raise ConfigError(f"trainer.compile={enabled!r} must be true or false")
    if not isinstance(backend, str) or not backend:
        raise ConfigError(f"trainer.compile_backend={backend!r} must be a torch.compile backend name: "
                          f"{COMPILE_BACKENDS_HINT}")
    if enabled:
        from torch._dynamo import list_backends

        allowed = list_backends(exclude_tags=())
        if backend not in allowed:
            raise ConfigError(f"trainer.compile_backend={backend!r} is not a torch.compile backend here; "
                              f"allowed: {allowed}")
        if backend == "inductor" and str(node.get("accelerator", "cpu")) == "cpu" and not cxx_compiler():
            raise ConfigError("trainer.compile=true with inductor on CPU needs a C++ compiler (none of $CXX, g++, "
                              "clang++ found); allowed: install one, trainer.compile_backend=aot_eager (no code "
                              "generation), or trainer.compile=false")
    return enabled, backend


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would call on CPU (its own lookup order: $CXX, then g++ / clang++)."""
    import os
    import shutil

    found = (shutil.which(c) for c in (os.environ.get("CXX"), "g++", "clang++") if c)
    return next((path for path in found if path), None)


def available_accelerators() -> list[str]:
    """Accelerator names Lightning can use on this machine ('auto' always)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = {"auto"}
    for name in AcceleratorRegistry.available_accelerators():
        if AcceleratorRegistry[name]["accelerator"].is_available():
            names.add(name)
            if name in ("cuda", "mps"):
                names.add("gpu")
    return sorted(names)


def _check_val_interval(vci: Any) -> None:
    if vci is None:
        return
    if _is_int(vci):
        if vci < 1:
            raise ConfigError(f"trainer.val_check_interval={vci} must be >= 1 (training steps), or a "
                              "fraction of an epoch in (0, 1]")
    elif not (_is_number(vci) and 0 < vci <= 1):
        raise ConfigError(f"trainer.val_check_interval={vci!r}; allowed: an integer >= 1 (training steps) "
                          "or a fraction of an epoch in (0, 1]")


def check_trainer_values(kwargs: dict[str, Any]) -> None:
    for key in TRAINER_INTS:
        v = kwargs.get(key)
        if v is not None and not _is_int(v):
            raise ConfigError(f"trainer.{key}={v!r} has the wrong type; expected an integer")
    steps = kwargs.get("max_steps", -1)
    if steps is not None and steps != -1 and steps < 1:
        raise ConfigError(f"trainer.max_steps={steps} must be >= 1 (or -1 for epochs)")
    _check_val_interval(kwargs.get("val_check_interval"))
    clip = kwargs.get("gradient_clip_val")
    if clip is not None and not (_is_number(clip) and clip >= 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip!r} must be a number >= 0 (or null)")


def check_accelerator(node: Any) -> None:
    """The accelerator a training run asks for exists on this machine (eval.py picks its own device)."""
    accel = node.get("accelerator") if node is not None else None
    if isinstance(accel, str):
        allowed = available_accelerators()
        if accel not in allowed:
            raise ConfigError(f"trainer.accelerator={accel!r} is not available on this machine; "
                              f"allowed here: {allowed}")


def trainer_kwargs(node: Any) -> dict[str, Any]:
    """Lightning Trainer arguments, each name checked against the Trainer's signature.

    ``activation_checkpointing``, ``threads`` and ``compile``/``compile_backend`` are validated and left
    out: the model, the process (pipeline/config/threads.py) and the module (pipeline/train/compile.py)
    apply them, the Trainer never sees them.
    """
    import lightning as L

    kwargs = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    activation_checkpointing(kwargs)
    kwargs.pop("activation_checkpointing", None)
    check_threads(kwargs.pop("threads", AUTO))
    compile_settings(kwargs)
    kwargs.pop("compile", None)
    kwargs.pop("compile_backend", None)
    allowed = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(f"trainer.{key} is not a Lightning Trainer argument; allowed: {sorted(allowed)}")
    check_trainer_values(kwargs)
    return kwargs
