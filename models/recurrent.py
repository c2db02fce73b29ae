"""What the decayed-linear-attention mixers (gla, retention, mamba2) share besides the math
(models/linear_attention.py): the language-model fields of their configs, the kernel choice
(``kernel=auto|torch|cuda``, as Mamba's), the torch path through a decode cache, and their init.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models import native_linear_attention
from models.caches import CacheConfig
from models.kernels import FLA_PACKAGE, check_kernel_choice, require_kernel, use_kernel
from models.layers import RMSNorm
from models.linear_attention import RecurrentStateCache, chunked_decayed_attention, decayed_attention_step
from models.lm import check_dtype
from models.short_conv import causal_conv_silu


@dataclass
class RecurrentLMConfig:
    """The fields a recurrent mixer's family config shares (a subclass adds ``family`` and its knobs)."""

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    max_seq_len: int = 8192  # longest input evaluation may ask for (no positional limit)
    tie_embeddings: bool = False
    dtype: Optional[str] = None  # parameter dtype (models/lm.py DTYPES); None: float32
    norm_eps: float = 1e-5
    init_std: float = 0.02  # Linear and embedding init (fla's initializer_range)
    kernel: str = "auto"  # auto: the CUDA kernels if they import and the input is on a GPU | torch | cuda
    chunk_size: Optional[int] = None  # torch path: tokens per chunk; None: the mixer's default

    def check_lm_fields(self, family: str) -> None:
        if self.family != family:
            raise ValueError(f"model.family={self.family!r} but this is the {family} config")
        for name in ("vocab_size", "d_model", "n_layers", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"model.chunk_size={self.chunk_size} must be >= 1 or None (the mixer's default)")
        for name in ("norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"model.{name}={getattr(self, name)} must be > 0")
        check_kernel_choice(self.kernel)
        check_dtype(self.dtype)


def default_mlp_hidden(d_model: int) -> int:
    """SwiGLU width as the transformer's: 8/3 d_model rounded up to a multiple of 16."""
    return 16 * ((8 * d_model // 3 + 15) // 16)


def torch_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float,
                           cache: Optional[RecurrentStateCache], resume: bool,
                           chunk_size: Optional[int], fused: bool = False) -> torch.Tensor:
    """(B, H, T, .) inputs -> o (B, H, T, V) off the CUDA kernels; with a cache, continue and update its state.

    One token continuing a cache is the recurrent step; anything else the chunked form (from the
    cached state when ``resume``), or with ``fused`` (model.kernel=auto) on float32 CPU inputs the fused C
    recurrence (models/native_linear_attention.py) where it built."""
    initial = cache.state if resume else None
    if resume and q.shape[2] == 1:
        o, state = decayed_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], g[:, :, 0], cache.state, scale)
        o = o[:, :, None]
    elif fused and native_linear_attention.usable(q, k, v, g, initial):
        o, state = native_linear_attention.fused_decayed_attention(q, k, v, g, scale, initial)
    else:
        o, state = chunked_decayed_attention(q, k, v, g, scale, initial, chunk_size)
    if cache is not None:
        cache.state = state.detach().to(cache.state.dtype)
    return o.to(v.dtype)


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          cache: Optional[RecurrentStateCache], resume: bool, fused: bool = False) -> torch.Tensor:
    """SiLU(depthwise causal conv) over x (B, D, T), weight (D, 1, W). With a cache, its ``conv_state``
    (B, D, W), the last W inputs, is the left context when ``resume`` (zeros otherwise) and is updated.
    ``fused``: the fused C pass on float32 CPU tensors (models/short_conv.py)."""
    left = cache.conv_state[..., 1:].transpose(1, 2) if cache is not None and resume else None
    y, last = causal_conv_silu(x.transpose(1, 2), weight, bias, left, fused)  # in (B, T, D): models/short_conv.py
    if cache is not None:  # the last W inputs (W-1 earlier ones or zeros, then x)
        cache.conv_state = last.transpose(1, 2).detach().to(cache.conv_state.dtype)
    return y.transpose(1, 2)


def new_state(batch_size: int, heads: int, d_k: int, d_v: int, like: torch.Tensor) -> torch.Tensor:
    """A zero (B, H, K, V) state on ``like``'s device, at least float32."""
    return torch.zeros(batch_size, heads, d_k, d_v, device=like.device,
                       dtype=torch.promote_types(like.dtype, torch.float32))


@torch.no_grad()
def init_linears(module: nn.Module, std: float, n_layers: int, residual_out: tuple[str, ...]) -> None:
    """fla's init: every Linear ~ N(0, std), biases 0; the projections that write the residual stream
    (``residual_out``) also divided by sqrt(2 n_layers) (prenorm rescale: a mixer and an MLP per layer)."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
            if name.split(".")[-1] in residual_out:
                sub.weight.div_(math.sqrt(2 * n_layers))


@dataclass
class GatedLinearConfig(RecurrentLMConfig):
    """The knobs GLA and retention share (fla's layer shape); a subclass adds ``family`` and its own."""

    n_heads: int = 4
    expand_k: float = 1.0  # key dim = expand_k * d_model
    expand_v: float = 2.0  # value dim = expand_v * d_model
    use_short_conv: bool = True  # depthwise causal conv + SiLU on q, k, v; fla's default is off, but without it
    # GLA and retention stayed at EM 0.000 on MQAR (L=64, 1500 steps), so on here, in the family and in hybrids
    conv_size: int = 4
    mlp_hidden: Optional[int] = None  # None: 8/3 d_model rounded up to a multiple of 16 (SwiGLU)

    def check_gated_fields(self, family: str) -> None:
        """The LM fields, then: expand_k * d_model and expand_v * d_model whole multiples of n_heads;
        conv_size, n_heads, mlp_hidden >= 1 (mlp_hidden None -> the SwiGLU default)."""
        self.check_lm_fields(family)
        if self.mlp_hidden is None:
            self.mlp_hidden = default_mlp_hidden(self.d_model)
        for name in ("n_heads", "mlp_hidden", "conv_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1")
        for name in ("expand_k", "expand_v"):
            dim = getattr(self, name) * self.d_model
            if dim != int(dim) or dim < self.n_heads or int(dim) % self.n_heads:
                raise ValueError(f"model.{name}={getattr(self, name)}: {name} * d_model = {dim} must be a whole "
                                 f"multiple of model.n_heads={self.n_heads}")


class GatedLinearMixer(nn.Module):
    """The layer shape GLA and retention share (fla's): q/k/v/g projections into heads, a decayed linear
    attention, a per-head RMSNorm, a swish output gate, o_proj; parameter names as fla's layers.

    A subclass computes q, k, v, the log-decay g and calls ``mix(x, q, k, v, g, cache, start)``;
    ``kernel`` is fla's chunk function for the op (``chunk_gla`` / ``chunk_simple_gla``, same signature)."""

    def __init__(self, cfg: RecurrentLMConfig, kernel, kernel_available: bool, mixer: str) -> None:
        super().__init__()
        require_kernel(cfg.kernel, kernel_available, FLA_PACKAGE)
        self.cfg, self.kernel, self.kernel_available = cfg, kernel, kernel_available
        d, H = cfg.d_model, cfg.n_heads
        key_dim, value_dim = int(cfg.expand_k * d), int(cfg.expand_v * d)
        self.dk, self.dv = key_dim // H, value_dim // H
        self.q_proj = nn.Linear(d, key_dim, bias=False)
        self.k_proj = nn.Linear(d, key_dim, bias=False)
        self.v_proj = nn.Linear(d, value_dim, bias=False)
        self.g_proj = nn.Linear(d, value_dim, bias=False)  # the swish output gate
        self.o_proj = nn.Linear(value_dim, d, bias=False)
        self.g_norm_swish_gate = RMSNorm(self.dv, cfg.norm_eps)  # fla's FusedRMSNormGated: per-head norm
        self.qkv_dims = [key_dim, key_dim, value_dim]
        if cfg.use_short_conv:  # fla's ShortConvolution on q, k, v: depthwise causal, SiLU, no bias
            self.q_conv1d, self.k_conv1d, self.v_conv1d = (
                nn.Conv1d(n, n, cfg.conv_size, groups=n, padding=cfg.conv_size - 1, bias=False) for n in self.qkv_dims)

    def qkv(self, x: torch.Tensor, layer_cache: Optional[RecurrentStateCache],
            start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k (B, H, T, dk), v (B, H, T, dv): projections, then the short convs when configured (one
        depthwise conv over [q, k, v], the three convs' weights side by side, so one conv state)."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.cfg.use_short_conv:
            w = torch.cat((self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight))
            qkv = causal_depthwise_conv(torch.cat((q, k, v), dim=-1).transpose(1, 2), w, None, layer_cache,
                                        layer_cache is not None and start > 0, fused=self.cfg.kernel != "torch")
            q, k, v = qkv.transpose(1, 2).split(self.qkv_dims, dim=-1)
        return self.heads(q), self.heads(k), self.heads(v)

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, H*D) -> (B, H, T, D)."""
        return t.unflatten(-1, (self.cfg.n_heads, -1)).transpose(1, 2)

    def mix(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
            layer_cache: Optional[RecurrentStateCache], start: int) -> torch.Tensor:
        """q, k (B, H, T, dk), v (B, H, T, dv), g (B, H, T[, dk]) -> the layer's output (B, T, d_model)."""
        resume = layer_cache is not None and start > 0
        scale = self.dk**-0.5
        if use_kernel(self.cfg.kernel, self.kernel_available, FLA_PACKAGE, x) and not resume:
            # fla takes (B, T, H, D) (older releases default to head_first=True: say so); the state it
            # returns is (B, H, dk, dv) as ours
            layout = {"head_first": False} if "head_first" in inspect.signature(self.kernel).parameters else {}
            o, last = self.kernel(q=q.transpose(1, 2), k=k.transpose(1, 2), v=v.transpose(1, 2),
                                  g=g.transpose(1, 2).contiguous(), scale=scale,
                                  output_final_state=layer_cache is not None, **layout)
            o = o.transpose(1, 2)
            if layer_cache is not None:
                layer_cache.state = last.detach().to(layer_cache.state.dtype)
        else:
            o = torch_linear_attention(q, k, v, g, scale, layer_cache, resume, self.cfg.chunk_size,
                                       fused=self.cfg.kernel != "torch")
        o = self.g_norm_swish_gate(o.transpose(1, 2))  # (B, T, H, dv)
        gate = F.silu(self.g_proj(x)).unflatten(-1, (self.cfg.n_heads, self.dv))
        return self.o_proj((o.to(x.dtype) * gate).flatten(2))

    def new_layer_cache(self, batch_size: int, policy: Optional[CacheConfig] = None, layer_idx: int = 0,
                        n_layers: int = 1) -> RecurrentStateCache:
        """The zero state; a KV policy has nothing to act on here."""
        p = self.q_proj.weight
        conv = (torch.zeros(batch_size, sum(self.qkv_dims), self.cfg.conv_size, device=p.device, dtype=p.dtype)
                if self.cfg.use_short_conv else None)
        return RecurrentStateCache(new_state(batch_size, self.cfg.n_heads, self.dk, self.dv, p), conv)
