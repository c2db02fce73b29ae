"""Checkpoints: loaded with ``weights_only=True`` (no arbitrary pickle), with clear errors.

A Lightning checkpoint holds ``state_dict`` (keys prefixed ``model.``), the resolved run
``config`` and the ``code_version``. A truncated file, or weights that do not match the model
built from the config, fail with a message naming the path or the mismatched tensors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.lora import LoraPlusConfig, apply_lora, has_lora, merge_lora
from models.registry import build_model


class CheckpointError(ValueError):
    pass


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt={str(path)!r} does not exist (or is not a file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"ckpt={str(path)!r} is truncated or corrupt and cannot be read: {err}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"ckpt={str(path)!r} has no 'state_dict': not a checkpoint of this project")
    return ckpt


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's own tensors (the LightningModule prefix ``model.`` removed)."""
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load; every missing, unexpected or mis-shaped tensor is named."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} in {source} vs {tuple(own[k].shape)} in the model"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from {source}: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"not in the model: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape mismatch: {shapes[:8]}")
        raise CheckpointError(f"{source} does not match the model config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_trained_model(ckpt: dict[str, Any], model_cfg: Any, lora: LoraPlusConfig,
                       source: str) -> tuple[nn.Module, torch.Tensor | None]:
    """The checkpoint's model with plain weights (LoRA adapters folded in), and its DuoAttention gates if any."""
    model = build_model(model_cfg)
    state = model_state(ckpt)
    gates = state.pop("duo_gates", None)  # a duo_gates checkpoint: gates are not model weights
    if any(".lora_A." in k for k in state):  # a LoRA(+) extension checkpoint: load adapters, then fold them
        apply_lora(model, dataclasses.replace(lora, enabled=True))
    load_weights(model, state, source=source)
    if has_lora(model):
        merge_lora(model)
    return model, gates
