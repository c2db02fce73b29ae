"""Predictions two ways: teacher-forced (one forward) and prefill + greedy decode through a cache.

Decoding prefills everything before the first answer token, then feeds the rest one token at a
time: given tokens where the task provides them (a later question), the model's own prediction
at answer positions (free-running). For suffix answers (NIAH) this is plain greedy decoding.
With the ``full`` cache both ways must give the same predictions.
"""

from __future__ import annotations

import torch
from torch import nn

from models.cache import CacheConfig, ModelCache


@torch.no_grad()
def teacher_forced_predictions(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B, L) predictions: position t holds argmax of the logits after tokens[:t] (t >= 1)."""
    logits = model(tokens[:, :-1])  # (B, L-1, V)
    preds = tokens.clone()
    preds[:, 1:] = logits.argmax(-1)
    return preds


@torch.no_grad()
def prefill(model: nn.Module, prompt: torch.Tensor, cache: ModelCache, policy: CacheConfig) -> torch.Tensor:
    """Run the prompt into the cache; returns the last position's logits (B, V).

    ``prefill=dense`` feeds the prompt in one call (the policy compresses afterwards);
    ``prefill=policy`` feeds chunks of ``chunk_size`` so the policy applies during prefill.
    """
    if policy.prefill == "dense":
        return model(prompt, cache)[:, -1]
    logits = None
    for start in range(0, prompt.shape[1], policy.chunk_size):
        logits = model(prompt[:, start : start + policy.chunk_size], cache)
    return logits[:, -1]


@torch.no_grad()
def decode_predictions(model: nn.Module, tokens: torch.Tensor, answer_mask: torch.Tensor,
                       policy: CacheConfig, free_running: bool = True) -> tuple[torch.Tensor, int]:
    """(B, L) predictions through the cache, and the largest cache size in bytes seen.

    ``free_running=False`` feeds the true answer tokens instead of the predictions: then, with the
    full cache, the predictions equal ``teacher_forced_predictions`` exactly (the contract test).
    """
    B, L = tokens.shape
    first = int(answer_mask.float().argmax(dim=1).min())  # common prompt prefix of the batch
    cache = model.new_cache(B, policy)
    cache.reserve(L - 1)  # the last token is never fed
    logits = prefill(model, tokens[:, :first], cache, policy)  # (B, V)
    peak_cache = cache.nbytes()
    preds = tokens.clone()
    for t in range(first, L):
        pred = logits.argmax(-1)  # (B,)
        preds[:, t] = pred
        if t == L - 1:
            break
        feed = torch.where(answer_mask[:, t], pred, tokens[:, t]) if free_running else tokens[:, t]
        logits = model(feed[:, None], cache)[:, -1]
        peak_cache = max(peak_cache, cache.nbytes())
    return preds, peak_cache
