"""LongBench (Bai et al. 2023) from local files: the official jsonl per dataset, its prompt, its budget.

``DIR/<dataset>.jsonl`` is the official layout (``data/`` of the LongBench release): one JSON object
per line with ``input``, ``context``, ``answers`` (list), ``all_classes`` (or null), ``length``,
``_id``. Each dataset has its official prompt (``{context}``/``{input}`` filled in) and maximum number
of new tokens (``longbench_prompts.json``); its metric is in ``tasks/longbench_metrics.py``.
Nothing is downloaded; a missing file is an error naming it and what the directory holds. A file is
untrusted input: an empty file, a line that is not an object, or a field of the wrong type (``context:
null``, ``answers: 5``) is refused naming ``file:line`` and the field, never turned into text such as
"None" or into a row scored on nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

_SPEC = json.loads((Path(__file__).with_name("longbench_prompts.json")).read_text(encoding="utf-8"))
PROMPTS: dict[str, str] = {k: v["prompt"] for k, v in _SPEC.items() if not k.startswith("_")}
MAX_NEW_TOKENS: dict[str, int] = {k: v["max_new_tokens"] for k, v in _SPEC.items() if not k.startswith("_")}
DATASETS = tuple(PROMPTS)
REQUIRED = ("input", "context", "answers")


@dataclass
class LongBenchExample:
    dataset: str
    input: str
    context: str
    answers: list[str]
    all_classes: Optional[list[str]]
    length: Optional[int]
    id: Optional[str]

    @property
    def prompt(self) -> str:
        return PROMPTS[self.dataset].format(context=self.context, input=self.input)


def available(directory: str | Path) -> list[str]:
    """The known datasets that have a file in ``directory``."""
    return [name for name in DATASETS if (Path(directory) / f"{name}.jsonl").is_file()]


def check_files(directory: str | Path, names: Optional[list[str]], field: str = "eval.longbench") -> list[str]:
    """The datasets to evaluate (``names``, or every one present); raise naming what is missing."""
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"{field}.dir={str(directory)!r} is not a directory; allowed: a local folder holding "
                         f"LongBench's <dataset>.jsonl files (nothing is downloaded)")
    unknown = [n for n in names or [] if n not in DATASETS]
    if unknown:
        raise ValueError(f"{field}.datasets has unknown datasets {unknown}; allowed: {list(DATASETS)}")
    present = available(root)
    if names is None:
        if not present:
            raise ValueError(f"{field}.dir={str(directory)!r} holds no LongBench file; expected <dataset>.jsonl "
                             f"for datasets in {list(DATASETS)}")
        return present
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(f"{field}.dir={str(directory)!r} has no file for {missing} "
                         f"(expected {[f'{n}.jsonl' for n in missing]}); present: {present}")
    return list(names)


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# field -> (check, what is allowed); absent optional fields are None
FIELD_RULES = {
    "input": (lambda v: isinstance(v, str), "a string"),
    "context": (lambda v: isinstance(v, str), "a string"),
    "answers": (lambda v: _string_list(v) and len(v) > 0, "a non-empty list of strings"),
    "all_classes": (lambda v: v is None or _string_list(v), "null or a list of strings"),
    "length": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "null or an integer"),
    "_id": (lambda v: v is None or isinstance(v, (str, int)), "null, a string or an integer"),
}


def parse_line(line: str, where: str, name: str) -> LongBenchExample:
    """One line of a LongBench file; ``where`` is ``file:line`` for the error messages."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is a JSON {type(obj).__name__}; a LongBench line is an object with {list(REQUIRED)}")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise ValueError(f"{where} lacks the fields {missing}; a LongBench line has {list(REQUIRED)}")
    for key, (ok, allowed) in FIELD_RULES.items():
        if not ok(obj.get(key)):
            value = json.dumps(obj[key], ensure_ascii=False)
            shown = value if len(value) <= 80 else value[:77] + "..."
            raise ValueError(f"{where}: {key}={shown}; allowed: {allowed}")
    return LongBenchExample(name, obj["input"], obj["context"], list(obj["answers"]), obj.get("all_classes"),
                            obj.get("length"), None if obj.get("_id") is None else str(obj["_id"]))


def iter_examples(path: Path, name: str) -> Iterator[LongBenchExample]:
    """Every example of one file, checked line by line; an unreadable or empty file is refused, naming it."""
    count = 0
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    count += 1
                    yield parse_line(line, f"{path}:{number}", name)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} cannot be read as UTF-8 text: {err}") from None
    if count == 0:
        raise ValueError(f"{path} holds no examples (empty file); a LongBench file has one JSON object per line")


def check_contents(directory: str | Path, names: list[str]) -> None:
    """Read every line of each dataset file (before any model is built): the first bad line stops, named."""
    for name in names:
        for _ in iter_examples(Path(directory) / f"{name}.jsonl", name):
            pass


def load_dataset(directory: str | Path, name: str, max_examples: Optional[int] = None) -> list[LongBenchExample]:
    """The examples of one dataset file, in file order (the first ``max_examples`` if given)."""
    check_files(directory, [name])
    out = []
    for example in iter_examples(Path(directory) / f"{name}.jsonl", name):
        out.append(example)
        if max_examples is not None and len(out) >= max_examples:
            break
    return out
