"""The Gated DeltaNet mixer (Yang et al. 2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule").

Per head h, the state S (K x V) follows the gated delta rule (models/delta_rule.py):

    S_t = alpha_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,     o_t = q_t S_t / sqrt(K)

with the paper's parametrisation as fla's ``GatedDeltaNet`` layer has it (fla/layers/gated_deltanet.py):
q, k, v = SiLU(short causal conv(x W_q|k|v)) (one depthwise conv of width d_conv each); q and k
L2-normalised per head; log alpha_t = -exp(A_log) softplus(x W_a + dt_bias) (Mamba-2's decay, A_log and
dt_bias initialised as fla does); beta_t = sigmoid(x W_b); output RMSNorm(o_t) * SiLU(x W_g) per head
(gated norm, ``use_gate``), then o_proj. Not included: fla's GVA (more value heads than q/k heads) and
``allow_neg_eigval`` (beta in (0, 2)). Parameter names are fla's (q_proj, q_conv1d, a_proj, b_proj,
A_log, dt_bias, g_proj, o_norm, o_proj; the block's attn_norm / attn / mlp_norm / mlp as fla's
GatedDeltaNetBlock), so a state dict maps onto fla's checkpoints key for key.

Two paths compute the same function: the pure-PyTorch chunked WY form (CPU default, the reference) and
fla's ``chunk_gated_delta_rule`` Triton kernel where fla imports and the input is on a GPU
(``kernel=auto|torch|cuda``). The decode state is a ``GatedDeltaNetLayerCache``: per head the K x V matrix
S, plus the last d_conv-1 inputs of each short conv; its size does not depend on the length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models import native_gated_norm
from models.caches import CacheConfig, LayerCache
from models.delta_rule import gated_delta_rule
from models.kernels import FLA_PACKAGE, check_kernel_choice, require_kernel, use_kernel
from models.layers import FLA_NAMES, Block
from models.lm import check_dtype
from models.mixers import MIXERS, MixerSpec
from models.short_conv import ShortConv

try:  # Triton kernels: import where fla and triton are installed, run only on CUDA tensors
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk_gated_delta_rule

    FLA_AVAILABLE = True
except Exception:  # ImportError, or a broken triton install
    fla_chunk_gated_delta_rule = None
    FLA_AVAILABLE = False



@dataclass
class GatedDeltaNetConfig:
    family: str = "gated_deltanet"
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    # the mixer (fla's GatedDeltaNet knobs; in a hybrid n_heads, d_conv, chunk_size, kernel are shared)
    n_heads: int = 4
    head_dim: Optional[int] = None  # K, the q/k size per head; None: d_model // n_heads
    expand_v: float = 2.0  # V = expand_v * K, the value size per head (fla's default)
    d_conv: int = 4  # short conv width on q, k and v (fla's conv_size)
    use_short_conv: bool = True
    use_gate: bool = True  # output gate SiLU(x W_g) on the per-head RMSNorm; False: the norm alone
    mlp_hidden: Optional[int] = None  # SwiGLU after each mixer; None: 8/3 d_model rounded up to 16
    chunk_size: Optional[int] = None  # torch path: tokens per WY chunk; None: per length (models/delta_rule.py)
    kernel: str = "auto"  # auto: fla's kernel if it imports and the input is on a GPU | torch | cuda (required)
    # the language model
    max_seq_len: int = 8192  # longest input evaluation may ask for (no positional limit)
    tie_embeddings: bool = False  # fla's default
    dtype: Optional[str] = None  # parameter dtype (models/lm.py DTYPES); None: float32
    norm_eps: float = 1e-5
    init_std: float = 0.02  # every linear and conv weight ~ N(0, init_std) (fla's _init_weights)

    def __post_init__(self) -> None:
        if self.family != "gated_deltanet":
            raise ValueError(f"model.family={self.family!r} but this is the gated_deltanet config")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_conv", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"model.n_heads={self.n_heads} must divide model.d_model={self.d_model} "
                                 "(or set model.head_dim)")
            self.head_dim = self.d_model // self.n_heads
        if self.head_dim < 1:
            raise ValueError(f"model.head_dim={self.head_dim} must be >= 1")
        value = self.expand_v * self.head_dim
        if not self.expand_v > 0 or not math.isclose(value, round(value)):
            raise ValueError(f"model.expand_v={self.expand_v} times head_dim={self.head_dim} must be a "
                             "positive whole number (the value size per head)")
        if self.mlp_hidden is None:
            self.mlp_hidden = 16 * ((8 * self.d_model // 3 + 15) // 16)
        if self.mlp_hidden < 1:
            raise ValueError(f"model.mlp_hidden={self.mlp_hidden} must be >= 1")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"model.chunk_size={self.chunk_size} must be >= 1 or None (per length)")
        for name in ("norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"model.{name}={getattr(self, name)} must be > 0")
        check_kernel_choice(self.kernel)
        check_dtype(self.dtype)

    @property
    def head_v_dim(self) -> int:
        return round(self.expand_v * self.head_dim)


class GatedDeltaNetLayerCache(LayerCache):
    """One layer's decode state: S per head and each short conv's last d_conv-1 inputs; constant in length."""

    def __init__(self, state: torch.Tensor, conv: dict[str, torch.Tensor]) -> None:
        self.state = state  # (B, H, K, V), at least float32
        self.conv = conv  # q / k / v -> (B, D, d_conv - 1); empty without short convs

    def tensors(self) -> Iterator[torch.Tensor]:
        yield self.state
        yield from self.conv.values()


class GatedRMSNorm(nn.Module):
    """RMSNorm(x) * weight * SiLU(gate) over the last dim (fla's FusedRMSNormGated, swish activation)."""

    def __init__(self, dim: int, eps: float, fused: bool = False) -> None:
        super().__init__()
        self.eps, self.fused = eps, fused  # fused: the C pass on float32 CPU (model.kernel)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: Optional[torch.Tensor] = None) -> torch.Tensor:
        if gate is not None and self.fused and native_gated_norm.usable(x, gate, self.weight):
            B, T, H, V = x.shape  # every (token, head) a row of one group: the weight is the heads' shared one
            rows = (t.reshape(B, T * H, 1, V) for t in (x, gate))
            return native_gated_norm.fused_gated_rms_norm(*rows, self.weight, self.eps, False).view(B, T, H, V)
        y = F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return y if gate is None else y * F.silu(gate)


def l2_normalise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(|x|^2 + eps) over the last dim (fla's l2norm, eps 1e-6)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


class GatedDeltaNet(nn.Module):
    """(B, T, d_model) -> (B, T, d_model); forward(x, layer_cache=None, start=0) as every mixer.

    Args (from the config): d_model; n_heads=4; head_dim=d_model/n_heads; expand_v=2; d_conv=4;
    use_short_conv=True; use_gate=True; norm_eps=1e-5; chunk_size=None; kernel=auto.
    """

    def __init__(self, cfg: GatedDeltaNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        H, K, V, d = cfg.n_heads, cfg.head_dim, cfg.head_v_dim, cfg.d_model
        self.n_heads, self.head_k_dim, self.head_v_dim = H, K, V
        self.q_proj = nn.Linear(d, H * K, bias=False)
        self.k_proj = nn.Linear(d, H * K, bias=False)
        self.v_proj = nn.Linear(d, H * V, bias=False)
        self.a_proj = nn.Linear(d, H, bias=False)
        self.b_proj = nn.Linear(d, H, bias=False)
        # Mamba-2's decay: A ~ U(0, 16), dt ~ log-uniform in [1e-3, 0.1] floored at 1e-4, dt_bias = softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(0, 16)))
        dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True
        if cfg.use_short_conv:
            self.q_conv1d = ShortConv(H * K, cfg.d_conv)
            self.k_conv1d = ShortConv(H * K, cfg.d_conv)
            self.v_conv1d = ShortConv(H * V, cfg.d_conv)
        if cfg.use_gate:
            self.g_proj = nn.Linear(d, H * V, bias=False)
        self.o_norm = GatedRMSNorm(V, cfg.norm_eps, fused=cfg.kernel != "torch")
        self.o_proj = nn.Linear(H * V, d, bias=False)

    def _qkv(self, x: torch.Tensor, cache: Optional[GatedDeltaNetLayerCache], resume: bool) -> list[torch.Tensor]:
        """SiLU(short conv(projection)) of q, k, v, each conv continuing the cached inputs when resuming."""
        out = []
        for name in ("q", "k", "v"):
            h = getattr(self, f"{name}_proj")(x)
            if not self.cfg.use_short_conv:
                out.append(F.silu(h))
                continue
            h, last = getattr(self, f"{name}_conv1d")(h, cache.conv[name] if resume else None,
                                                      fused=self.cfg.kernel != "torch")
            if cache is not None:
                cache.conv[name] = last.detach().to(cache.conv[name].dtype)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor, layer_cache: Optional[GatedDeltaNetLayerCache] = None,
                start: int = 0) -> torch.Tensor:
        """x (B, T, d_model); with a cache, tokens start..start+T-1 continue its state."""
        B, T, _ = x.shape
        H, K, V = self.n_heads, self.head_k_dim, self.head_v_dim
        resume = layer_cache is not None and start > 0  # the cache holds earlier tokens
        q, k, v = self._qkv(x, layer_cache, resume)
        q = l2_normalise(q.view(B, T, H, K))  # (B, T, H, K)
        k = l2_normalise(k.view(B, T, H, K))
        v = v.view(B, T, H, V)
        f = torch.promote_types(x.dtype, torch.float32)
        g = -self.A_log.to(f).exp() * F.softplus(self.a_proj(x).to(f) + self.dt_bias.to(f))  # (B, T, H): log alpha
        beta = torch.sigmoid(self.b_proj(x).to(f))  # (B, T, H)
        # the kernel runs the stateless (training / teacher-forced) forward; a cache goes through the torch path,
        # which takes the initial state and returns the final one in our layout
        if layer_cache is None and use_kernel(self.cfg.kernel, FLA_AVAILABLE, FLA_PACKAGE, x):
            o, _ = fla_chunk_gated_delta_rule(q=q, k=k, v=v, g=g, beta=beta.to(q.dtype), scale=K**-0.5)
        else:
            o, S = gated_delta_rule(q, k, v, g, beta, scale=K**-0.5,
                                    initial_state=layer_cache.state if resume else None,
                                    chunk_size=self.cfg.chunk_size, fused=self.cfg.kernel != "torch")
            if layer_cache is not None:
                layer_cache.state = S.detach().to(layer_cache.state.dtype)
        gate = self.g_proj(x).view(B, T, H, V) if self.cfg.use_gate else None
        return self.o_proj(self.o_norm(o, gate).reshape(B, T, H * V))  # (B, T, d_model)

    def new_layer_cache(self, batch_size: int, policy: Optional[CacheConfig] = None, layer_idx: int = 0,
                        n_layers: int = 1) -> GatedDeltaNetLayerCache:
        """A zero state; a KV policy has nothing to act on here."""
        p = self.q_proj.weight
        state = torch.zeros(batch_size, self.n_heads, self.head_k_dim, self.head_v_dim, device=p.device,
                            dtype=torch.promote_types(p.dtype, torch.float32))
        conv = {}
        if self.cfg.use_short_conv:
            for name in ("q", "k", "v"):
                conv[name] = torch.zeros(batch_size, getattr(self, f"{name}_conv1d").in_channels,
                                         self.cfg.d_conv - 1, device=p.device, dtype=p.dtype)
        return GatedDeltaNetLayerCache(state, conv)


def build_block(cfg: GatedDeltaNetConfig, layer_idx: int, shared: dict) -> Block:
    """x + mixer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)): fla's GatedDeltaNetBlock."""
    require_kernel(cfg.kernel, FLA_AVAILABLE, FLA_PACKAGE)
    return Block(GatedDeltaNet(cfg), cfg.d_model, cfg.norm_eps, cfg.mlp_hidden, FLA_NAMES)


@torch.no_grad()
def init_block(block: nn.Module, std: float) -> None:
    """Every linear and conv weight ~ N(0, std), biases zero (fla's _init_weights); A_log, dt_bias, norms kept."""
    for m in block.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


MIXERS.register("gated_deltanet")(MixerSpec("gated_deltanet", GatedDeltaNetConfig, build_block, init_block))
