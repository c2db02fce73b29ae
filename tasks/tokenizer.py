"""Text <-> token ids for the text tasks, LongBench and perplexity: ``bytes`` or ``hf:PATH``.

- ``bytes``: UTF-8 bytes, ids 0..255, no files; the default for models trained here from scratch.
- ``hf:PATH``: a local ``tokenizer.json`` (PATH is the file or a directory holding it), read with
  the ``tokenizers`` library, so a Llama or Qwen checkpoint's own tokenizer drives the tasks.
  Nothing is downloaded: a missing, truncated or malformed file is one error line naming the path.

Encoding never adds special tokens (tasks assemble rows from pieces); decoding drops them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Protocol

BYTES = "bytes"
HF_PREFIX = "hf:"


class Tokenizer(Protocol):
    spec: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; ids outside that range (a larger model vocabulary) decode to nothing."""

    spec = BYTES
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A local ``tokenizer.json`` through the ``tokenizers`` library."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as _Tokenizer

        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise ValueError(f"tokenizer=hf:{path}: no tokenizer.json at {file}; allowed: a local tokenizer.json "
                             f"file or a directory holding one (nothing is downloaded)")
        self.spec = f"{HF_PREFIX}{path}"
        try:
            self._tok = _Tokenizer.from_file(str(file))
        except Exception as err:  # the tokenizers library raises a bare Exception ("EOF while parsing ...")
            raise ValueError(f"tokenizer=hf:{path}: {file} is not a readable tokenizer.json (truncated or "
                             f"malformed?): {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size], skip_special_tokens=True)

    def stop_ids(self) -> list[int]:
        """Ids of end-of-text special tokens (stop generation there)."""
        names = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<eos>")
        return [i for i in (self._tok.token_to_id(n) for n in names) if i is not None]


def check_spec(spec: str, field_name: str = "tokenizer") -> None:
    if spec != BYTES and not (isinstance(spec, str) and spec.startswith(HF_PREFIX) and len(spec) > len(HF_PREFIX)):
        raise ValueError(f"{field_name}={spec!r}; allowed: 'bytes' or 'hf:PATH' (a local tokenizer.json)")


@functools.lru_cache(maxsize=8)
def load_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer named by ``spec`` (cached: tasks ask for it per batch)."""
    check_spec(spec)
    if spec == BYTES:
        return ByteTokenizer()
    return HFTokenizer(spec[len(HF_PREFIX):])
