"""What every block shares: RMSNorm, the SwiGLU MLP, and ``Block``, a pre-norm residual around one token mixer.

A block is ``x + mixer(norm(x))``, then ``x + mlp(norm(x))`` when the mixer comes with an MLP
(attention does, Mamba does not). Submodule names follow each mixer's reference checkpoint (HF Llama:
input_layernorm / self_attn / post_attention_layernorm / mlp; Mamba: norm / mixer), so weights
exchange with transformers one to one and old checkpoints keep their keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)).

    Separate gate and up matmuls: fusing them into one saves no matmul time on CPU, while the
    split's backward concatenates gradients and silu runs on a strided half (measured slower).
    """

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass(frozen=True)
class BlockNames:
    """Attribute names of a block's parts (the state-dict keys of the mixer's reference checkpoints)."""

    norm: str = "norm"
    mixer: str = "mixer"
    mlp_norm: str = "post_mixer_layernorm"
    mlp: str = "mlp"


# fla's block attribute names (GLABlock, RetNetBlock, GatedDeltaNetBlock), so state-dict keys match its checkpoints
FLA_NAMES = BlockNames(norm="attn_norm", mixer="attn", mlp_norm="mlp_norm", mlp="mlp")


class Block(nn.Module):
    """x + mixer(norm(x)) [+ mlp(mlp_norm(x))]; forward(x (B, T, d), layer_cache=None, start=0)."""

    def __init__(self, mixer: nn.Module, d_model: int, norm_eps: float, mlp_hidden: Optional[int] = None,
                 names: BlockNames = BlockNames()) -> None:
        super().__init__()
        self.names = names
        setattr(self, names.norm, RMSNorm(d_model, norm_eps))
        setattr(self, names.mixer, mixer)
        self.has_mlp = mlp_hidden is not None
        if self.has_mlp:
            setattr(self, names.mlp_norm, RMSNorm(d_model, norm_eps))
            setattr(self, names.mlp, SwiGLU(d_model, mlp_hidden))

    @property
    def token_mixer(self) -> nn.Module:
        return getattr(self, self.names.mixer)

    def forward(self, x: torch.Tensor, layer_cache=None, start: int = 0) -> torch.Tensor:
        n = self.names
        x = x + getattr(self, n.mixer)(getattr(self, n.norm)(x), layer_cache, start)
        if not self.has_mlp:
            return x
        return x + getattr(self, n.mlp)(getattr(self, n.mlp_norm)(x))
