"""A Llama-style decoder: token embedding, pre-RMSNorm blocks (GQA attention + SwiGLU), head.

The attention pattern (models/attention.py) and positional rule (models/rope.py) are config
choices; decoding goes through a ``ModelCache`` (models/cache.py) whose layer caches own the
attention computation, so every cache policy serves every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import AttentionConfig, attend
from models.cache import KV_POLICIES, CacheConfig, ModelCache
from models.lm import DecoderLM, check_dtype
from models.positional import Positional
from models.rope import PosConfig


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
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.n_heads={self.n_heads} must divide model.d_model={self.d_model}"
            )
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head dim d_model/n_heads={self.head_dim} must be even for RoPE")
        if self.mlp_hidden is None:
            self.mlp_hidden = 16 * ((8 * self.d_model // 3 + 15) // 16)
        if self.mlp_hidden < 1:
            raise ValueError(f"model.mlp_hidden={self.mlp_hidden} must be >= 1")
        check_dtype(self.dtype)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


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

    def forward(self, x: torch.Tensor, layer_cache=None, start: int = 0) -> torch.Tensor:
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


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)).

    Separate gate and up matmuls: fusing them into one saves no matmul time on CPU, while the
    split's backward concatenates gradients and silu runs on a strided half (measured slower).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer_idx: int, positional: Positional) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer_idx, positional)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, layer_cache=None, start: int = 0) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), layer_cache, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(DecoderLM):
    """forward(input_ids (B, T), cache=None) -> logits (B, T, V)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        positional = Positional(cfg.pos, cfg.head_dim, cfg.n_heads)
        self.layers = nn.ModuleList(Block(cfg, i, positional) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def positional(self) -> Positional:
        return self.layers[0].self_attn.positional

    def new_cache(self, batch_size: int, policy: CacheConfig | str = "full") -> ModelCache:
        """An empty cache; KV tensors are allocated as tokens arrive."""
        if isinstance(policy, str):
            policy = CacheConfig(policy=policy)
        make = KV_POLICIES[policy.policy]
        layers = [make(policy, i, self.cfg.n_layers, self.cfg.n_kv_heads) for i in range(self.cfg.n_layers)]
        return ModelCache(layers, policy)
