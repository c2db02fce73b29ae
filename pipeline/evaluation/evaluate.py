"""The evaluation grid: tasks x eval lengths x depths under one cache policy -> results rows.

Each cell generates held-out (test-seed) examples, predicts teacher-forced and by prefill + decode
under the named evaluation protocol (``pipeline.evaluation.decode.PROTOCOLS``; rows carry it in ``protocol``),
measures peak memory (first batch) and throughput, and appends one row per slice group. Each row
carries ``floor``: the best prompt-only baseline's exact match on the same examples
(``tasks.baselines.cell_floor``; ``floor_baseline`` names it), or the cell's stated ``chance_floor``
(a blind guess's expectation, ``floor_baseline="chance"``) where that is higher. A cell
that runs out of memory becomes a ``status=oom`` row and the grid goes on; any other failure
becomes a ``status=error`` row with the message.
"""

from __future__ import annotations

import gc
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from models.caches import CacheConfig
from pipeline.config.eval_config import EvalConfig
from pipeline.evaluation.decode import decode_predictions, decode_start, task_openers, teacher_forced_predictions
from pipeline.results.rows import CELL_KEYS, append_rows, cell_key, make_row, read_rows
from pipeline.train.memory import available_bytes, estimate_eval_bytes, measure_peak
from tasks.base import Task, TaskArrays
from tasks.baselines import cell_floor, has_floor
from tasks.dataset import generate
from tasks.vocab import Vocab

log = logging.getLogger(__name__)


OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory", "bad_alloc")


class EstimatedOOM(MemoryError):
    """A cell whose memory lower bound exceeds what the device has: not attempted."""


def is_oom(err: BaseException) -> bool:
    """CUDA and CPU allocation failures (``DefaultCPUAllocator: can't allocate memory``) alike."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in OOM_MESSAGES)


def check_fits(model: nn.Module, n_examples: int, length: int, batch_size: int, full_logits: bool,
               device: torch.device) -> None:
    """Raise EstimatedOOM before allocating when even a lower bound of the cell's memory is too much."""
    need = estimate_eval_bytes(model, n_examples, length, batch_size, full_logits)
    have = available_bytes(device)
    if need > have:
        raise EstimatedOOM(f"out of memory (estimated, not attempted): L={length} x batch {batch_size} needs at "
                           f"least {need / 2**30:.2f} GiB, {have / 2**30:.2f} GiB available on {device.type}")


def completed_cells(rows_path: str | Path | None, run_id: Any, config_hash: Any) -> dict[tuple, list[dict]]:
    """Rows already written for this run and config, by cell: a resumed evaluation skips them.

    Error rows do not count (a rerun retries the cell); ok and oom rows are results.
    """
    if rows_path is None or run_id is None or not Path(rows_path).exists():
        return {}
    done: dict[tuple, list[dict]] = {}
    for row in read_rows(rows_path):
        if row.get("run_id") == run_id and row.get("config_hash") == config_hash and row.get("status") in ("ok", "oom"):
            done.setdefault(cell_key(row), []).append(row)
    return done


@dataclass
class CellResult:
    preds: np.ndarray  # (n, L) predictions used for the reported accuracy
    tf_preds: np.ndarray | None
    peak_mem_bytes: int
    cache_bytes: int  # per sequence
    tokens_per_s: float
    decode_tokens_per_s: float | None


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def run_cell(model: nn.Module, arrays: TaskArrays, policy: CacheConfig, batch_size: int,
             decode: bool, teacher_forced: bool, device: torch.device, openers: frozenset[int] = frozenset(),
             protocol: str = "question_decoded", decode_tail: int | None = None) -> CellResult:
    """Predictions for one cell; ``openers``/``protocol``/``decode_tail`` choose what is decoded
    token by token (``pipeline.evaluation.decode.decode_start``)."""
    # Tasks that blank their answers (TaskArrays.inputs: MQAR) feed the blanks, never predictions;
    # exact match is the same either way (a row is right only if every earlier answer was).
    free_running = arrays.inputs is None
    tokens = torch.from_numpy(arrays.tokens if free_running else arrays.inputs).to(device)
    mask = torch.from_numpy(arrays.answer_mask).to(device)
    n, L = tokens.shape
    tf_preds, preds, peak, cache_bytes = [], [], 0, 0
    tf_time = dec_time = 0.0
    for i, sl in enumerate(_batches(n, batch_size)):
        if teacher_forced:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            if i == 0 and not decode:
                with measure_peak(model, device) as m:
                    tf_preds.append(teacher_forced_predictions(model, tokens[sl]))
                peak = m.peak_bytes
            else:
                tf_preds.append(teacher_forced_predictions(model, tokens[sl]))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            tf_time += time.perf_counter() - t0
        if decode:
            feed_from = decode_start(arrays.tokens[sl], arrays.answer_mask[sl], openers, protocol, decode_tail)
            t0 = time.perf_counter()
            if i == 0:  # memory on the first batch only: the tracker slows every op
                with measure_peak(model, device) as m:
                    p, cb = decode_predictions(model, tokens[sl], mask[sl], policy, free_running, feed_from=feed_from)
                peak = m.peak_bytes
            else:
                p, cb = decode_predictions(model, tokens[sl], mask[sl], policy, free_running, feed_from=feed_from)
            dec_time += time.perf_counter() - t0
            preds.append(p)
            cache_bytes = max(cache_bytes, cb // (sl.stop - sl.start))
    tf = torch.cat(tf_preds).cpu().numpy() if tf_preds else None
    dec = torch.cat(preds).cpu().numpy() if preds else None
    tps = n * (L - 1) / tf_time if tf_time > 0 else float("nan")
    dtps = n * L / dec_time if dec_time > 0 else None
    return CellResult(dec if dec is not None else tf, tf, peak, cache_bytes, tps, dtps)


def exact_per_example(arrays: TaskArrays, preds: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) bool: every answer token of the example right."""
    return ((preds[rows] == arrays.tokens[rows]) | ~arrays.answer_mask[rows]).all(axis=1)


def score(arrays: TaskArrays, preds: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
    """Exact match (all answer tokens right) and token accuracy over the examples ``rows``."""
    mask = arrays.answer_mask[rows]
    right = (preds[rows] == arrays.tokens[rows]) | ~mask
    exact = exact_per_example(arrays, preds, rows).mean()
    token = (right & mask).sum() / max(1, mask.sum())
    return float(exact), float(token)


def slice_groups(arrays: TaskArrays) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Examples grouped by their slice values (one results row per group)."""
    n = arrays.tokens.shape[0]
    if not arrays.slices:
        return [({}, np.arange(n))]
    keys = sorted(arrays.slices)
    table = np.stack([np.asarray(arrays.slices[k], dtype=object) for k in keys], axis=1)
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(table):
        combo = tuple(None if isinstance(v, float) and v != v else v for v in row.tolist())  # NaN -> None
        groups.setdefault(combo, []).append(i)
    return [({f"slice_{k}": v for k, v in zip(keys, combo)}, np.array(idx)) for combo, idx in groups.items()]


def evaluate_grid(
    model: nn.Module,
    tasks: list[Task],
    vocab: Vocab,
    ev: EvalConfig,
    policy: CacheConfig,
    seed: int,
    row_base: dict[str, Any],
    rows_path: str | Path | None,
    device: torch.device | str = "cpu",
    on_row: Callable[[dict[str, Any]], None] | None = None,
    cell_runner: Callable[..., CellResult] = run_cell,
) -> list[dict[str, Any]]:
    """Evaluate every (task, length, depth) cell of ``ev``; rows are appended to ``rows_path`` as they come."""
    device = torch.device(device)
    model.eval()
    if ev.decode:
        tail = "the whole question" if ev.decode_tail is None else f"the last {ev.decode_tail} prompt tokens"
        log.info("evaluation protocol %s: context prefilled (%s), then %s fed token by token through %s",
                 ev.protocol, policy.prefill, "nothing" if ev.protocol == "question_prefilled" else tail, policy.label)
    cells = [(t, L, d) for t in tasks for L in ev.lengths for d in (ev.depths if t.has_depth else [None])]
    out: list[dict[str, Any]] = []
    done = completed_cells(rows_path, row_base.get("run_id"), row_base.get("config_hash"))
    with Progress(transient=True) as progress:
        bar = progress.add_task("evaluating", total=len(cells))
        for task, length, depth in cells:
            progress.update(bar, description=f"{task.name} L={length} depth={depth}")
            base = dict(row_base, task=task.name, eval_len=length, depth=depth, seed=seed,
                        cache=policy.label, prefill=policy.prefill,
                        protocol=ev.protocol if ev.decode else "teacher_forced", decode_tail=ev.decode_tail)
            key = tuple(base.get(k) for k in CELL_KEYS)
            if key in done:  # written by an earlier (killed or finished) run of this config
                rows = done[key]
            else:
                rows = cell_or_failure(model, task, vocab, ev, policy, seed, length, depth, base, device, cell_runner)
                if rows_path is not None:
                    append_rows(rows_path, rows)  # one write per cell: a kill leaves whole cells
                for row in rows:
                    if on_row is not None:
                        on_row(row)
            out += rows
            progress.advance(bar)
    return out


def cell_or_failure(model: nn.Module, task: Task, vocab: Vocab, ev: EvalConfig, policy: CacheConfig, seed: int,
                    length: int, depth: float | None, base: dict[str, Any], device: torch.device,
                    cell_runner: Callable[..., CellResult]) -> list[dict[str, Any]]:
    """The rows of one cell; an ``oom`` or ``error`` row when it fails (one bad cell never stops the grid)."""
    try:
        check_fits(model, ev.n_examples, length, ev.batch_size, ev.teacher_forced or policy.prefill == "dense", device)
        arrays = generate(task, vocab, "test", ev.n_examples, length, seed, depth)
        res = cell_runner(model, arrays, policy, ev.batch_size, ev.decode, ev.teacher_forced, device,
                          frozenset(task_openers(task)), ev.protocol, ev.decode_tail)
        return cell_rows(task, vocab, arrays, res, ev.decode, base)
    except Exception as err:
        status = "oom" if is_oom(err) else "error"
        if status == "error":
            log.error("cell %s L=%s depth=%s failed:\n%s", task.name, length, depth, traceback.format_exc())
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return [make_row(**base, status=status, error=f"{type(err).__name__}: {err}"[:2000])]


def cell_rows(task: Task, vocab: Vocab, arrays: TaskArrays, res: CellResult, decode: bool,
              base: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``ok`` row per slice group of the cell's examples."""
    rows = []
    groups = slice_groups(arrays)
    floors = cell_floor(task, vocab, arrays, groups=[idx for _, idx in groups]) if has_floor(task) else None
    for g, (slices, idx) in enumerate(groups):
        acc, tok = score(arrays, res.preds, idx)
        extra: dict[str, Any] = {}
        if res.tf_preds is not None:
            extra["tf_accuracy"], extra["tf_token_accuracy"] = score(arrays, res.tf_preds, idx)
            if decode:
                mask = arrays.answer_mask[idx]
                extra["decode_tf_agreement"] = float(((res.preds[idx] == res.tf_preds[idx]) | ~mask).all(axis=1).mean())
        sub = TaskArrays(arrays.tokens[idx], arrays.answer_mask[idx], arrays.depth[idx],
                         {k: np.asarray(v)[idx] for k, v in arrays.slices.items()})
        extra.update(task.extra_metrics(vocab, sub, res.preds[idx]))
        if floors is not None:  # the best prompt-only baseline on these very examples (paired), never below
            chance = task.cell_floor(vocab, arrays.tokens.shape[1], base.get("depth"))["accuracy"]  # a blind guess
            best, name = floors[g]
            extra["floor"], extra["floor_baseline"] = (best, name) if best >= chance else (chance, "chance")
            extra["chance_floor"] = chance
        # per-example exact match in example order ("0110..."): arms evaluated on the same examples (same
        # task, seed, cell) are compared pair by pair (scripts/stats.py, paired intervals)
        extra["correct"] = "".join("1" if c else "0" for c in exact_per_example(arrays, res.preds, idx))
        rows.append(make_row(**base, **slices, **extra, n_examples=len(idx), accuracy=acc, token_accuracy=tok,
                             peak_mem_bytes=res.peak_mem_bytes, cache_bytes=res.cache_bytes,
                             tokens_per_s=res.tokens_per_s, decode_tokens_per_s=res.decode_tokens_per_s, status="ok"))
    return rows
