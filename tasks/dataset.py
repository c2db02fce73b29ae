"""Materialise task examples as Hugging Face ``datasets`` (Arrow), cached by a config hash.

A 50-job sweep asks for the same training set 50 times; the first job generates it, the others
load it. Writes are atomic (temporary folder, then rename) under a file lock, and every load is
verified against a fingerprint of the config and of the content; a bad cache is regenerated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from filelock import FileLock, Timeout

from tasks.base import Task, TaskArrays, make_rng
from tasks.vocab import Vocab

log = logging.getLogger(__name__)
datasets.disable_progress_bars()
FORMAT_VERSION = 3  # bump when generators change what they emit for the same config


def task_fingerprint(task: Task, vocab: Vocab, split: str, n: int, length: int, seed: int,
                     depth: float | None) -> str:
    spec = {"task": task.name, "knobs": dataclasses.asdict(task), "vocab": vocab.size, "split": split,
            "n": n, "length": length, "seed": seed, "depth": depth, "format": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def content_hash(tokens: np.ndarray, answer_mask: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(tokens, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(answer_mask, dtype=np.bool_).tobytes())
    return h.hexdigest()


def generate(task: Task, vocab: Vocab, split: str, n: int, length: int, seed: int,
             depth: float | None = None) -> TaskArrays:
    """Generate n examples of one (task, split, length, depth) cell, deterministically."""
    return task.for_split(split).generate(vocab, n, length, make_rng(split, seed, task.name, length, depth), depth)


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1])


def to_dataset(arrays: TaskArrays, task: Task, length: int, split: str, seed: int) -> datasets.Dataset:
    """Arrow columns built directly from the numpy arrays (no per-example Python objects)."""
    n = arrays.tokens.shape[0]
    columns = {
        "tokens": _fixed_list(arrays.tokens.astype(np.int32)),
        "answer_mask": _fixed_list(arrays.answer_mask.astype(np.bool_)),
        "task": pa.array([task.name] * n),
        "length": pa.array(np.full(n, length, dtype=np.int32)),
        "depth": pa.array(arrays.depth.astype(np.float32)),
        "seed": pa.array(np.full(n, seed, dtype=np.int64)),
        "split": pa.array([split] * n),
    }
    if arrays.inputs is not None:
        columns["inputs"] = _fixed_list(arrays.inputs.astype(np.int32))
    for key, values in arrays.slices.items():
        columns[f"slice_{key}"] = pa.array(np.asarray(values))
    return datasets.Dataset(pa.table(columns))


def read_arrays(ds: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int64 (n, L), answer_mask bool (n, L)) straight from the Arrow columns."""
    out = []
    for name in ("tokens", "answer_mask"):
        col = ds.data.column(name).combine_chunks()
        out.append(col.flatten().to_numpy(zero_copy_only=False).reshape(len(ds), -1))
    return out[0].astype(np.int64), out[1].astype(np.bool_)


def read_inputs(ds: datasets.Dataset) -> np.ndarray | None:
    """The model inputs where the task blanks its answers (``TaskArrays.inputs``), else None."""
    if "inputs" not in ds.column_names:
        return None
    col = ds.data.column("inputs").combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(ds), -1).astype(np.int64)


def _load_verified(path: Path, fingerprint: str) -> datasets.Dataset | None:
    meta_file = path / "fingerprint.json"
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("config") != fingerprint:
            raise ValueError("config fingerprint differs")
        ds = datasets.load_from_disk(str(path))
        if content_hash(*read_arrays(ds)) != meta.get("content"):
            raise ValueError("content hash differs")
        return ds
    except FileNotFoundError:
        return None
    except Exception as err:  # corrupt or stale: regenerate, loudly
        log.warning("dataset cache %s is unreadable (%s); regenerating it", path, err)
        return None


def materialize(task: Task, vocab: Vocab, split: str, n: int, length: int, seed: int,
                cache_dir: str | os.PathLike | None, depth: float | None = None) -> datasets.Dataset:
    """The cached dataset for this cell, generating it (once, under a lock) when missing."""
    fingerprint = task_fingerprint(task, vocab, split, n, length, seed, depth)
    if cache_dir is None:
        arrays = generate(task, vocab, split, n, length, seed, depth)
        return to_dataset(arrays, task, length, split, seed)
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{task.name}-{split}-L{length}-n{n}-{fingerprint[:16]}"
    with FileLock(str(path) + ".lock"):
        ds = _load_verified(path, fingerprint)
        if ds is not None:
            return ds
        arrays = generate(task, vocab, split, n, length, seed, depth)
        ds = to_dataset(arrays, task, length, split, seed)
        tmp = root / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
        ds.save_to_disk(str(tmp))
        (tmp / "fingerprint.json").write_text(json.dumps(
            {"config": fingerprint, "content": content_hash(arrays.tokens, arrays.answer_mask)}))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return datasets.load_from_disk(str(path))


def clean_stale_temps(cache_dir: str | os.PathLike | None) -> list[Path]:
    """Delete temporary folders that an interrupted generation left in the cache (run on start).

    A folder is only deleted when nobody holds its dataset's lock, so a concurrent job that is
    writing it right now keeps it.
    """
    if cache_dir is None or not Path(cache_dir).is_dir():
        return []
    removed = []
    for tmp in Path(cache_dir).glob(".tmp-*"):
        name = tmp.name[len(".tmp-"):].rsplit("-", 1)[0]  # .tmp-<dataset name>-<8 hex>
        lock = FileLock(str(Path(cache_dir) / name) + ".lock", timeout=0)
        try:
            with lock:
                shutil.rmtree(tmp, ignore_errors=True)
        except Timeout:  # being written now
            continue
        removed.append(tmp)
    if removed:
        log.info("removed %d stale temporary dataset folder(s) from %s", len(removed), cache_dir)
    return removed
