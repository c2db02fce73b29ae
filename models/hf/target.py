"""Writing a Hugging Face directory so that it never holds old and new weights at once.

The export goes into a temporary directory beside the target (same filesystem), which then replaces
the target by a rename. A target that already holds files is refused unless ``overwrite``: then the
old model's files (config.json first, every weight file and shard index, tokenizer and generation
files) are removed before the new ones are moved in, config.json last, so a crash in between leaves a
directory that no loader reads (no config.json) rather than a mix of two models. Files that are not
part of a model (a README, notes) are left where they are.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from models.hf.errors import HFFormatError

CONFIG = "config.json"
# files that make up a model in a Hugging Face directory (besides config.json)
MODEL_FILE_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.bin.index.json",
                       "tf_model.h5", "flax_model.msgpack", "tokenizer.json", "tokenizer_config.json",
                       "special_tokens_map.json", "tokenizer.model", "generation_config.json")


def old_model_files(out: Path) -> list[Path]:
    """config.json first, then every other file of the model in ``out`` (indexes before shards)."""
    found = {p for pattern in MODEL_FILE_PATTERNS for p in out.glob(pattern) if p.is_file() or p.is_symlink()}
    rest = sorted(found, key=lambda p: (not p.name.endswith(".index.json"), p.name))
    return ([out / CONFIG] if (out / CONFIG).exists() else []) + rest


def check_target(out: str | Path, overwrite: bool = False) -> list[str]:
    """The names ``out`` holds now; refused when it is a file, or not empty without ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HFFormatError(f"out={str(out)!r} is a file; allowed: a new or empty directory (or --overwrite on a "
                            "model directory)")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if present and not overwrite:
        more = " ..." if len(present) > 8 else ""
        raise HFFormatError(f"out={str(out)!r} is not empty (holds {present[:8]}{more}); writing into it could leave "
                            "another model's weights or shard index beside the new ones. Choose a new directory, or "
                            "pass --overwrite to remove its old model files first")
    return present


def write_model_dir(out: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Run ``write(tmp)`` into a temporary directory beside ``out``, then make it ``out`` (see the module doc)."""
    out = Path(out)
    present = check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        write(tmp)
        if not present:
            os.replace(tmp, out)  # a new or empty target: one rename
            return out
        for old in old_model_files(out):
            old.unlink()
        new = sorted(tmp.iterdir(), key=lambda p: p.name == CONFIG)  # config.json last: the loader's entry point
        for item in new:
            os.replace(item, out / item.name)
        tmp.rmdir()
        return out
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
