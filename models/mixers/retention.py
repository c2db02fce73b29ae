"""RetNet's multi-scale retention (Sun et al. 2023): linear attention whose state decays by a fixed factor per head.

Per head h: S_t = gamma_h S_{t-1} + k_t^T v_t, o_t = d_k^-1/2 q_t S_t, gamma_h = 1 - 2^(-5-h) (no input
dependence; head 0 remembers ~32 tokens, later heads longer), RoPE on q and k at absolute positions;
then a per-head RMSNorm, a swish output gate and o_proj. The layer is fla's ``MultiScaleRetention``
(fla/layers/multiscale_retention.py: expand_k 1, expand_v 2, fused norm + swish gate) with its parameter
names (q_proj, k_proj, v_proj, g_proj, g_norm_swish_gate, o_proj); the block is fla's (attn_norm, attn,
mlp_norm, mlp: SwiGLU).

Two paths: the chunked pure-PyTorch form (models/linear_attention.py; CPU default and reference) and
fla's ``chunk_simple_gla`` kernel (retention is simple GLA with a constant gate) when fla imports and
the input is on a GPU. The decode state is the (B, H, d_k, d_v) matrix per layer, constant in length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from models.layers import FLA_NAMES, Block
from models.linear_attention import RecurrentStateCache
from models.mixers import MIXERS, MixerSpec
from models.pos.base import apply_rotary, base_inv_freq
from models.recurrent import (
    GatedLinearConfig,
    GatedLinearMixer,
    init_linears,
)

try:  # fla's Triton kernels run only on a GPU (and fla imports only with triton installed)
    from fla.ops.simple_gla import chunk_simple_gla

    KERNELS_AVAILABLE = True
except Exception:  # ImportError, or an error from a broken triton install
    chunk_simple_gla = None
    KERNELS_AVAILABLE = False


@dataclass
class RetentionConfig(GatedLinearConfig):
    family: str = "retention"
    expand_k: float = 1.0  # key dim = expand_k * d_model (fla's default)
    expand_v: float = 2.0  # value dim = expand_v * d_model
    rope_base: float = 10000.0  # RoPE on q, k (RetNet's xPos without its length-extrapolation scale)

    def __post_init__(self) -> None:
        self.check_gated_fields("retention")
        if not self.rope_base > 1:
            raise ValueError(f"model.rope_base={self.rope_base} must be > 1")
        if int(self.expand_k * self.d_model) // self.n_heads % 2:
            raise ValueError(f"model.expand_k={self.expand_k}: the key head dim expand_k * d_model / n_heads must "
                             "be even for RoPE")


def retention_log_decays(n_heads: int) -> torch.Tensor:
    """log gamma_h = log(1 - 2^(-5-h)), h = 0..n_heads-1, float64."""
    return torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(n_heads, dtype=torch.float64)))


class MultiScaleRetention(GatedLinearMixer):
    """(B, T, d_model) -> (B, T, d_model); ``new_layer_cache`` is its (B, H, d_k, d_v) state."""

    def __init__(self, cfg: RetentionConfig) -> None:
        super().__init__(cfg, chunk_simple_gla, KERNELS_AVAILABLE, "retention")
        # fixed, not learned: buffers that are not saved (they follow from n_heads and rope_base)
        self.register_buffer("log_decay", retention_log_decays(cfg.n_heads), persistent=False)
        self.register_buffer("inv_freq", base_inv_freq(self.dk, cfg.rope_base), persistent=False)

    def _rotate(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """RoPE (HF rotate-half layout) at positions start..start+T-1; angles in float64."""
        pos = torch.arange(start, start + x.shape[2], device=x.device, dtype=torch.float64)
        angles = torch.outer(pos, self.inv_freq.to(x.device, torch.float64))
        angles = torch.cat((angles, angles), dim=-1)
        return apply_rotary(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype))

    def forward(self, x: torch.Tensor, layer_cache: Optional[RecurrentStateCache] = None,
                start: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x, layer_cache, start)
        q, k = self._rotate(q, start), self._rotate(k, start)
        g = self.log_decay.to(torch.promote_types(x.dtype, torch.float32))[None, :, None].expand(B, -1, T)
        return self.mix(x, q, k, v, g, layer_cache, start)


def build_block(cfg: RetentionConfig, layer_idx: int, shared: dict) -> Block:
    """x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)), as fla's RetNetBlock."""
    block = Block(MultiScaleRetention(cfg), cfg.d_model, cfg.norm_eps, cfg.mlp_hidden, names=FLA_NAMES)
    init_linears(block, cfg.init_std, cfg.n_layers, residual_out=("o_proj", "down_proj"))
    return block


MIXERS.register("retention")(MixerSpec("retention", RetentionConfig, build_block))
