"""NoPE: no positional signal beyond the causal mask."""

from __future__ import annotations

from models.pos import pos_rule


@pos_rule("none", rotary=False, uses_factor=False)
def nope(dim: int, base: float, **_: object) -> tuple[None, float]:
    return None, 1.0
