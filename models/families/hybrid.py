"""A hybrid: blocks of any registered mixers on one residual stream, in the order ``layers`` lists them.

``layers`` is a list of mixer names (``[mamba, mamba, attention]``) or the letter shorthand of the
mixers that have one (``"MMA"``: M = mamba, A = attention). Each mixer's layers are built from the
fields of this config its own config names (attention: the transformer's heads, positional rule and
attention pattern, then SwiGLU; mamba: the SSM knobs), so a new mixer joins hybrids by its name.
Decoding goes through one ``ModelCache``: attention layers get the chosen KV policy, Mamba layers
their constant-size state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from models.families import FAMILIES
from models.lm import DecoderLM, check_dtype
from models.mixers import MIXERS, mixer_config, mixer_names
from models.patterns import AttentionConfig
from models.pos.base import PosConfig


@dataclass
class HybridConfig:
    family: str = "hybrid"
    vocab_size: int = 256
    d_model: int = 128
    layers: Any = "MAMA"  # a list of mixer names, or their letters: M = mamba, A = attention
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
    # knobs of other mixers by name, beyond the fields above: +model.mixer_args.<mixer>.<knob>=...
    mixer_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family != "hybrid":
            raise ValueError(f"model.family={self.family!r} but this is the hybrid config")
        if not isinstance(self.layers, str):
            self.layers = list(self.layers)
        names = mixer_names(self.layers)
        stray = sorted(set(self.mixer_args) - set(names))
        if stray:
            raise ValueError(f"model.mixer_args names mixers {stray} that model.layers does not use; allowed: "
                             f"{sorted(set(names))}")
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        for name in ("norm_eps", "init_std"):  # the language model's own (the mixers check theirs)
            if not getattr(self, name) > 0:
                raise ValueError(f"model.{name}={getattr(self, name)} must be > 0")
        check_dtype(self.dtype)
        # every mixer's own checks (heads divide d_model, SSM knobs, ...) run here, before training
        configs = {name: self.mixer_config(name) for name in names}
        if "attention" in configs:
            self.n_kv_heads, self.mlp_hidden = configs["attention"].n_kv_heads, configs["attention"].mlp_hidden

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def mixers(self) -> list[str]:
        """The schedule as mixer names."""
        return mixer_names(self.layers)

    @property
    def schedule(self) -> str:
        """The schedule for labels: letters ("MMA") when every mixer has one, else comma-joined names."""
        names = self.mixers
        letters = [MIXERS.get(n).letter for n in names]
        return "".join(letters) if all(letters) else ",".join(names)

    def mixer_config(self, name: str) -> Any:
        """The config the ``name`` layers are built from (its fields taken from this config)."""
        return mixer_config(MIXERS.get(name), self, self.mixer_args.get(name, {}))


@FAMILIES.register("hybrid")
class Hybrid(DecoderLM):
    """forward(input_ids (B, T), cache=None) -> logits (B, T, V)."""

    config_class = HybridConfig

    def __init__(self, cfg: HybridConfig) -> None:
        super().__init__()
        self.build(cfg, cfg.mixers)  # each mixer checks its own kernel=cuda promise as it is built
        # each block keeps its family's init: attention blocks as the transformer, Mamba blocks as the
        # reference (set in MambaMixer), a mixer without an ``init`` its own
        self.init_mixers(cfg.init_std)
        self.init_embed_and_head(cfg.init_std, cfg.tie_embeddings)
