"""StreamingLLM's observation, measured: the attention mass every head puts on the first token.

``eval=sinks`` feeds ``n_sequences`` stretches of ``length`` tokens of a corpus through the model
with full causal attention and, for every attention layer and query head, averages over queries
(positions >= ``skip``) the softmax weight on key 0. A uniform head would give mean 1/(t+1); an
attention sink gives nearly 1. One row per (layer, head); ``scripts/figures/sinks.py`` draws them.

The weights are recomputed from each layer's input with its own projections and positional rule
(a forward pre-hook), so the probe reads any checkpoint of our attention modules, trained here or
imported, without touching the attention fast path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from pipeline.config.eval_config import SinkProbeConfig
from pipeline.results.rows import append_row, make_row
from tasks.corpus import corpus_tokens


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """Every self-attention module (q/k/v projections and a positional module), in layer order."""
    return [m for m in model.modules() if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "positional"))]


def attention_weights(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Causal softmax weights (B, H, T, T) of one attention module for its input x (B, T, d)."""
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, attn.n_heads, attn.hd).transpose(1, 2)  # (B, H, T, hd)
    k = attn.k_proj(x).view(B, T, attn.n_kv, attn.hd).transpose(1, 2)  # (B, Hkv, T, hd)
    pos = torch.arange(T, device=x.device)
    q, k = attn.positional.rotate(q, pos, T), attn.positional.rotate(k, pos, T)
    k = k.repeat_interleave(attn.n_heads // attn.n_kv, dim=1)  # (B, H, T, hd)
    scores = (q @ k.transpose(-1, -2)).float() * attn.hd**-0.5  # (B, H, T, T)
    bias = attn.positional.bias(pos, pos)
    if bias is not None:
        scores = scores + bias
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


@torch.no_grad()
def sink_mass(model: nn.Module, x: torch.Tensor, skip: int = 1) -> np.ndarray:
    """(layers, heads) mean attention weight on key 0 over queries >= ``skip`` of the batch x (B, T)."""
    layers = attention_layers(model)
    if not layers:
        raise ValueError("eval=sinks needs attention layers; this model has none (a pure Mamba model?)")
    out: list[np.ndarray] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: out.append(
        attention_weights(m, args[0])[:, :, skip:, 0].mean(dim=(0, 2)).cpu().numpy())) for m in layers]
    try:
        model.eval()
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return np.stack(out)


def probe_sinks(model: nn.Module, cfg: SinkProbeConfig, tokenizer: str, train_len: int, row_base: dict[str, Any],
                rows_path: Optional[str | Path], device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """One row per (layer, head): ``sink_mass`` and the uniform-attention reference ``uniform_mass``."""
    length = cfg.length or train_len
    tokens = corpus_tokens(cfg.corpus, tokenizer, cfg.split)
    step = (len(tokens) - length) // cfg.n_sequences
    if step < 1:
        raise ValueError(f"eval.sinks: corpus split has {len(tokens)} tokens, too few for n_sequences="
                         f"{cfg.n_sequences} x length={length}")
    seqs = np.stack([tokens[i * step : i * step + length] for i in range(cfg.n_sequences)])
    if cfg.start_token is not None:
        seqs = np.concatenate([np.full((cfg.n_sequences, 1), cfg.start_token), seqs[:, :-1]], axis=1)
    x = torch.from_numpy(seqs).to(device)
    mass = sink_mass(model, x, cfg.skip)
    uniform = float(np.mean(1.0 / (np.arange(cfg.skip, length) + 1)))
    rows = []
    for layer, heads in enumerate(mass):
        for head, m in enumerate(heads):
            rows.append(make_row(**row_base, task="sinks", corpus=cfg.corpus, start_token=cfg.start_token,
                                 eval_len=length, layer=layer, head=head,
                                 sink_mass=float(m), uniform_mass=uniform, n_examples=cfg.n_sequences, status="ok"))
    for row in rows:
        if rows_path is not None:
            append_row(rows_path, row)
    return rows
