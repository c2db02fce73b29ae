"""The positional module a transformer owns: rotates q/k by a rule, or adds a bias (ALiBi).

Caches and attention call it with explicit absolute (or cache-slot) positions, so a cache
policy can choose the position scheme without knowing the rule.
"""

from __future__ import annotations

import torch
from torch import nn

from models.pos import POS_RULES
from models.pos.base import PosConfig, apply_rotary, rope_frequencies


class Positional(nn.Module):
    def __init__(self, cfg: PosConfig, head_dim: int, n_heads: int) -> None:
        super().__init__()
        self.cfg, self.head_dim, self.n_heads = cfg, head_dim, n_heads
        rule = POS_RULES.get(cfg.rule)
        self.rotary, self.length_dependent = rule.rotary, rule.length_dependent
        inv_freq, factor = self._frequencies(seq_len=None)
        self.attention_factor = factor
        self._memo: tuple | None = None  # (positions, seq_len key, (cos, sin)) of the last call
        # Non-persistent: frequencies are a function of the config, never of a checkpoint.
        self.register_buffer("inv_freq", inv_freq if inv_freq is not None else torch.empty(0),
                             persistent=False)
        self.register_buffer("slopes", rule.slopes(n_heads) if rule.slopes is not None else torch.empty(0),
                             persistent=False)

    def _frequencies(self, seq_len: int | None) -> tuple[torch.Tensor | None, float]:
        params = self.cfg.params()
        if seq_len is not None:
            params["seq_len"] = seq_len
        return rope_frequencies(self.cfg.rule, self.head_dim, self.cfg.base, **params)

    def cos_sin(self, positions: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (t, rot) for integer ``positions`` (t,); ``seq_len`` feeds dynamic rules.

        Memoised on the last call: every layer of a forward (q and k) asks for the same table.
        """
        key = seq_len if self.length_dependent else None
        if self._memo is not None:
            memo_pos, memo_key, table = self._memo
            if memo_key == key and memo_pos.shape == positions.shape and memo_pos.device == positions.device \
                    and torch.equal(memo_pos, positions):
                return table
        table = self._cos_sin(positions, seq_len)
        self._memo = (positions.clone(), key, table)
        return table

    def _cos_sin(self, positions: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq, factor = self.inv_freq, self.attention_factor
        if self.length_dependent:
            inv_freq, factor = self._frequencies(seq_len=seq_len)
        angles = positions.to(torch.float64)[:, None] * inv_freq.to(positions.device, torch.float64)[None, :]
        angles = torch.cat((angles, angles), dim=-1)  # (t, rot): rotate_half layout
        return (angles.cos() * factor).float(), (angles.sin() * factor).float()

    def rotate(self, x: torch.Tensor, positions: torch.Tensor, seq_len: int) -> torch.Tensor:
        """x (B, H, t, D) rotated to ``positions`` (t,) — identity for non-rotary rules."""
        if not self.rotary:
            return x
        cos, sin = self.cos_sin(positions, seq_len)
        return apply_rotary(x, cos.to(x.dtype), sin.to(x.dtype))

    def bias(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor | None:
        """Additive (H, t, s) attention bias -slope_h * distance, or None for rules without slopes."""
        if self.slopes.numel() == 0:
            return None
        distance = (q_positions[:, None] - k_positions[None, :]).clamp(min=0).float()  # (t, s)
        return -self.slopes[:, None, None] * distance[None]
