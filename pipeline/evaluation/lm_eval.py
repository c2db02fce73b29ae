"""Perplexity by position (StreamingLLM's figure): stream a corpus through a cache policy.

``eval=lm``: ``n_streams`` disjoint stretches of ``n_tokens`` + 1 tokens of the corpus's test split
are fed through the model in chunks of ``chunk`` tokens under the run's cache policy; the NLL of
every next token is kept, and one row per position bucket gives its mean. Positions run far past
the training length: ``full`` keeps every key (dense attention beyond its length), ``sink_window``
keeps ``sink`` + ``window`` keys (``cache.sink=0`` is window-only attention). Chunked feeding is
token-exact: the policy runs with ``prefill=policy``, which equals token-by-token decoding.

``mode=recompute`` is the sliding window with re-computation baseline: the token at position t is
predicted from a fresh forward over the ``recompute_window`` tokens before it (positions 0..W-1),
no cache at all; O(W) work per token, the quality upper bound of a W-token window.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.caches import CacheConfig
from pipeline.config.eval_config import LmEvalConfig
from pipeline.results.rows import append_row, make_row
from tasks.corpus import corpus_tokens


def streams(tokens: np.ndarray, n_streams: int, n_tokens: int) -> np.ndarray:
    """(n_streams, n_tokens + 1) disjoint, evenly spaced stretches of ``tokens``."""
    need = n_tokens + 1
    if len(tokens) < n_streams * need:
        raise ValueError(f"eval.lm: the corpus split has {len(tokens)} tokens, fewer than n_streams={n_streams} x "
                         f"(n_tokens={n_tokens} + 1); lower them or use a larger eval.lm.corpus")
    step = len(tokens) // n_streams
    return np.stack([tokens[i * step : i * step + need] for i in range(n_streams)])


@torch.no_grad()
def stream_nll(model: nn.Module, x: torch.Tensor, policy: CacheConfig, chunk: int) -> tuple[torch.Tensor, int]:
    """NLL (B, N) of x[:, 1:] given everything before, fed through ``policy``; and the peak cache bytes."""
    B, T = x.shape
    cache = model.new_cache(B, policy)
    out, peak = [], 0
    for s in range(0, T - 1, chunk):
        e = min(T - 1, s + chunk)
        logits = model(x[:, s:e], cache)  # (B, c, V)
        out.append(F.cross_entropy(logits.float().transpose(1, 2), x[:, s + 1 : e + 1], reduction="none"))
        peak = max(peak, cache.nbytes())
    return torch.cat(out, dim=1), peak


@torch.no_grad()
def recompute_nll(model: nn.Module, x: torch.Tensor, window: int, batch: int) -> torch.Tensor:
    """NLL (B, N) where each prediction sees only the ``window`` tokens before it, re-encoded from scratch."""
    B, T = x.shape
    W = min(window, T - 1)
    head = model(x[:, :W])  # the first W predictions see their whole prefix: one causal forward
    out = [F.cross_entropy(head.float().transpose(1, 2), x[:, 1 : W + 1], reduction="none")]
    if T - 1 > W:  # window j ends at position W + j and predicts token W + j + 1
        flat = x[:, 1 : T - 1].unfold(1, W, 1).reshape(-1, W)  # (B * (T-1-W), W)
        last = torch.cat([model(flat[i : i + batch])[:, -1] for i in range(0, flat.shape[0], batch)])  # (.., V)
        out.append(F.cross_entropy(last.float(), x[:, W + 1 :].reshape(-1), reduction="none").view(B, -1))
    return torch.cat(out, dim=1)


def evaluate_lm(model: nn.Module, cfg: LmEvalConfig, tokenizer: str, policy: CacheConfig, train_len: int,
                row_base: dict[str, Any], rows_path: Optional[str | Path], device: torch.device | str = "cpu",
                seed: int = 0) -> list[dict[str, Any]]:
    """Rows of mean NLL per position bucket under one policy (or the re-computation baseline)."""
    device = torch.device(device)
    model.eval()
    x = streams(corpus_tokens(cfg.corpus, tokenizer, cfg.split), cfg.n_streams, cfg.n_tokens)
    if cfg.start_token is not None:  # [start, t0 .. t(N-1)]: still N + 1 tokens, N predictions
        x = np.concatenate([np.full((cfg.n_streams, 1), cfg.start_token), x[:, :-1]], axis=1)
    x = torch.from_numpy(x)
    x = x.to(device)
    t0 = time.perf_counter()
    if cfg.mode == "recompute":
        nll, peak = recompute_nll(model, x, cfg.recompute_window, cfg.recompute_batch), 0
        label, prefill = f"recompute(W={cfg.recompute_window})", None
    else:
        policy = dataclasses.replace(policy, prefill="policy", chunk_size=cfg.chunk)  # token-exact streaming
        nll, peak = stream_nll(model, x, policy, cfg.chunk)
        label, prefill = policy.label, "policy"
    seconds = time.perf_counter() - t0
    nll = nll.cpu().numpy()  # (B, N): column j predicts token j + 1
    base = dict(row_base, task="lm", corpus=cfg.corpus, start_token=cfg.start_token,
                lm_split=cfg.split, tokenizer=tokenizer, eval_len=cfg.n_tokens,
                cache=label, prefill=prefill, lm_mode=cfg.mode, seed=seed, depth=None, n_examples=cfg.n_streams,
                cache_bytes=peak // cfg.n_streams, tokens_per_s=nll.size / seconds, status="ok")
    rows = []
    for start in range(0, cfg.n_tokens, cfg.bucket):
        end = min(cfg.n_tokens, start + cfg.bucket)
        mean = float(nll[:, start:end].mean())
        rows.append(make_row(**base, bucket_start=start + 1, bucket_end=end, position=(start + 1 + end) / 2,
                             past_train_len=start + 1 > train_len, nll=mean, ppl=math.exp(min(mean, 50.0))))
    for row in rows:
        if rows_path is not None:
            append_row(rows_path, row)
    return rows
