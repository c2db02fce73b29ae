"""Token mixers, one module each (attention, mamba, ...), the unit a ``Block`` holds.

A mixer module registers a ``MixerSpec``: the config dataclass its layers read (a family config, or
a small one of its own), how to build one block, and optionally a one-letter hybrid shorthand. Every
mixer is an ``nn.Module`` with ``forward(x (B, T, d), layer_cache=None, start=0) -> (B, T, d)`` and
``new_layer_cache(batch_size, policy, layer_idx, n_layers) -> LayerCache``, so any list of mixer
names is a model (models/families/hybrid.py) and decodes through one ``ModelCache``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from torch import nn

from registries import Registry


@dataclass(frozen=True)
class MixerSpec:
    """name; config: the dataclass a layer is built from; build: (config, layer_idx, shared) -> Block,
    ``shared`` a dict the layers of one model share (the attention layers' positional module);
    init: (block, init_std) re-initialises a block the way its family does (None: the mixer's own);
    letter: the hybrid shorthand ("A" in layers="MMA")."""

    name: str
    config: type
    build: Callable[[Any, int, dict], nn.Module]
    init: Optional[Callable[[nn.Module, float], None]] = None
    letter: Optional[str] = None


MIXERS: Registry[MixerSpec] = Registry("mixer", "model.layers", package="models.mixers")


def mixer_config(spec: MixerSpec, model_cfg: Any, extra: Optional[dict[str, Any]] = None) -> Any:
    """``spec.config`` filled from the same-named fields of ``model_cfg`` (a hybrid's config), then ``extra``."""
    if isinstance(model_cfg, spec.config) and not extra:
        return model_cfg
    names = [f.name for f in dataclasses.fields(spec.config) if f.init and f.name != "family"]
    unknown = sorted(set(extra or {}) - set(names))
    if unknown:
        raise ValueError(f"model.mixer_args.{spec.name} has {unknown}, not knobs of mixer {spec.name!r}; "
                         f"allowed: {names}")
    fields = {n: getattr(model_cfg, n) for n in names if hasattr(model_cfg, n)}
    return spec.config(**{**fields, **(extra or {})})


def mixer_names(layers: Any) -> list[str]:
    """A schedule as mixer names: a list of names, or a string of hybrid letters ("MMA")."""
    if isinstance(layers, str):
        by_letter = {spec.letter: name for name, spec in MIXERS.items() if spec.letter}
        unknown = sorted(set(layers) - set(by_letter))
        if not layers or unknown:
            raise ValueError(f"model.layers={layers!r} must be a non-empty string of {sorted(by_letter)} "
                             f"({by_letter}) or a list of mixer names from {MIXERS.names()}")
        return [by_letter[c] for c in layers]
    names = list(layers)
    if not names:
        raise ValueError(f"model.layers=[] must name at least one mixer; allowed: {MIXERS.names()}")
    for name in names:
        MIXERS.get(name)
    return names
