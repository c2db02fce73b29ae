"""The attention-sink probe reads the weights the attention module really uses: weights @ values,
through the output projection, equal the module's own (SDPA) output."""

from __future__ import annotations

import torch

from models.families.transformer import Transformer, TransformerConfig
from pipeline.evaluation.attention_probe import attention_layers, attention_weights, sink_mass


def test_probe_weights_reproduce_the_attention_output() -> None:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2)).eval()
    x = torch.randn(2, 12, 32)
    for attn in attention_layers(model):
        w = attention_weights(attn, x)  # (B, H, T, T)
        assert torch.allclose(w.sum(-1), torch.ones(2, 4, 12)) and (w.triu(1) == 0).all()
        v = attn.v_proj(x).view(2, 12, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)  # (B, H, T, hd)
        y = attn.o_proj((w @ v).transpose(1, 2).reshape(2, 12, 32))
        torch.testing.assert_close(y, attn(x), atol=1e-5, rtol=1e-5)


def test_sink_mass_shape_and_the_first_query() -> None:
    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_heads=4, n_layers=3)).eval()
    tokens = torch.randint(0, 64, (2, 16))
    mass = sink_mass(model, tokens, skip=1)
    assert mass.shape == (3, 4) and ((mass > 0) & (mass < 1)).all()
    assert (sink_mass(model, tokens[:, :1], skip=0) == 1).all(), "query 0 sees only token 0"
