"""The Mamba-2 mixer (Dao & Gu 2024, SSD): a multi-head state space whose decay is one scalar per head and token.

Per head h with state H_t (d_state x headdim): H_t = exp(dt_t A_h) H_{t-1} + B_t^T (dt_t x_t),
y_t = C_t H_t + D_h x_t, dt = softplus(raw + dt_bias), A_h = -exp(A_log_h); B and C are shared by
the heads of a group (``ngroups``). That is decayed linear attention with q = C, k = B, v = dt x and a
scalar log-decay dt A (models/linear_attention.py), so the chunked form is the "minimal SSD" of the
paper. The block is state-spaces/mamba's ``Mamba2`` (and transformers' ``Mamba2Mixer``), with its
parameter names: in_proj -> [z, xBC, dt]; depthwise causal conv1d + SiLU over xBC; the SSD; a gated
RMSNorm ``norm`` (rmsnorm(y * silu(z)) per group); out_proj. No MLP, as the reference.

Paths: mamba-ssm's ``mamba_chunk_scan_combined`` with causal-conv1d when they import and the input is on a GPU;
otherwise (``model.kernel=auto``) the SSD's own chunked form (models/ssd_chunked.py: C B^T once per group, the
decay mask a fused C pass on float32 CPU) up to one chunk, and past it on float32 CPU the fused C recurrence
(models/native_linear_attention.py), whose backward keeps only its inputs; ``model.kernel=torch`` runs the
generic chunked decayed attention (models/linear_attention.py), the reference. The decode "cache" holds the last
d_conv conv inputs and the (B, H, d_state, headdim) state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models import native_gated_norm, native_linear_attention
from models.caches import CacheConfig
from models.kernels import require_kernel, use_kernel
from models.layers import Block
from models.linear_attention import DEFAULT_CHUNK_SCALAR, RecurrentStateCache, at_least_fp32
from models.mixers import MIXERS, MixerSpec
from models.recurrent import RecurrentLMConfig, causal_depthwise_conv, new_state, torch_linear_attention
from models.ssd_chunked import ssd_chunked

try:  # the kernels import only where their CUDA extensions (and triton) were built
    from causal_conv1d import causal_conv1d_fn
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    KERNELS_AVAILABLE = True
except Exception:  # ImportError, or a RuntimeError from a broken extension build
    causal_conv1d_fn = mamba_chunk_scan_combined = None
    KERNELS_AVAILABLE = False

KERNEL_CHUNK = 256  # mamba-ssm's default chunk for its kernel when model.chunk_size is None


@dataclass
class Mamba2Config(RecurrentLMConfig):
    family: str = "mamba2"
    # the SSD block (reference defaults, mamba_ssm/modules/mamba2.py)
    d_state: int = 128  # N: state size per head channel
    d_conv: int = 4  # depthwise causal conv width over [x, B, C]
    expand: int = 2  # d_inner = expand * d_model
    headdim: int = 64  # P: channels per head; n_heads = d_inner / headdim
    ngroups: int = 1  # B and C are shared by the n_heads / ngroups heads of a group
    A_init_min: float = 1.0  # A = -exp(A_log), A_log = log(U(A_init_min, A_init_max))
    A_init_max: float = 16.0
    dt_min: float = 0.001  # dt initialised log-uniform in [dt_min, dt_max] ...
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # ... and floored here
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj bias
    tie_embeddings: bool = True  # the reference ties the head to the embedding

    def __post_init__(self) -> None:
        self.check_lm_fields("mamba2")
        for name in ("d_state", "d_conv", "expand", "headdim", "ngroups"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.d_inner % self.headdim:
            raise ValueError(f"model.headdim={self.headdim} must divide d_inner = expand * d_model = {self.d_inner}")
        if self.n_heads % self.ngroups:
            raise ValueError(f"model.ngroups={self.ngroups} must divide n_heads = d_inner / headdim = {self.n_heads}")
        if not 0.0 < self.A_init_min <= self.A_init_max:
            raise ValueError(f"model.A_init_min={self.A_init_min}, model.A_init_max={self.A_init_max}: need "
                             "0 < A_init_min <= A_init_max")
        if not 0.0 < self.dt_min <= self.dt_max:
            raise ValueError(f"model.dt_min={self.dt_min}, model.dt_max={self.dt_max}: need 0 < dt_min <= dt_max")
        if self.dt_init_floor <= 0:
            raise ValueError(f"model.dt_init_floor={self.dt_init_floor} must be > 0")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        return self.d_inner // self.headdim


class GatedRMSNorm(nn.Module):
    """rmsnorm(y * silu(z)) over each group's channels, times ``weight`` (the reference's norm_before_gate=False)."""

    def __init__(self, dim: int, groups: int, eps: float, fused: bool = False) -> None:
        super().__init__()
        self.groups, self.eps, self.fused = groups, eps, fused  # fused: the C pass on float32 CPU (model.kernel)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.fused and native_gated_norm.usable(y, z, self.weight):
            rows = (t.unflatten(-1, (self.groups, -1)) for t in (y, z))
            return native_gated_norm.fused_gated_rms_norm(*rows, self.weight, self.eps, True).flatten(-2)
        y = at_least_fp32(y) * F.silu(at_least_fp32(z))
        y = F.rms_norm(y.unflatten(-1, (self.groups, -1)), (y.shape[-1] // self.groups,), eps=self.eps)
        return y.flatten(-2) * self.weight


class Mamba2Mixer(nn.Module):
    """(B, T, d_model) -> (B, T, d_model); ``new_layer_cache`` is its conv inputs and SSD state."""

    def __init__(self, cfg: Mamba2Config) -> None:
        super().__init__()
        require_kernel(cfg.kernel, KERNELS_AVAILABLE, "mamba_ssm / causal_conv1d")
        self.cfg = cfg
        d_inner, H, GN = cfg.d_inner, cfg.n_heads, cfg.ngroups * cfg.d_state
        self.conv_dim = d_inner + 2 * GN
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner + 2 * GN + H, bias=cfg.bias)  # z, xBC, dt
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(H, dtype=torch.float32))
        self.A_log = nn.Parameter(torch.empty(H, dtype=torch.float32))
        self.D = nn.Parameter(torch.ones(H, dtype=torch.float32))
        self.norm = GatedRMSNorm(d_inner, cfg.ngroups, cfg.norm_eps, fused=cfg.kernel != "torch")
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=cfg.bias)
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        cfg, H = self.cfg, self.cfg.n_heads
        # dt ~ exp(U(ln dt_min, ln dt_max)) floored; dt_bias = softplus^-1(dt)
        dt = torch.exp(torch.rand(H) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = dt.clamp(min=cfg.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_bias._no_reinit = True
        self.A_log.copy_(torch.log(torch.empty(H).uniform_(cfg.A_init_min, cfg.A_init_max)))
        for lin in (self.in_proj, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        # prenorm residual rescale (as Mamba's): out_proj keeps its default init / sqrt(n_layers)
        self.out_proj.weight.div_(math.sqrt(cfg.n_layers))

    def _conv(self, xBC: torch.Tensor, cache: Optional[RecurrentStateCache], resume: bool,
              kernels: bool) -> torch.Tensor:
        """Depthwise causal conv + SiLU over xBC (B, conv_dim, T), continuing and updating a cache's inputs."""
        if not kernels:
            return causal_depthwise_conv(xBC, self.conv1d.weight, self.conv1d.bias, cache, resume,
                                         fused=self.cfg.kernel != "torch")
        if cache is not None:  # kernels never resume: the state is the last d_conv inputs after zeros
            K = self.cfg.d_conv
            cache.conv_state = F.pad(xBC, (K, 0))[..., -K:].detach().to(cache.conv_state.dtype)
        return causal_conv1d_fn(xBC.contiguous(), self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")

    def forward(self, hidden: torch.Tensor, layer_cache: Optional[RecurrentStateCache] = None,
                start: int = 0) -> torch.Tensor:
        """hidden (B, T, d_model); with a cache, tokens start..start+T-1 continue its state."""
        cfg = self.cfg
        Bsz, T, _ = hidden.shape
        H, P, G, N = cfg.n_heads, cfg.headdim, cfg.ngroups, cfg.d_state
        resume = layer_cache is not None and start > 0
        # the SSD kernel's state layout differs and the conv kernel takes no initial state: resuming runs torch
        kernels = use_kernel(cfg.kernel, KERNELS_AVAILABLE, "mamba_ssm / causal_conv1d", hidden) and not resume
        z, xBC, dt = self.in_proj(hidden).split([cfg.d_inner, self.conv_dim, H], dim=-1)
        xBC = self._conv(xBC.transpose(1, 2), layer_cache, resume, kernels).transpose(1, 2)
        x, Bm, Cm = xBC.split([cfg.d_inner, G * N, G * N], dim=-1)
        x = x.unflatten(-1, (H, P))  # (B, T, H, P)
        A = -torch.exp(at_least_fp32(self.A_log))  # (H,)
        if kernels:
            out = mamba_chunk_scan_combined(
                x, dt, A, Bm.unflatten(-1, (G, N)), Cm.unflatten(-1, (G, N)), chunk_size=cfg.chunk_size or KERNEL_CHUNK,
                D=self.D, z=None, dt_bias=self.dt_bias, dt_softplus=True, return_final_states=layer_cache is not None)
            if layer_cache is not None:
                y, last = out  # last: (B, H, P, N) -> ours (B, H, N, P)
                layer_cache.state = last.transpose(-1, -2).detach().to(layer_cache.state.dtype)
            else:
                y = out
        else:
            dt = F.softplus(at_least_fp32(dt) + at_least_fp32(self.dt_bias))  # (B, T, H)
            # one group: B and C are every head's, a stride-0 view (the fused kernel reads it without copies)
            per_head = (lambda t: t[:, :, None].expand(Bsz, T, H, N).transpose(1, 2)) if G == 1 else (  # noqa: E731
                lambda t: t.unflatten(-1, (G, N)).repeat_interleave(H // G, dim=2).transpose(1, 2))
            v = at_least_fp32(x) * dt[..., None]  # (B, T, H, P)
            if cfg.kernel == "torch" or (resume and T == 1) or self._recurrence_pays(T, v):
                # the generic decayed attention: the reference, the decode step, and past one chunk on CPU the fused
                # recurrence (saves its inputs only: the chunked form keeps every chunk's state for the backward,
                # 1.7x a transformer's fwd+bwd memory at T=2048 where the recurrence's is 1.07x, at the same speed)
                y = torch_linear_attention(per_head(Cm), per_head(Bm), v.transpose(1, 2), (dt * A).transpose(1, 2),
                                           1.0, layer_cache, resume, cfg.chunk_size,
                                           fused=cfg.kernel != "torch").transpose(1, 2)
            else:  # the SSD's own chunked form: C B^T once per group, the decay mask fused (models/ssd_chunked.py)
                y, state = ssd_chunked(*(at_least_fp32(t).unflatten(-1, (G, N)) for t in (Cm, Bm)), v, dt * A,
                                       layer_cache.state if resume else None, cfg.chunk_size,
                                       final_state=layer_cache is not None)
                if layer_cache is not None:
                    layer_cache.state = state.detach().to(layer_cache.state.dtype)
            y = y + at_least_fp32(self.D)[:, None] * x
        return self.out_proj(self.norm(y.flatten(2), z).to(hidden.dtype))

    def _recurrence_pays(self, T: int, v: torch.Tensor) -> bool:
        """Past one chunk, float32 on CPU: the fused recurrence (lean memory) instead of the chunked form
        (at one chunk the chunked form is 1.4x faster: one (Q x Q) matmul per group and a fused mask)."""
        return T > (self.cfg.chunk_size or DEFAULT_CHUNK_SCALAR) and native_linear_attention.usable(v)

    def new_layer_cache(self, batch_size: int, policy: Optional[CacheConfig] = None, layer_idx: int = 0,
                        n_layers: int = 1) -> RecurrentStateCache:
        """Zero conv inputs and state; a KV policy has nothing to act on here."""
        p, cfg = self.in_proj.weight, self.cfg
        return RecurrentStateCache(new_state(batch_size, cfg.n_heads, cfg.d_state, cfg.headdim, p),
                                   torch.zeros(batch_size, self.conv_dim, cfg.d_conv, device=p.device, dtype=p.dtype))


def build_block(cfg: Mamba2Config, layer_idx: int, shared: dict) -> Block:
    """x + mixer(RMSNorm(x)): no MLP, as the reference."""
    return Block(Mamba2Mixer(cfg), cfg.d_model, cfg.norm_eps)


MIXERS.register("mamba2")(MixerSpec("mamba2", Mamba2Config, build_block))
