"""Gated linear attention (GLA; Yang et al. 2024): linear attention whose state decays per key channel.

Per head: S_t = diag(a_t) S_{t-1} + k_t^T v_t, o_t = d_k^-1/2 q_t S_t, with the data-dependent gate
log a_t = logsigmoid(x W1 W2 + b) / 16 (a low-rank projection; the normaliser keeps decays near 1);
then a per-head RMSNorm, a swish output gate and o_proj. The layer is fla's ``GatedLinearAttention``
(fla/layers/gla.py: expand_k 0.5, expand_v 1, no short conv, fused norm + swish gate) with its parameter
names (q_proj, k_proj, v_proj, g_proj, gk_proj.0/.1, g_norm_swish_gate, o_proj); the block is fla's
(attn_norm, attn, mlp_norm, mlp: SwiGLU).

Two paths: the chunked pure-PyTorch form (models/linear_attention.py; CPU default and reference) and
fla's ``chunk_gla`` kernel when fla imports and the input is on a GPU. The decode state is the
(B, H, d_k, d_v) matrix per layer, constant in length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import FLA_NAMES, Block
from models.linear_attention import RecurrentStateCache, at_least_fp32
from models.mixers import MIXERS, MixerSpec
from models.recurrent import (
    GatedLinearConfig,
    GatedLinearMixer,
    init_linears,
)

try:  # fla's Triton kernels run only on a GPU (and fla imports only with triton installed)
    from fla.ops.gla import chunk_gla

    KERNELS_AVAILABLE = True
except Exception:  # ImportError, or an error from a broken triton install
    chunk_gla = None
    KERNELS_AVAILABLE = False


@dataclass
class GLAConfig(GatedLinearConfig):
    family: str = "gla"
    expand_k: float = 0.5  # key dim = expand_k * d_model (fla's default)
    expand_v: float = 1.0  # value dim = expand_v * d_model
    gate_low_rank_dim: int = 16  # rank of the forget-gate projection
    gate_logit_normalizer: float = 16.0  # log a = logsigmoid(.) / this

    def __post_init__(self) -> None:
        self.check_gated_fields("gla")
        if self.gate_low_rank_dim < 1:
            raise ValueError(f"model.gate_low_rank_dim={self.gate_low_rank_dim} must be >= 1")
        if not self.gate_logit_normalizer > 0:
            raise ValueError(f"model.gate_logit_normalizer={self.gate_logit_normalizer} must be > 0")


class GatedLinearAttention(GatedLinearMixer):
    """(B, T, d_model) -> (B, T, d_model); ``new_layer_cache`` is its (B, H, d_k, d_v) state."""

    def __init__(self, cfg: GLAConfig) -> None:
        super().__init__(cfg, chunk_gla, KERNELS_AVAILABLE, "gla")
        key_dim = self.dk * cfg.n_heads
        self.gk_proj = nn.Sequential(nn.Linear(cfg.d_model, cfg.gate_low_rank_dim, bias=False),
                                     nn.Linear(cfg.gate_low_rank_dim, key_dim, bias=True))

    def forward(self, x: torch.Tensor, layer_cache: Optional[RecurrentStateCache] = None,
                start: int = 0) -> torch.Tensor:
        q, k, v = self.qkv(x, layer_cache, start)
        gk = F.logsigmoid(at_least_fp32(self.heads(self.gk_proj(x)))) / self.cfg.gate_logit_normalizer
        return self.mix(x, q, k, v, gk, layer_cache, start)


def build_block(cfg: GLAConfig, layer_idx: int, shared: dict) -> Block:
    """x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)), as fla's GLABlock."""
    block = Block(GatedLinearAttention(cfg), cfg.d_model, cfg.norm_eps, cfg.mlp_hidden, names=FLA_NAMES)
    init_linears(block, cfg.init_std, cfg.n_layers, residual_out=("o_proj", "down_proj"))
    return block


MIXERS.register("gla")(MixerSpec("gla", GLAConfig, build_block))
