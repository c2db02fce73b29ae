"""Rotary math shared by the positional rules (models/pos/<rule>.py) and ``PosConfig``, the ``model.pos`` node.

A rule returns (inv_freq, attention_factor) for one rotary dimension. ``attention_factor`` multiplies
both cos and sin (as HF ``attention_scaling`` and YaRN ``mscale`` do), so logits scale by its square.
Rules that do not rotate (``none``; ``alibi`` adds a bias instead) return ``inv_freq=None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from models.pos import POS_RULES


def base_inv_freq(dim: int, base: float) -> torch.Tensor:
    """theta_i = base^(-2i/dim), i < dim/2, in float64 for exact comparisons."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def require_rotary_dim_above_2(rule: str, dim: int) -> None:
    """NTK-style rules raise the base to dim/(dim-2), undefined for a single rotary pair."""
    if dim <= 2:
        raise ValueError(f"rule {rule!r} needs rotary dim (head_dim * partial_rotary_factor) > 2, got {dim}")


def require_field(cfg: Any, name: str, allowed: str) -> None:
    """A rule's check: ``model.pos.<name>`` must be set."""
    if getattr(cfg, name) is None:
        raise ValueError(f"model.pos.{name}=None but rule {cfg.rule!r} needs it; allowed: {allowed}")


def rope_frequencies(
    rule: str, head_dim: int, base: float, partial_rotary_factor: float = 1.0, **params: object
) -> tuple[torch.Tensor | None, float]:
    """Inverse frequencies (float64, length rotary_dim/2) and the attention factor of ``rule``."""
    dim = int(head_dim * partial_rotary_factor)
    return POS_RULES.get(rule).frequencies(dim, base, **params)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Pairs channel i with i + dim/2 (the HF / litgpt layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (T, rot) or (B, 1, T, rot) with rot <= D (partial rotary)."""
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)


@dataclass
class PosConfig:
    """The positional rule and every parameter any rule reads (unused ones are ignored).

    Names follow transformers' ``rope_parameters`` so configs translate one to one; the yaml is
    conf/pos/<rule>.yaml (``pos=yarn``), or ``model.pos.rule=...`` on the command line.
    """

    rule: str = "rope"
    base: float = 10000.0  # rope_theta
    factor: float = 1.0  # context-extension scale s
    original_max_position_embeddings: Optional[int] = None  # L_orig (yarn, llama3, longrope)
    # L_max: dynamic_ntk's switch length; longrope's s = L_max / L_orig when factor is left at 1
    max_position_embeddings: Optional[int] = None
    partial_rotary_factor: float = 1.0
    # yarn
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    mscale: Optional[float] = None
    mscale_all_dim: Optional[float] = None
    attention_factor: Optional[float] = None
    # llama3
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # longrope
    short_factor: Optional[list[float]] = None
    long_factor: Optional[list[float]] = None

    def __post_init__(self) -> None:
        rule = POS_RULES.get(self.rule)
        if self.base <= 1.0:
            raise ValueError(f"model.pos.base={self.base} must be > 1")
        if self.factor < 1.0:
            raise ValueError(f"model.pos.factor={self.factor} must be >= 1 (an extension scale)")
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ValueError(f"model.pos.partial_rotary_factor={self.partial_rotary_factor} must be in (0, 1]")
        for name in ("original_max_position_embeddings", "max_position_embeddings"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"model.pos.{name}={value} must be None or an int >= 1")
        if self.attention_factor is not None and self.attention_factor <= 0:
            raise ValueError(f"model.pos.attention_factor={self.attention_factor} must be None or > 0")
        if rule.check is not None:
            rule.check(self)

    @property
    def name(self) -> str:
        """Label for results rows: the rule, and its factor when it has one."""
        if self.factor == 1.0 or not POS_RULES.get(self.rule).uses_factor:
            return self.rule
        return f"{self.rule}x{self.factor:g}"

    def params(self) -> dict:
        """Keyword arguments for ``rope_frequencies``."""
        return {k: v for k, v in vars(self).items() if k not in ("rule", "base")}
