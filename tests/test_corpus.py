"""Corpus sources: the embedded default, text files, a folder, a saved ``datasets`` folder; clear errors."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from tasks.corpus import corpus_text, corpus_tokens, default_text


def test_default_corpus_is_english_prose_every_python_has() -> None:
    text = default_text()
    assert len(text) > 300_000 and "assert" in text
    ids = corpus_tokens("default", "bytes", "all")
    train, test = corpus_tokens("default", "bytes", "train"), corpus_tokens("default", "bytes", "test")
    assert np.array_equal(np.concatenate([train, test]), ids) and len(test) == len(ids) - int(0.9 * len(ids))


def test_files_folders_and_saved_datasets(tmp_path) -> None:
    (tmp_path / "b.txt").write_text("second file")
    (tmp_path / "a.md").write_text("first file")
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    assert corpus_text(str(tmp_path)) == "first file\n\nsecond file"
    assert corpus_text(str(tmp_path / "b.txt")) == "second file"
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["one", "two"]}),
                               "validation": datasets.Dataset.from_dict({"text": ["three"]})})
    ds.save_to_disk(str(tmp_path / "saved"))
    assert corpus_text(str(tmp_path / "saved")) == "one\n\ntwo\n\nthree"
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="no 'text' column"):
        corpus_text(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="does not exist"):
        corpus_text(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .txt"):
        corpus_text(str(empty))
