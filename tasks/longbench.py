"""LongBench (Bai et al. 2023) from local files: the official jsonl per dataset, its prompt, its budget.

``DIR/<dataset>.jsonl`` is the official layout (``data/`` of the LongBench release): one JSON object
per line with ``input``, ``context``, ``answers`` (list), ``all_classes`` (or null), ``length``,
``_id``. Each dataset has its official prompt (``{context}``/``{input}`` filled in) and maximum number
of new tokens (``longbench_prompts.json``); its metric is in ``tasks/longbench_metrics.py``.
Nothing is downloaded; a missing file is an error naming it and what the directory holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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


def load_dataset(directory: str | Path, name: str, max_examples: Optional[int] = None) -> list[LongBenchExample]:
    """The examples of one dataset file, in file order (the first ``max_examples`` if given)."""
    check_files(directory, [name])
    path = Path(directory) / f"{name}.jsonl"
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not valid JSON ({err})") from None
            missing = [k for k in REQUIRED if k not in obj]
            if missing:
                raise ValueError(f"{path}:{number} lacks the fields {missing}; a LongBench line has {list(REQUIRED)}")
            answers = obj["answers"] if isinstance(obj["answers"], list) else [obj["answers"]]
            out.append(LongBenchExample(name, obj["input"], obj["context"], [str(a) for a in answers],
                                        obj.get("all_classes"), obj.get("length"), obj.get("_id")))
            if max_examples is not None and len(out) >= max_examples:
                break
    return out
