"""Language modelling on a text corpus: every next token is a target (pretraining a text model).

Rows are windows of ``length`` tokens of the corpus (``tasks/corpus.py``: the default CPython prose,
local files or a saved ``datasets`` directory) at random offsets of the ``split``; labels sit on
every token after the first:

    t0 t1 t2 ... t(L-1)        answer_mask = [F, T, T, ..., T]

``start_token=ID`` puts a fixed token first (``ID t0 ... t(L-2)``), as LLMs put BOS; ``eval=lm`` and
``eval=sinks`` take the same knob (``eval.lm.start_token``) so streams begin the same way.

This family has no prompt-only oracle (predicting text from its first token is the whole problem);
its metric is perplexity by position (``eval=lm``), measured on the ``test`` split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from tasks.base import TaskArrays, register
from tasks.corpus import SPLITS, corpus_tokens
from tasks.text import TextTask
from tasks.tokenizer import BYTES
from tasks.vocab import Vocab


@register
@dataclass
class TextLM(TextTask):
    name: ClassVar[str] = "text_lm"
    has_oracle: ClassVar[bool] = False
    text_scored: ClassVar[bool] = False
    corpus: str = "default"
    split: str = "train"
    start_token: Optional[int] = None  # an id put at position 0 of every row (a BOS); None: plain text windows

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"task.split={self.split!r}; allowed: {list(SPLITS)}")
        if self.start_token is not None and self.start_token < 0:
            raise ValueError(f"task.start_token={self.start_token} must be a token id >= 0 (or null)")
        super().__post_init__()

    def stream(self) -> np.ndarray:
        return corpus_tokens(self.corpus, self.tokenizer or BYTES, self.split)

    def generate(self, vocab: Vocab, n: int, length: int, rng: np.random.Generator,
                 depth: float | None = None) -> TaskArrays:
        self.check_length(length, "length")
        stream = self.stream()
        if len(stream) < length:
            raise ValueError(f"length={length} exceeds the {len(stream)} tokens of corpus={self.corpus!r} "
                             f"split={self.split!r}")
        starts = rng.integers(0, len(stream) - length + 1, size=n)
        tokens = stream[starts[:, None] + np.arange(length)[None, :]].astype(np.int64)
        if self.start_token is not None:  # [start, t0 .. t(L-2)]: the first text token is a target too
            tokens = np.concatenate([np.full((n, 1), self.start_token), tokens[:, :-1]], axis=1)
        mask = np.ones((n, length), dtype=bool)
        mask[:, 0] = False
        return TaskArrays(tokens, mask, np.full(n, np.nan))

    def oracle(self, vocab: Vocab, hidden: np.ndarray, answer_mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError("task text_lm is language modelling: no prompt-only oracle exists; "
                                  "measure it by perplexity (eval=lm)")
