"""The attention mixer: GQA self-attention with a positional rule (models/pos/) and an attention pattern
(models/patterns/); decoding hands unrotated q/k/v to the layer's cache policy (models/caches/).

``TransformerConfig`` is the config its layers read (and the transformer family's, models/families/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from models.caches import CacheConfig, KVLayerCache
from models.layers import Block, BlockNames
from models.lm import check_dtype
from models.mixers import MIXERS, MixerSpec
from models.patterns import AttentionConfig, attend
from models.pos.base import PosConfig
from models.pos.positional import Positional

LLAMA_NAMES = BlockNames(norm="input_layernorm", mixer="self_attn", mlp_norm="post_attention_layernorm", mlp="mlp")


@dataclass
class TransformerConfig:
    family: str = "transformer"
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None: n_heads (MHA); fewer: grouped-query attention
    mlp_hidden: Optional[int] = None  # None: 8/3 d_model rounded up to a multiple of 16 (SwiGLU)
    max_seq_len: int = 8192  # longest input evaluation may ask for
    tie_embeddings: bool = False
    qkv_bias: bool = False  # biases on q/k/v projections (Qwen2)
    dtype: Optional[str] = None  # parameter dtype (models/lm.py DTYPES); None: float32 / stored on import
    norm_eps: float = 1e-5
    init_std: float = 0.02
    pos: PosConfig = field(default_factory=PosConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def __post_init__(self) -> None:
        if self.family != "transformer":
            raise ValueError(f"model.family={self.family!r} but this is the transformer config")
        check_attention_knobs(self)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def check_attention_knobs(cfg) -> None:
    """The checks every softmax-attention config shares (sizes, heads, GQA, SwiGLU width); fills the defaults
    of ``n_kv_heads`` and ``mlp_hidden``."""
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"model.{name}={getattr(cfg, name)} must be >= 1")
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"model.n_heads={cfg.n_heads} must divide model.d_model={cfg.d_model}")
    if cfg.n_kv_heads is None:
        cfg.n_kv_heads = cfg.n_heads
    if cfg.n_kv_heads < 1 or cfg.n_heads % cfg.n_kv_heads:
        raise ValueError(f"model.n_kv_heads={cfg.n_kv_heads} must divide model.n_heads={cfg.n_heads}")
    if cfg.head_dim % 2:
        raise ValueError(f"head dim d_model/n_heads={cfg.head_dim} must be even for RoPE")
    if cfg.mlp_hidden is None:
        cfg.mlp_hidden = 16 * ((8 * cfg.d_model // 3 + 15) // 16)
    if cfg.mlp_hidden < 1:
        raise ValueError(f"model.mlp_hidden={cfg.mlp_hidden} must be >= 1")
    for name in ("norm_eps", "init_std"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"model.{name}={getattr(cfg, name)} must be > 0")
    check_dtype(cfg.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer_idx: int, positional: Positional) -> None:
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, self.n_heads * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.hd, cfg.d_model, bias=False)
        self.positional = positional  # shared by all layers
        self.duo_gate: torch.Tensor | None = None  # (Hkv,) DuoAttention gates, set by the duo stage

    def forward(self, x: torch.Tensor, layer_cache: Optional[KVLayerCache] = None, start: int = 0) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        if layer_cache is not None:
            y = layer_cache.attend(q, k, v, self.positional, start)
        else:
            pos = torch.arange(T, device=x.device)
            q, k = self.positional.rotate(q, pos, T), self.positional.rotate(k, pos, T)
            pattern = self.cfg.attention.train if self.training else self.cfg.attention.eval
            y = attend(pattern, q, k, v, self.cfg.attention, bias=self.positional.bias(pos, pos),
                       gate=self.duo_gate)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, d_model)

    def new_layer_cache(self, batch_size: int, policy: CacheConfig, layer_idx: int, n_layers: int) -> KVLayerCache:
        """This layer's KV cache under ``policy`` (layer_idx / n_layers count every layer of the model)."""
        return policy.layer_cache(layer_idx, n_layers, self.n_kv)


def shared_positional(cfg, shared: dict) -> Positional:
    """One positional module for every attention layer of a model (full or sliding-window)."""
    if "positional" not in shared:
        shared["positional"] = Positional(cfg.pos, cfg.head_dim, cfg.n_heads)
    return shared["positional"]


def build_block(cfg: TransformerConfig, layer_idx: int, shared: dict) -> Block:
    attn = Attention(cfg, layer_idx, shared_positional(cfg, shared))
    return Block(attn, cfg.d_model, cfg.norm_eps, cfg.mlp_hidden, LLAMA_NAMES)


@torch.no_grad()
def init_block(block: nn.Module, std: float) -> None:
    """Every linear ~ N(0, std), biases zero (GPT-2 / Llama init), in module order."""
    for m in block.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


MIXERS.register("attention")(MixerSpec("attention", TransformerConfig, build_block, init_block, letter="A"))
