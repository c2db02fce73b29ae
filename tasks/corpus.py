"""Text corpora from local sources, as one token stream per (source, tokenizer), split train/test.

``corpus`` names the source:
- ``default``: the English prose every Python install carries (the language reference topics in
  CPython's ``pydoc_data``, ~465k characters), joined in topic order; nothing to download.
- a ``.txt``/``.md`` file, or a directory of them (read in name order, joined by blank lines);
- a directory written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``): its ``text``
  column (every split, in name order).

``split``: ``train`` is the first 90% of the token stream, ``test`` the last 10% (perplexity is
measured on text the model was not trained on), ``all`` the whole stream.

A source handed in is untrusted input: a path that is not there (checked with the config, before any
work), an unreadable saved dataset, or a source with no text stops with a message naming it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from tasks.tokenizer import load_tokenizer

DEFAULT = "default"
SPLITS = ("train", "test", "all")
TRAIN_FRACTION = 0.9
TEXT_SUFFIXES = (".txt", ".md", ".text")


def default_text() -> str:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def check_source(spec: str, field: str = "eval.lm.corpus") -> None:
    """The source exists (cheap: nothing is read); a ValueError naming it and what is allowed otherwise."""
    if spec != DEFAULT and not Path(spec).exists():
        raise ValueError(f"{field}={spec!r} does not exist; allowed: 'default', a text file, a directory of text "
                         f"files, or a datasets directory saved with save_to_disk")


def _dataset_text(path: Path) -> str:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # a torn Arrow file, a missing shard, a json that is not datasets' own
        raise ValueError(f"corpus={str(path)!r}: the saved dataset cannot be read ({type(err).__name__}: "
                         f"{str(err)[:300]})") from None
    parts = [ds[name] for name in sorted(ds)] if isinstance(ds, datasets.DatasetDict) else [ds]
    for part in parts:
        if "text" not in part.column_names:
            raise ValueError(f"corpus={str(path)!r}: the saved dataset has no 'text' column; "
                             f"columns: {part.column_names}")
    texts = [t for part in parts for t in part["text"]]
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"corpus={str(path)!r}: text row {bad} is {type(texts[bad]).__name__}, not a string")
    return "\n\n".join(texts)


def corpus_text(spec: str) -> str:
    """The whole text of a corpus source (see the module docstring); a source with no text is refused."""
    text = _source_text(spec)
    if not text.strip():
        raise ValueError(f"corpus={spec!r} holds no text (empty); a perplexity measured on it would be on nothing")
    return text


def _source_text(spec: str) -> str:
    if spec == DEFAULT:
        return default_text()
    path = Path(spec)
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _dataset_text(path)
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise ValueError(f"corpus={spec!r}: no {'/'.join(TEXT_SUFFIXES)} files in the directory")
        return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    raise ValueError(f"corpus={spec!r} does not exist; allowed: 'default', a text file, a directory of text "
                     f"files, or a datasets directory saved with save_to_disk")


@functools.lru_cache(maxsize=8)
def corpus_tokens(spec: str, tokenizer: str, split: str = "all") -> np.ndarray:
    """The token ids (int64) of one split of a corpus under a tokenizer."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; allowed: {SPLITS}")
    ids = np.asarray(load_tokenizer(tokenizer).encode(corpus_text(spec)), dtype=np.int64)
    cut = int(len(ids) * TRAIN_FRACTION)
    out = {"train": ids[:cut], "test": ids[cut:], "all": ids}[split]
    out.setflags(write=False)
    return out
