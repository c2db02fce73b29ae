"""The Mamba mixer (Gu & Dao 2023): a selective state-space layer, decoded through the cache protocol.

``MambaMixer`` is the reference block (state-spaces/mamba ``Mamba``): in_proj -> depthwise causal
conv + SiLU -> x_proj (dt, B, C) -> dt_proj -> selective scan -> y * SiLU(z) -> out_proj.
``MambaConfig`` is the config its layers read (and the mamba family's, models/families/mamba.py).

Three paths compute the same function: the pure-PyTorch scan (models/scan.py, the reference;
``kernel=torch``), the fused C scan on CPU (models/native_scan.py; ``kernel=auto`` where a C compiler
built it) and the CUDA kernels of ``mamba_ssm`` / ``causal_conv1d`` when they import and the input is
on a GPU. The decode "cache" is a ``MambaLayerCache`` per layer: the last
d_conv conv inputs and the SSM state, whose size does not depend on the length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.caches import CacheConfig, LayerCache
from models.layers import Block
from models.lm import check_dtype
from models.mixers import MIXERS, MixerSpec
from models.scan import selective_scan
from models.short_conv import causal_conv_silu

try:  # the kernels import only where their CUDA extensions were built
    from causal_conv1d import causal_conv1d_fn
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    KERNELS_AVAILABLE = True
except Exception:  # ImportError, or a RuntimeError from a broken extension build
    causal_conv1d_fn = selective_scan_fn = None
    KERNELS_AVAILABLE = False

KERNELS = ("auto", "torch", "cuda")


@dataclass
class MambaConfig:
    family: str = "mamba"
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    # the SSM block (reference defaults)
    d_state: int = 16  # N: state size per channel
    d_conv: int = 4  # depthwise causal conv width
    expand: int = 2  # d_inner = expand * d_model
    dt_rank: Optional[int] = None  # None: ceil(d_model / 16)
    dt_min: float = 0.001  # dt initialised log-uniform in [dt_min, dt_max] ...
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # ... and floored here
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj bias
    # the language model
    max_seq_len: int = 8192  # longest input evaluation may ask for (no positional limit)
    tie_embeddings: bool = True  # the reference ties the head to the embedding
    dtype: Optional[str] = None  # parameter dtype (models/lm.py DTYPES); None: float32 / stored on import
    norm_eps: float = 1e-5
    init_std: float = 0.02  # embedding (and untied head) init
    kernel: str = "auto"  # auto: CUDA kernels on GPU, the fused C scan on CPU | torch (PyTorch scan) | cuda (required)
    chunk_size: Optional[int] = None  # torch scan: tokens per memory chunk; None: models/scan.py picks
    prefill_block: int = 128  # no-grad prefill through a cache runs in blocks of this many tokens

    def __post_init__(self) -> None:
        if self.family != "mamba":
            raise ValueError(f"model.family={self.family!r} but this is the mamba config")
        if self.dt_rank is None:
            self.dt_rank = math.ceil(self.d_model / 16)
        self._check_knobs()
        check_dtype(self.dtype)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    def _check_knobs(self) -> None:
        positive = ("vocab_size", "d_model", "n_layers", "max_seq_len", "d_state", "d_conv", "expand", "dt_rank",
                    "prefill_block")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"model.chunk_size={self.chunk_size} must be >= 1 or None (auto)")
        if not 0.0 < self.dt_min <= self.dt_max:
            raise ValueError(f"model.dt_min={self.dt_min}, model.dt_max={self.dt_max}: need 0 < dt_min <= dt_max")
        if self.dt_init_floor <= 0:
            raise ValueError(f"model.dt_init_floor={self.dt_init_floor} must be > 0")
        if self.norm_eps <= 0 or self.init_std <= 0:
            raise ValueError(f"model.norm_eps={self.norm_eps}, model.init_std={self.init_std} must be > 0")
        if self.kernel not in KERNELS:
            raise ValueError(f"model.kernel={self.kernel!r}; allowed: {list(KERNELS)}")


def require_kernels(kernel: str) -> None:
    """kernel=cuda is a promise: fail loudly where the kernels cannot run (never fall back)."""
    if kernel == "cuda" and not KERNELS_AVAILABLE:
        raise RuntimeError(
            "model.kernel='cuda' but mamba_ssm / causal_conv1d do not import here (they need CUDA "
            "builds: pip install '.[cuda]' --no-build-isolation on a GPU machine); "
            "use model.kernel=auto or torch for the pure-PyTorch scan"
        )


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp32 for half types, unchanged for fp32/fp64 (so float64 tests stay exact)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class MambaLayerCache(LayerCache):
    """One Mamba layer's decode state; its bytes do not depend on how many tokens were seen."""

    def __init__(self, conv_state: torch.Tensor, ssm_state: torch.Tensor) -> None:
        self.conv_state = conv_state  # (B, d_inner, d_conv): the last d_conv conv inputs
        self.ssm_state = ssm_state  # (B, d_inner, d_state), at least float32

    def tensors(self) -> Iterator[torch.Tensor]:
        yield self.conv_state
        yield self.ssm_state


class MambaMixer(nn.Module):
    """The selective-SSM token mixer; (B, T, d_model) -> (B, T, d_model).

    Args (from the config): d_model; d_state=16; d_conv=4; expand=2; dt_rank=ceil(d_model/16);
    dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4 (dt bias init); conv_bias=True; bias=False;
    kernel=auto; chunk_size=None. ``n_layers`` rescales out_proj by 1/sqrt(n_layers).
    """

    def __init__(self, cfg, n_layers: int) -> None:
        super().__init__()
        self.cfg = cfg
        d_inner, N, R = cfg.expand * cfg.d_model, cfg.d_state, cfg.dt_rank
        self.d_inner = d_inner
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=cfg.bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner, padding=cfg.d_conv - 1,
                                bias=cfg.conv_bias)
        self.x_proj = nn.Linear(d_inner, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=cfg.bias)
        # S4D-real: A = -exp(A_log) = -(1..N) per channel; kept fp32 and out of weight decay
        A = torch.arange(1, N + 1, dtype=torch.float32).repeat(d_inner, 1)  # (d_inner, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner, dtype=torch.float32))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self._init_weights(n_layers)

    @torch.no_grad()
    def _init_weights(self, n_layers: int) -> None:
        cfg = self.cfg
        bound = cfg.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        # dt ~ exp(U(ln dt_min, ln dt_max)) floored; the bias is softplus^-1(dt) so that
        # softplus(dt_proj(.)) starts in that range
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                       + math.log(cfg.dt_min)).clamp(min=cfg.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True
        for lin in (self.in_proj, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        # prenorm residual rescale (GPT-2 style): out_proj keeps its default init / sqrt(n_layers)
        self.out_proj.weight.div_(math.sqrt(n_layers))

    def _use_kernels(self, x: torch.Tensor) -> bool:
        if self.cfg.kernel == "torch":
            return False
        if self.cfg.kernel == "cuda":
            require_kernels("cuda")
            if not x.is_cuda:
                raise RuntimeError(f"model.kernel='cuda' but the input is on {x.device}")
            return True
        return KERNELS_AVAILABLE and x.is_cuda

    def forward(self, hidden: torch.Tensor, layer_cache: Optional[MambaLayerCache] = None,
                start: int = 0) -> torch.Tensor:
        """hidden (B, T, d_model); with a cache, tokens start..start+T-1 continue its state."""
        B, T, _ = hidden.shape
        if layer_cache is not None and start > 0 and T == 1:
            return self.step(hidden, layer_cache)
        xz = self.in_proj(hidden).transpose(1, 2)  # (B, 2 d_inner, T)
        x, z = xz.chunk(2, dim=1)  # (B, d_inner, T) each
        A = -torch.exp(_at_least_fp32(self.A_log))  # (d_inner, N)
        w = self.conv1d.weight.squeeze(1)  # (d_inner, d_conv)
        resume = layer_cache is not None and start > 0  # the state holds earlier tokens
        # the CUDA scan takes no initial state, so resuming a cache with T > 1 runs the torch scan
        use_kernels = self._use_kernels(x) and not resume
        if layer_cache is not None:
            # conv input with its left context: the cached last d_conv-1 inputs (zeros when fresh)
            x_ctx = torch.cat((layer_cache.conv_state[..., 1:].to(x.dtype) if resume else
                               x.new_zeros(B, self.d_inner, self.cfg.d_conv - 1), x), dim=2)
            layer_cache.conv_state = x_ctx[..., -self.cfg.d_conv:].detach().to(layer_cache.conv_state.dtype)
        if use_kernels:
            x = causal_conv1d_fn(x.contiguous(), w, self.conv1d.bias, activation="silu")
        else:  # in (B, T, d_inner), x's layout from in_proj (models/short_conv.py); the scan reads it as is
            left = x_ctx[..., :self.cfg.d_conv - 1].transpose(1, 2) if layer_cache is not None else None
            x = causal_conv_silu(x.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, left,
                                 fused=self.cfg.kernel != "torch")[0].transpose(1, 2)
        dt, Bm, Cm = self.x_proj(x.transpose(1, 2)).split(
            [self.cfg.dt_rank, self.cfg.d_state, self.cfg.d_state], dim=-1)  # (B, T, R), (B, T, N) x2
        # (B, d_inner, T) and (B, N, T): transposed views for the torch scan, which reads them (B, T, X)
        # without copies; contiguous for the CUDA kernel
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # bias in the scan
        Bm, Cm = Bm.transpose(1, 2), Cm.transpose(1, 2)
        if use_kernels:
            dt, Bm, Cm = dt.contiguous(), Bm.contiguous(), Cm.contiguous()
        args = (x, dt, A, Bm, Cm, _at_least_fp32(self.D), z.contiguous() if use_kernels else z)
        kw = dict(delta_bias=_at_least_fp32(self.dt_proj.bias), delta_softplus=True,
                  return_last_state=layer_cache is not None)
        if use_kernels:
            out = selective_scan_fn(*args, **kw)
        else:
            out = selective_scan(*args, **kw, chunk_size=self.cfg.chunk_size, fused=self.cfg.kernel != "torch",
                                 initial_state=layer_cache.ssm_state if resume else None)
        if layer_cache is not None:
            y, last = out
            layer_cache.ssm_state = last.detach().to(layer_cache.ssm_state.dtype)
        else:
            y = out
        return self.out_proj(y.transpose(1, 2))  # (B, T, d_model)

    def step(self, hidden: torch.Tensor, cache: MambaLayerCache) -> torch.Tensor:
        """One token (B, 1, d_model) through the recurrence, updating ``cache`` in place of a scan."""
        x, z = self.in_proj(hidden[:, 0]).chunk(2, dim=-1)  # (B, d_inner) each
        conv_state = torch.cat((cache.conv_state[..., 1:], x[..., None].to(cache.conv_state.dtype)), dim=-1)
        cache.conv_state = conv_state.detach()  # (B, d_inner, d_conv): shift left, append x
        x = (conv_state.to(x.dtype) * self.conv1d.weight.squeeze(1)).sum(-1)  # (B, d_inner)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        dt, Bm, Cm = self.x_proj(x).split([self.cfg.dt_rank, self.cfg.d_state, self.cfg.d_state], dim=-1)
        f = cache.ssm_state.dtype
        dt = F.softplus(self.dt_proj(dt).to(f))  # (B, d_inner)
        A = -torch.exp(self.A_log.to(f))  # (d_inner, N)
        h = (torch.exp(dt[..., None] * A) * cache.ssm_state
             + (dt * x.to(f))[..., None] * Bm.to(f)[:, None, :])  # (B, d_inner, N)
        cache.ssm_state = h.detach()
        y = (h @ Cm.to(f)[..., None]).squeeze(-1) + self.D.to(f) * x.to(f)  # (B, d_inner)
        y = (y * F.silu(z.to(f))).to(hidden.dtype)
        return self.out_proj(y)[:, None]  # (B, 1, d_model)

    def new_layer_cache(self, batch_size: int, policy: Optional[CacheConfig] = None, layer_idx: int = 0,
                        n_layers: int = 1) -> MambaLayerCache:
        """Zero conv and SSM states; a KV policy has nothing to act on here."""
        p = self.in_proj.weight
        return MambaLayerCache(
            torch.zeros(batch_size, self.d_inner, self.cfg.d_conv, device=p.device, dtype=p.dtype),
            torch.zeros(batch_size, self.d_inner, self.cfg.d_state, device=p.device,
                        dtype=torch.promote_types(p.dtype, torch.float32)),
        )


def build_block(cfg: MambaConfig, layer_idx: int, shared: dict) -> Block:
    """x + mixer(RMSNorm(x)): no MLP, as the reference."""
    require_kernels(cfg.kernel)
    return Block(MambaMixer(cfg, cfg.n_layers), cfg.d_model, cfg.norm_eps)


MIXERS.register("mamba")(MixerSpec("mamba", MambaConfig, build_block, letter="M"))
