"""Predictions two ways: teacher-forced (one forward) and prefill + greedy decode through a cache.

The evaluation protocol (``eval.protocol``), the same for every cache policy including ``full``:

- ``question_decoded`` (default; what DuoAttention's and Quest's ``pred.py`` do): the context is
  prefilled (densely, or through the policy with ``cache.prefill=policy``), then the question —
  from its opening marker, or the last ``eval.decode_tail`` prompt tokens — is fed one token at a
  time through the policy, then the answer is decoded. So the logits of the first answer token
  are computed by the compressed cache.
- ``question_prefilled`` (ablation; the earlier behaviour): everything before the first answer
  token is prefilled, so under ``prefill=dense`` the first answer token sees full attention.

After the prompt, the rest is fed one token at a time: given tokens where the task provides them
(a later question), the model's own prediction at answer positions (free-running). With the
``full`` cache every protocol gives the teacher-forced predictions.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from models.caches import CacheConfig, ModelCache
from pipeline.config.eval_config import PROTOCOLS


@torch.no_grad()
def teacher_forced_predictions(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B, L) predictions: position t holds argmax of the logits after tokens[:t] (t >= 1)."""
    logits = model(tokens[:, :-1])  # (B, L-1, V)
    preds = tokens.clone()
    preds[:, 1:] = logits.argmax(-1)
    return preds


def question_starts(tokens: np.ndarray, answer_mask: np.ndarray, openers: Iterable[int]) -> np.ndarray:
    """(n,) index where each row's question starts: its last opener token before the first answer.

    ``openers`` are the tokens that open a question (the first field of a task's ``signatures()``,
    e.g. QUERY, COUNT, FREQ). A row without one (MQAR: answers follow keys directly) starts its
    question at the first answer token, i.e. nothing of the prompt is decoded.
    """
    first = answer_mask.argmax(axis=1)  # (n,)
    cols = np.arange(tokens.shape[1])[None, :]
    is_opener = np.isin(tokens, [o for o in openers if o >= 0]) & (cols < first[:, None])
    last = np.where(is_opener, cols, -1).max(axis=1)
    return np.where(last >= 0, last, first)


def task_openers(task: object) -> set[int]:
    """The question-opening tokens of a task (from ``signatures()``; empty if it has none)."""
    sigs = task.signatures()
    return {s[0] for s in sigs if s[0] >= 0}


def decode_start(tokens: np.ndarray, answer_mask: np.ndarray, openers: Iterable[int],
                 protocol: str = "question_decoded", decode_tail: int | None = None) -> int:
    """The batch's first position fed one token at a time (everything before it is prefilled)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol={protocol!r}; allowed: {list(PROTOCOLS)}")
    first = int(answer_mask.argmax(axis=1).min())  # common prompt prefix of the batch
    if protocol == "question_prefilled":
        return first
    if decode_tail is not None:
        return max(1, first - decode_tail)
    return max(1, int(question_starts(tokens, answer_mask, openers).min()))


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
def run_prompt(model: nn.Module, prompt: torch.Tensor, cache: ModelCache, policy: CacheConfig,
               feed_from: int | None) -> torch.Tensor:
    """Prefill prompt[:, :feed_from], feed the rest one token at a time; the last logits (B, V).

    ``feed_from=None``: prefill all of it; 0 (a cache that already holds a context): no prefill.
    """
    n = prompt.shape[1]
    feed_from = n if feed_from is None else feed_from
    if not 0 <= feed_from <= n or n == 0 or (feed_from == 0 and cache.seen == 0):
        raise ValueError(f"feed_from={feed_from} must be in [1, prompt length {n}] (0 only after a context)")
    logits = prefill(model, prompt[:, :feed_from], cache, policy) if feed_from else None
    for t in range(feed_from, prompt.shape[1]):
        logits = model(prompt[:, t : t + 1], cache)[:, -1]
    return logits


@torch.no_grad()
def decode_predictions(model: nn.Module, tokens: torch.Tensor, answer_mask: torch.Tensor,
                       policy: CacheConfig, free_running: bool = True,
                       feed_from: int | None = None) -> tuple[torch.Tensor, int]:
    """(B, L) predictions through the cache, and the largest cache size in bytes seen.

    Tokens before ``feed_from`` are prefilled, later ones fed one at a time (default: from the
    first answer token, i.e. ``question_prefilled``; see ``decode_start``).
    ``free_running=False`` feeds the true answer tokens instead of the predictions: then, with the
    full cache, the predictions equal ``teacher_forced_predictions`` exactly (the contract test).
    """
    B, L = tokens.shape
    first = int(answer_mask.float().argmax(dim=1).min())  # common prompt prefix of the batch
    cache = model.new_cache(B, policy)
    cache.reserve(L - 1)  # the last token is never fed
    logits = run_prompt(model, tokens[:, :first], cache, policy, feed_from)
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
