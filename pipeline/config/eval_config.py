"""``eval``: what a run evaluates after fitting (the grid of tasks x lengths x depths, or another kind).

Each kind's own section (``eval.lm``, ``eval.longbench``, ``eval.sinks``) is its dataclass here, beside
``EvalConfig``, so that validating a config never imports the evaluation code (``pipeline/evaluation/``
imports these; the import order runs config -> results -> train -> evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pipeline.config.schema import ConfigError, reraise_as_config_error
from tasks.corpus import SPLITS, check_source
from tasks.longbench import check_contents, check_files

EVAL_KINDS = ("grid", "lm", "longbench", "sinks")
PROTOCOLS = ("question_decoded", "question_prefilled")  # pipeline/evaluation/decode.py
MODES = ("stream", "recompute")


@dataclass
class LmEvalConfig:
    corpus: str = "default"  # default | a text file | a directory of text files | a saved datasets dir
    split: str = "test"  # test: the last 10% of the corpus (text_lm trains on the first 90%)
    n_tokens: int = 2048  # positions per stream (far past the training length)
    n_streams: int = 4  # disjoint streams, evaluated as one batch
    bucket: int = 64  # positions per row
    chunk: int = 128  # tokens per forward call while streaming
    mode: str = "stream"  # stream: through the cache policy | recompute: sliding window, re-computed
    recompute_window: int = 64  # mode=recompute: tokens of context per prediction
    recompute_batch: int = 256  # mode=recompute: windows per forward call
    start_token: Optional[int] = None  # an id put before every stream (a BOS), as the model was trained

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"eval.lm.split={self.split!r}; allowed: {list(SPLITS)}")
        if self.mode not in MODES:
            raise ValueError(f"eval.lm.mode={self.mode!r}; allowed: {list(MODES)}")
        for name in ("n_tokens", "n_streams", "bucket", "chunk", "recompute_window", "recompute_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.lm.{name}={getattr(self, name)} must be >= 1")


@dataclass
class LongBenchConfig:
    dir: Optional[str] = None  # a local folder of LongBench's <dataset>.jsonl files
    datasets: Optional[list[str]] = None  # None: every known dataset with a file in dir
    max_examples: Optional[int] = None  # per dataset; None: all
    max_length: Optional[int] = None  # prompt tokens kept (middle truncated); None: model.max_seq_len - new tokens
    decode_tail: int = 50  # last prompt tokens fed one at a time through the policy (DuoAttention's pred.py)

    def check(self) -> list[str]:
        """Validate for ``eval.kind=longbench``: the folder and every dataset file exist, each line well-formed."""
        if not self.dir:
            raise ValueError("eval.kind=longbench needs eval.longbench.dir=PATH (a folder of LongBench jsonl files)")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"eval.longbench.max_examples={self.max_examples} must be >= 1 (or null: all)")
        if self.decode_tail < 0:
            raise ValueError(f"eval.longbench.decode_tail={self.decode_tail} must be >= 0 (0: prefill it all)")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"eval.longbench.max_length={self.max_length} must be >= 2 (or null)")
        names = check_files(self.dir, self.datasets)
        check_contents(self.dir, names)
        return names


@dataclass
class SinkProbeConfig:
    corpus: str = "default"
    split: str = "test"
    length: Optional[int] = None  # tokens per sequence; None: the training length
    n_sequences: int = 8
    skip: int = 1  # queries before this position are left out (query 0 can only see key 0)
    start_token: Optional[int] = None  # an id put first in every sequence (a BOS), as the model was trained

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"eval.sinks.split={self.split!r}; allowed: {list(SPLITS)}")
        if self.length is not None and self.length < 2:
            raise ValueError(f"eval.sinks.length={self.length} must be >= 2 (or null: the training length)")
        if self.n_sequences < 1 or self.skip < 0:
            raise ValueError(f"eval.sinks.n_sequences={self.n_sequences} must be >= 1 and "
                             f"eval.sinks.skip={self.skip} >= 0")


@dataclass
class EvalConfig:
    lengths: list[int] = field(default_factory=lambda: [128, 256])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    n_examples: int = 64
    batch_size: int = 32
    decode: bool = True  # also prefill + greedy decode through the cache (the reported accuracy)
    teacher_forced: bool = True
    tasks: Optional[list[str]] = None  # None: the training task; else names of conf/task entries
    prefix_cache: bool = False
    n_questions: int = 4  # prefix_cache: questions asked of one context
    protocol: str = "question_decoded"  # PROTOCOLS: question_decoded | question_prefilled (ablation)
    decode_tail: Optional[int] = None  # None: decode the whole question token by token; N: the last N prompt tokens
    kind: str = "grid"  # grid: tasks x lengths x depths | lm: perplexity by position | longbench | sinks
    lm: LmEvalConfig = field(default_factory=LmEvalConfig)
    longbench: LongBenchConfig = field(default_factory=LongBenchConfig)
    sinks: SinkProbeConfig = field(default_factory=SinkProbeConfig)

    def __post_init__(self) -> None:
        self._check_kind()
        self._check_grid()
        self._check_counts()
        self._check_protocol()

    def _check_kind(self) -> None:
        if self.kind not in EVAL_KINDS:
            raise ConfigError(f"eval.kind={self.kind!r}; allowed: {list(EVAL_KINDS)}")
        if self.kind == "longbench":  # the folder and every dataset file, before any model is built
            reraise_as_config_error(self.longbench.check)
        if self.kind in ("lm", "sinks"):  # a corpus path that is not there, before any model is built
            reraise_as_config_error(check_source, getattr(self, self.kind).corpus, f"eval.{self.kind}.corpus")

    def _check_grid(self) -> None:
        if not self.lengths:
            raise ConfigError("eval.lengths=[] must list at least one length")
        if not self.depths:
            raise ConfigError("eval.depths=[] must list at least one depth in [0, 1] (tasks without a depth "
                              "ignore it)")
        for length in self.lengths:
            if length < 2:
                raise ConfigError(f"eval.lengths contains {length}; every length must be >= 2")
        for depth in self.depths:
            if not 0.0 <= depth <= 1.0:
                raise ConfigError(f"eval.depths contains {depth}; every depth must be in [0, 1]")

    def _check_counts(self) -> None:
        if self.n_examples < 1 or self.batch_size < 1 or self.n_questions < 1:
            raise ConfigError(
                f"eval.n_examples={self.n_examples}, eval.batch_size={self.batch_size} and "
                f"eval.n_questions={self.n_questions} must be >= 1")

    def _check_protocol(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"eval.protocol={self.protocol!r}; allowed: {list(PROTOCOLS)}")
        if self.decode_tail is not None and self.decode_tail < 0:
            raise ConfigError(f"eval.decode_tail={self.decode_tail} must be null (the whole question) or >= 0")
        if self.decode_tail is not None and self.protocol != "question_decoded":
            raise ConfigError(f"eval.decode_tail={self.decode_tail} needs eval.protocol=question_decoded, "
                              f"got {self.protocol!r}")
        if not (self.decode or self.teacher_forced):
            raise ConfigError("eval.decode=false and eval.teacher_forced=false: nothing to evaluate")
