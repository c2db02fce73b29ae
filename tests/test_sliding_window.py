"""Sliding-window attention: each query sees its last W tokens, and the ring buffer decodes exactly that.

Specification (float64): the layer equals a naive masked softmax attention written here (explicit band mask,
RoPE from HF's formula, GQA by repeating heads) with the same weights; with W >= T it equals the transformer's
full attention; prefill + token-by-token decode equals the forward for T >> W, for any prompt split; the ring
holds exactly 2 W n_kv_heads head_dim values per layer whatever the length; it joins hybrids by name with its
own window; a bad window names its field.
"""

from __future__ import annotations

import math

import pytest
import torch

from models.families.hybrid import Hybrid, HybridConfig
from models.families.sliding_window import SlidingWindowConfig, SlidingWindowLM
from models.families.transformer import Transformer, TransformerConfig
from models.pos.base import PosConfig

F64 = torch.float64


def tiny(window: int, **kw) -> SlidingWindowLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, window=window, init_std=0.2) | kw
    return SlidingWindowLM(SlidingWindowConfig(**cfg)).to(F64).eval()


def rotate_hf(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """HF Llama's RoPE (rotate_half layout) at positions 0..T-1; x (B, H, T, D)."""
    T, D = x.shape[-2], x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=F64) / D)
    ang = torch.arange(T, dtype=F64)[:, None] * inv[None]
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
    half = torch.cat((-x[..., D // 2:], x[..., : D // 2]), -1)
    return x * cos + half * sin


def naive_sliding_window(layer, x: torch.Tensor, window: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + band mask) v, the mask written as a loop over (i, j)."""
    B, T, _ = x.shape
    H, Hkv, D = layer.n_heads, layer.n_kv, layer.hd
    q = rotate_hf(layer.q_proj(x).view(B, T, H, D).transpose(1, 2))
    k = rotate_hf(layer.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)).repeat_interleave(H // Hkv, dim=1)
    v = layer.v_proj(x).view(B, T, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
    mask = torch.full((T, T), float("-inf"), dtype=F64)
    for i in range(T):
        for j in range(T):
            if 0 <= i - j < window:
                mask[i, j] = 0.0
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + mask, dim=-1)
    return layer.o_proj((att @ v).transpose(1, 2).reshape(B, T, H * D))


@pytest.mark.parametrize("window,T", [(1, 9), (5, 23), (8, 8), (30, 12)], ids=str)
def test_layer_equals_naive_masked_softmax_attention(window, T):
    layer = tiny(window).layers[0].token_mixer
    x = torch.randn(2, T, 32, dtype=F64)
    with torch.no_grad():
        # atol: models/pos/positional.py builds its cos/sin tables in float32 (~6e-8 here), the rest is float64
        torch.testing.assert_close(layer(x), naive_sliding_window(layer, x, window), rtol=0, atol=1e-6)


def test_window_covering_the_input_is_full_attention():
    model = tiny(window=64)
    full = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)).to(F64)
    full.load_state_dict(model.state_dict())
    ids = torch.randint(0, 64, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), full.eval()(ids), rtol=0, atol=1e-12)


@pytest.mark.parametrize("pos", ["rope", "alibi"])
@pytest.mark.parametrize("prompt", [0, 3, 7, 25])
def test_decode_equals_forward_far_beyond_the_window(prompt, pos):
    model = tiny(window=7, pos=PosConfig(rule=pos))
    ids = torch.randint(0, 64, (2, 60))  # T >> W: every slot of the ring is overwritten many times
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2)
        parts = [model(ids[:, :prompt], cache)] if prompt else []
        parts += [model(ids[:, t : t + 1], cache) for t in range(prompt, 60)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-10)


def test_ring_holds_exactly_the_window_whatever_the_length():
    model = tiny(window=6)
    cfg = model.cfg
    expected = cfg.n_layers * 2 * 2 * cfg.n_kv_heads * cfg.window * cfg.head_dim * 8  # layers, k+v, batch, float64
    for T in (3, 6, 40):
        cache = model.new_cache(2)
        with torch.no_grad():
            model(torch.randint(0, 64, (2, T)), cache)
            model(torch.randint(0, 64, (2, 1)), cache)
        assert cache.nbytes() == expected


def test_joins_a_hybrid_with_its_own_window():
    cfg = HybridConfig(vocab_size=64, d_model=32, layers=["sliding_window", "attention"],
                       mixer_args={"sliding_window": {"window": 4}})
    model = Hybrid(cfg).eval()
    assert model.layers[0].token_mixer.cfg.window == 4
    ids = torch.randint(0, 64, (1, 20))
    with torch.no_grad():
        cache = model.new_cache(1)
        steps = torch.cat([model(ids[:, t : t + 1], cache) for t in range(20)], dim=1)
        torch.testing.assert_close(steps, model(ids), rtol=1e-4, atol=1e-5)


def test_bad_window_names_the_field():
    with pytest.raises(ValueError, match="model.window=0"):
        SlidingWindowConfig(window=0)
