"""Positional rules: each returns (inv_freq, attention_factor) for one head dimension.

A new rule is one function registered in ``RULES``. ``attention_factor`` multiplies both cos and
sin (as HF ``attention_scaling`` and YaRN ``mscale`` do), so logits scale by its square.
Rules that do not rotate (``none``; ``alibi`` adds a bias instead) return ``inv_freq=None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch

RopeRule = Callable[..., tuple["torch.Tensor | None", float]]
RULES: dict[str, RopeRule] = {}
# Rules whose frequencies depend on the current sequence length (recomputed per forward).
LENGTH_DEPENDENT: set[str] = set()
# Rules that do not rotate q/k at all.
NON_ROTARY: set[str] = set()


def register(name: str, *, length_dependent: bool = False, rotary: bool = True):
    def wrap(fn: RopeRule) -> RopeRule:
        RULES[name] = fn
        if length_dependent:
            LENGTH_DEPENDENT.add(name)
        if not rotary:
            NON_ROTARY.add(name)
        return fn

    return wrap


def base_inv_freq(dim: int, base: float) -> torch.Tensor:
    """theta_i = base^(-2i/dim), i < dim/2, in float64 for exact comparisons."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


@register("none", rotary=False)
def nope(dim: int, base: float, **_: object) -> tuple[None, float]:
    """NoPE: no positional signal beyond the causal mask."""
    return None, 1.0


@register("rope")
def rope(dim: int, base: float, **_: object) -> tuple[torch.Tensor, float]:
    return base_inv_freq(dim, base), 1.0


def _rotary_dim_above_2(rule: str, dim: int) -> None:
    # NTK-style rules raise the base to dim/(dim-2), undefined for a single rotary pair.
    if dim <= 2:
        raise ValueError(f"rule {rule!r} needs rotary dim (head_dim * partial_rotary_factor) > 2, got {dim}")


@register("linear")
def linear(dim: int, base: float, *, factor: float = 1.0, **_: object) -> tuple[torch.Tensor, float]:
    """Position interpolation (Chen et al. 2023): theta_i / s, i.e. positions squeezed by s."""
    return base_inv_freq(dim, base) / factor, 1.0


@register("ntk")
def ntk(dim: int, base: float, *, factor: float = 1.0, **_: object) -> tuple[torch.Tensor, float]:
    """Static NTK-aware scaling: base' = base * s^(dim/(dim-2)).

    The exponent makes the slowest pair exactly theta/s (interpolated) while the fastest is unchanged.
    """
    _rotary_dim_above_2("ntk", dim)
    return base_inv_freq(dim, base * factor ** (dim / (dim - 2))), 1.0


@register("dynamic_ntk", length_dependent=True)
def dynamic_ntk(
    dim: int,
    base: float,
    *,
    factor: float = 1.0,
    max_position_embeddings: Optional[int] = None,
    seq_len: Optional[int] = None,
    **_: object,
) -> tuple[torch.Tensor, float]:
    """Dynamic NTK (HF ``dynamic``): base' = base * (s L'/L_max - (s-1))^(dim/(dim-2)), L' = max(L, L_max).

    Up to L_max the bracket is 1, so it is plain RoPE there and switches back once under it.
    """
    _rotary_dim_above_2("dynamic_ntk", dim)
    if max_position_embeddings is None:
        raise ValueError("rule 'dynamic_ntk' needs max_position_embeddings (L_max, the trained length)")
    length = max(seq_len or max_position_embeddings, max_position_embeddings)
    scale = factor * length / max_position_embeddings - (factor - 1)
    return base_inv_freq(dim, base * scale ** (dim / (dim - 2))), 1.0


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's sqrt(1/t) = 0.1 * mscale * ln s + 1 (1 when not extending)."""
    return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_correction_range(
    dim: int, base: float, original_len: int, beta_fast: float, beta_slow: float, truncate: bool
) -> tuple[float, float]:
    """Pair indices [low, high] between which YaRN ramps from extrapolation to interpolation.

    c(r) is the pair whose wavelength fits r full turns into the original context.
    """

    def c(rotations: float) -> float:
        return dim * math.log(original_len / (2 * math.pi * rotations)) / (2 * math.log(base))

    low, high = c(beta_fast), c(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


@register("yarn")
def yarn(
    dim: int,
    base: float,
    *,
    factor: float = 1.0,
    original_max_position_embeddings: Optional[int] = None,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
    mscale: Optional[float] = None,
    mscale_all_dim: Optional[float] = None,
    attention_factor: Optional[float] = None,
    **_: object,
) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023): keep fast pairs, interpolate slow pairs by s, ramp in between.

    The ramp uses the *original* length (transformers >= 4.5x; 4.4x used the extended one).
    """
    if original_max_position_embeddings is None:
        raise ValueError("rule 'yarn' needs original_max_position_embeddings (L_orig)")
    theta = base_inv_freq(dim, base)
    original = original_max_position_embeddings
    low, high = yarn_correction_range(dim, base, original, beta_fast, beta_slow, truncate)
    if low == high:
        high += 0.001  # avoid 0/0 in the ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0.0, 1.0)
    inv_freq = (theta / factor) * ramp + theta * (1.0 - ramp)
    if attention_factor is None:
        if mscale is not None and mscale_all_dim is not None:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    return inv_freq, float(attention_factor)


@register("llama3")
def llama3(
    dim: int,
    base: float,
    *,
    factor: float = 1.0,
    original_max_position_embeddings: Optional[int] = None,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    **_: object,
) -> tuple[torch.Tensor, float]:
    """Llama 3.1: wavelengths beyond L_orig/low are divided by s, below L_orig/high kept, smoothed between."""
    if original_max_position_embeddings is None:
        raise ValueError("rule 'llama3' needs original_max_position_embeddings (L_orig)")
    theta = base_inv_freq(dim, base)
    wavelen = 2 * math.pi / theta
    ratio = original_max_position_embeddings / wavelen  # turns per original context
    smooth = ((ratio - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0.0, 1.0)
    # smooth is 0 in the low-frequency band (fully /s) and 1 in the high-frequency band (kept).
    return (1.0 - smooth) * theta / factor + smooth * theta, 1.0


def longrope_scale(
    factor: float, original_max_position_embeddings: int, max_position_embeddings: Optional[int]
) -> float:
    """s for LongRoPE's attention factor: ``factor`` when set, else L_max / L_orig (Phi-3 configs)."""
    if factor != 1.0 or max_position_embeddings is None:
        return factor
    return max_position_embeddings / original_max_position_embeddings


@register("longrope", length_dependent=True)
def longrope(
    dim: int,
    base: float,
    *,
    factor: float = 1.0,
    original_max_position_embeddings: Optional[int] = None,
    max_position_embeddings: Optional[int] = None,
    short_factor: Optional[list[float]] = None,
    long_factor: Optional[list[float]] = None,
    attention_factor: Optional[float] = None,
    seq_len: Optional[int] = None,
    **_: object,
) -> tuple[torch.Tensor, float]:
    """LongRoPE (Ding et al. 2024): searched per-pair factors, the long set once past L_orig."""
    if original_max_position_embeddings is None:
        raise ValueError("rule 'longrope' needs original_max_position_embeddings (L_orig)")
    for name, value in (("short_factor", short_factor), ("long_factor", long_factor)):
        if value is None or len(value) != dim // 2:
            got = None if value is None else f"a list of length {len(value)}"
            raise ValueError(
                f"model.pos.{name}={got}: rule 'longrope' needs a list of rotary_dim/2 = {dim // 2} factors"
            )
    long = seq_len is not None and seq_len > original_max_position_embeddings
    ext = torch.tensor([float(x) for x in (long_factor if long else short_factor)], dtype=torch.float64)
    if attention_factor is None:
        original = original_max_position_embeddings
        s = longrope_scale(factor, original, max_position_embeddings)
        attention_factor = 1.0 if s <= 1.0 else math.sqrt(1 + math.log(s) / math.log(original))
    return base_inv_freq(dim, base) / ext, float(attention_factor)


def rope_frequencies(
    rule: str, head_dim: int, base: float, partial_rotary_factor: float = 1.0, **params: object
) -> tuple[torch.Tensor | None, float]:
    """Inverse frequencies (float64, length rotary_dim/2) and the attention factor of ``rule``."""
    if rule not in RULES:
        raise ValueError(f"model.pos.rule={rule!r} is not a known rule; allowed: {sorted(RULES)}")
    dim = int(head_dim * partial_rotary_factor)
    return RULES[rule](dim, base, **params)


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

    Names follow transformers' ``rope_parameters`` so configs translate one to one.
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
        if self.rule not in RULES:
            raise ValueError(f"model.pos.rule={self.rule!r} is not a known rule; allowed: {sorted(RULES)}")
        if self.base <= 1.0:
            raise ValueError(f"model.pos.base={self.base} must be > 1")
        if self.factor < 1.0:
            raise ValueError(f"model.pos.factor={self.factor} must be >= 1 (an extension scale)")
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ValueError(
                f"model.pos.partial_rotary_factor={self.partial_rotary_factor} must be in (0, 1]"
            )
        for name in ("original_max_position_embeddings", "max_position_embeddings"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"model.pos.{name}={value} must be None or an int >= 1")
        if self.attention_factor is not None and self.attention_factor <= 0:
            raise ValueError(f"model.pos.attention_factor={self.attention_factor} must be None or > 0")
        check = VALIDATORS.get(self.rule)
        if check is not None:
            check(self)

    @property
    def name(self) -> str:
        """Label for results rows: the rule, and its factor when it has one."""
        if self.factor == 1.0 or self.rule in ("none", "rope", "alibi"):  # rules that ignore factor
            return self.rule
        return f"{self.rule}x{self.factor:g}"

    def params(self) -> dict:
        """Keyword arguments for ``rope_frequencies``."""
        out = {k: v for k, v in vars(self).items() if k not in ("rule", "base")}
        return out


# Per-rule checks of PosConfig (missing or incompatible parameters), keyed by rule name.
# The longrope list lengths need head_dim, so the rule function itself checks them.
VALIDATORS: dict[str, Callable[[PosConfig], None]] = {}


def validator(*rules: str):
    def wrap(fn: Callable[[PosConfig], None]) -> Callable[[PosConfig], None]:
        for rule in rules:
            VALIDATORS[rule] = fn
        return fn

    return wrap


def _require(cfg: PosConfig, name: str, allowed: str) -> None:
    if getattr(cfg, name) is None:
        raise ValueError(f"model.pos.{name}=None but rule {cfg.rule!r} needs it; allowed: {allowed}")


@validator("dynamic_ntk")
def _check_dynamic_ntk(cfg: PosConfig) -> None:
    _require(cfg, "max_position_embeddings", "the trained length L_max, an int >= 1")


@validator("yarn")
def _check_yarn(cfg: PosConfig) -> None:
    _require(cfg, "original_max_position_embeddings", "the pre-extension length L_orig, an int >= 1")
    if cfg.beta_slow <= 0:
        raise ValueError(f"model.pos.beta_slow={cfg.beta_slow} must be > 0 (a number of rotations)")
    if cfg.beta_fast <= cfg.beta_slow:
        raise ValueError(
            f"model.pos.beta_fast={cfg.beta_fast} must be > model.pos.beta_slow={cfg.beta_slow} "
            "(defaults 32 > 1)"
        )
    if (cfg.mscale is None) != (cfg.mscale_all_dim is None):
        raise ValueError(
            f"model.pos.mscale={cfg.mscale}, model.pos.mscale_all_dim={cfg.mscale_all_dim}: "
            "set both (factor = m(s, mscale) / m(s, mscale_all_dim)) or neither"
        )
    for name in ("mscale", "mscale_all_dim"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ValueError(f"model.pos.{name}={value} must be None or > 0")


@validator("llama3")
def _check_llama3(cfg: PosConfig) -> None:
    _require(cfg, "original_max_position_embeddings", "the pre-extension length L_orig, an int >= 1")
    if cfg.low_freq_factor <= 0:
        raise ValueError(f"model.pos.low_freq_factor={cfg.low_freq_factor} must be > 0 (default 1)")
    if cfg.low_freq_factor >= cfg.high_freq_factor:
        raise ValueError(
            f"model.pos.low_freq_factor={cfg.low_freq_factor} must be < "
            f"model.pos.high_freq_factor={cfg.high_freq_factor} (defaults 1 < 4)"
        )


@validator("longrope")
def _check_longrope(cfg: PosConfig) -> None:
    _require(cfg, "original_max_position_embeddings", "the pre-extension length L_orig, an int >= 1")
    for name in ("short_factor", "long_factor"):
        _require(cfg, name, "a list of rotary_dim/2 positive floats")
        value = list(getattr(cfg, name))
        if not value or any(x <= 0 for x in value):
            raise ValueError(f"model.pos.{name}={value} must be a non-empty list of positive floats")
    if len(cfg.short_factor) != len(cfg.long_factor):
        raise ValueError(
            f"model.pos.long_factor=<a list of length {len(cfg.long_factor)}> but model.pos.short_factor "
            f"has length {len(cfg.short_factor)}; both must have rotary_dim/2 entries"
        )
    if cfg.factor != 1.0 and cfg.max_position_embeddings is not None:
        implied = cfg.max_position_embeddings / cfg.original_max_position_embeddings
        if not math.isclose(cfg.factor, implied):
            raise ValueError(
                f"model.pos.factor={cfg.factor} disagrees with model.pos.max_position_embeddings / "
                f"original_max_position_embeddings = {implied:g}; set one of them, or make them agree"
            )


@register("alibi", rotary=False)
def alibi(dim: int, base: float, **_: object) -> tuple[None, float]:
    """ALiBi: no rotation; models/positional.py adds the per-head linear distance bias."""
    return None, 1.0
