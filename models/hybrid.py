"""A hybrid of Mamba and attention blocks on one residual stream, in the order ``layers`` spells.

``layers="MAMA"``: M is a Mamba block (models/mamba.py ``MambaBlock``), A a transformer block
(models/transformer.py ``Block``: GQA attention with the positional rule and attention pattern of
its sub-configs, then SwiGLU). Decoding goes through one ``ModelCache``: attention layers get the
chosen KV policy, Mamba layers their constant-size state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from models.attention import AttentionConfig
from models.cache import KV_POLICIES, CacheConfig, ModelCache
from models.lm import DecoderLM, check_dtype
from models.mamba import MambaBlock, MambaConfig, require_kernels, validate_mamba_knobs
from models.positional import Positional
from models.rope import PosConfig
from models.transformer import Block, RMSNorm, TransformerConfig


@dataclass
class HybridConfig:
    family: str = "hybrid"
    vocab_size: int = 256
    d_model: int = 128
    layers: str = "MAMA"  # the schedule: M = Mamba block, A = attention block
    # attention blocks (as TransformerConfig)
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None: n_heads
    mlp_hidden: Optional[int] = None  # None: 8/3 d_model rounded up to a multiple of 16
    pos: PosConfig = field(default_factory=PosConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    # Mamba blocks (as MambaConfig)
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: Optional[int] = None  # None: ceil(d_model / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    kernel: str = "auto"
    chunk_size: Optional[int] = None
    # the language model
    max_seq_len: int = 8192
    tie_embeddings: bool = False
    norm_eps: float = 1e-5
    init_std: float = 0.02
    dtype: Optional[str] = None  # parameter dtype (models/lm.py DTYPES); None: float32

    def __post_init__(self) -> None:
        if self.family != "hybrid":
            raise ValueError(f"model.family={self.family!r} but this is the hybrid config")
        if not self.layers or set(self.layers) - {"M", "A"}:
            raise ValueError(f"model.layers={self.layers!r} must be a non-empty string of 'M' and 'A'")
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        validate_mamba_knobs(self, ("vocab_size", "d_model", "max_seq_len"))
        check_dtype(self.dtype)
        # the attention blocks' own checks (heads divide d_model, ...) run here, before training
        tcfg = self.transformer_config()
        self.n_kv_heads, self.mlp_hidden = tcfg.n_kv_heads, tcfg.mlp_hidden

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def transformer_config(self) -> TransformerConfig:
        """The config the attention blocks are built from."""
        return TransformerConfig(
            vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads, mlp_hidden=self.mlp_hidden, max_seq_len=self.max_seq_len,
            tie_embeddings=self.tie_embeddings, norm_eps=self.norm_eps, init_std=self.init_std,
            pos=self.pos, attention=self.attention,
        )

    def mamba_config(self) -> MambaConfig:
        """The config the Mamba blocks are built from."""
        return MambaConfig(
            vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers, d_state=self.d_state,
            d_conv=self.d_conv, expand=self.expand, dt_rank=self.dt_rank, dt_min=self.dt_min,
            dt_max=self.dt_max, dt_init_floor=self.dt_init_floor, conv_bias=self.conv_bias, bias=self.bias,
            max_seq_len=self.max_seq_len, tie_embeddings=self.tie_embeddings, norm_eps=self.norm_eps,
            init_std=self.init_std, kernel=self.kernel, chunk_size=self.chunk_size,
        )


class Hybrid(DecoderLM):
    """forward(input_ids (B, T), cache=None) -> logits (B, T, V)."""

    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        require_kernels(cfg.kernel)
        self.cfg = cfg
        tcfg, mcfg = cfg.transformer_config(), cfg.mamba_config()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        positional = Positional(tcfg.pos, tcfg.head_dim, tcfg.n_heads)  # shared by attention layers
        self.layers = nn.ModuleList(
            Block(tcfg, i, positional) if kind == "A" else MambaBlock(mcfg, cfg.n_layers)
            for i, kind in enumerate(cfg.layers)
        )
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # each block keeps its family's init: attention blocks as models.transformer, Mamba
        # blocks as the Mamba reference (set in MambaMixer)
        for layer in self.layers:
            if isinstance(layer, Block):
                for m in layer.modules():
                    if isinstance(m, nn.Linear):
                        nn.init.normal_(m.weight, std=cfg.init_std)
        nn.init.normal_(self.embed_tokens.weight, std=cfg.init_std)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=cfg.init_std)

    def new_cache(self, batch_size: int, policy: CacheConfig | str = "full") -> ModelCache:
        """KV caches of ``policy`` for attention layers (indexed among all layers), states for Mamba."""
        if isinstance(policy, str):
            policy = CacheConfig(policy=policy)
        make = KV_POLICIES[policy.policy]
        n, hkv = self.cfg.n_layers, self.cfg.n_kv_heads
        layers = [make(policy, i, n, hkv) if kind == "A" else self.layers[i].mixer.new_layer_cache(batch_size)
                  for i, kind in enumerate(self.cfg.layers)]
        return ModelCache(layers, policy)
