"""Positional rules, one module each (``models/pos/<rule>.py``), found by package discovery.

A rule is a ``PosRule``: a function ``(dim, base, **PosConfig params) -> (inv_freq, attention_factor)``
plus what the positional module needs to know about it (does it rotate, do its frequencies depend on
the sequence length, does it add a per-head linear distance bias). ``@pos_rule("name", ...)`` on the
function registers it; ``POS_RULES.get(name)`` looks one up. Two modules here are not rules (discovery
skips them): ``base.py`` (the rotary math the rules share and ``PosConfig``, the ``model.pos`` node) and
``positional.py`` (the module a transformer owns, which applies a rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch

from registries import Registry

Frequencies = Callable[..., tuple[Optional[torch.Tensor], float]]


@dataclass(frozen=True)
class PosRule:
    """One positional rule and its traits.

    frequencies: (dim, base, **params) -> (inv_freq (dim/2,) float64 or None, attention_factor);
    length_dependent: frequencies are recomputed from the current sequence length;
    rotary: False for rules that do not rotate q/k (NoPE, ALiBi);
    uses_factor: the rule reads ``factor`` (the row label shows it);
    check: extra validation of a ``PosConfig`` naming this rule (missing or incompatible fields);
    slopes: n_heads -> (H,) slopes of an additive -slope * distance bias (ALiBi), or None.
    """

    name: str
    frequencies: Frequencies
    length_dependent: bool = False
    rotary: bool = True
    uses_factor: bool = True
    check: Optional[Callable[[Any], None]] = None
    slopes: Optional[Callable[[int], torch.Tensor]] = None


POS_RULES: Registry[PosRule] = Registry("rule", "model.pos.rule", package="models.pos", skip=("base", "positional"))


def pos_rule(name: str, **traits: Any) -> Callable[[Frequencies], Frequencies]:
    """Decorator: register ``fn`` as the frequencies of rule ``name`` with ``traits`` (PosRule fields)."""

    def wrap(fn: Frequencies) -> Frequencies:
        POS_RULES.register(name)(PosRule(name, fn, **traits))
        return fn

    return wrap
