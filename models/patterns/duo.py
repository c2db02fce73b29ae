"""DuoAttention's per-head mix of full and sink+window attention: patterns ``duo`` and ``duo_two_way``.

``duo`` evaluates the gated mix on one set of states; ``duo_two_way`` is DuoAttention's training
forward (models/duo.py): teacher and student halves of a doubled batch.
"""

from __future__ import annotations

import torch

from models.patterns import PATTERNS, AttentionConfig, causal_sdpa
from models.patterns.sink_window import sink_window


def head_gates(gate: torch.Tensor, H: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-KV-head gates (Hkv,) clamped to [0, 1] -> (1, H, 1, 1): a GQA group shares its KV head's gate."""
    return gate.clamp(0.0, 1.0).to(dtype).repeat_interleave(H // gate.shape[0]).view(1, H, 1, 1)


def require_gates(gate: torch.Tensor | None, pattern: str) -> torch.Tensor:
    if gate is None:
        raise ValueError(f"attention pattern {pattern!r} needs per-head gates (Hkv,): "
                         "call models.duo.attach_duo_gates(model) first")
    return gate


@PATTERNS.register("duo")
def duo(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: AttentionConfig,
        bias: torch.Tensor | None = None, gate: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """DuoAttention: per KV head, gate * full + (1 - gate) * sink_window, gate (Hkv,) in [0, 1]."""
    g = head_gates(require_gates(gate, "duo"), q.shape[1], q.dtype)  # (1, H, 1, 1)
    dense = causal_sdpa(q, k, v, q_offset=k.shape[-2] - q.shape[-2], bias=bias)  # (B, H, T, D)
    return g * dense + (1 - g) * sink_window(q, k, v, cfg, bias=bias)


@PATTERNS.register("duo_two_way")
def duo_two_way(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: AttentionConfig,
                bias: torch.Tensor | None = None, gate: torch.Tensor | None = None, **_: object) -> torch.Tensor:
    """Batch [teacher; student] (2B, ...) -> [Full(teacher); (1-a) Stream(student) + a Full(teacher)]."""
    require_gates(gate, "duo_two_way")
    if q.shape[0] % 2:
        raise ValueError(f"duo_two_way needs the batch doubled (teacher; student), got batch {q.shape[0]}")
    B = q.shape[0] // 2
    with torch.no_grad():  # the teacher's full attention on its own states
        full = causal_sdpa(q[:B], k[:B], v[:B], bias=bias)  # (B, H, T, D)
    stream = sink_window(q[B:], k[B:], v[B:], cfg, bias=bias)  # the student's own states
    g = head_gates(gate, q.shape[1], q.dtype)  # (1, H, 1, 1)
    return torch.cat((full, (1 - g) * stream + g * full))
