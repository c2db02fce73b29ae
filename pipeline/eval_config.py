"""``eval``: what a run evaluates after fitting (the grid of tasks x lengths x depths, or another kind)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pipeline.decode import PROTOCOLS
from pipeline.eval_kinds import EVAL_KINDS, LmEvalConfig, LongBenchConfig, SinkProbeConfig
from pipeline.schema import ConfigError, reraise_as_config_error
from tasks.corpus import check_source


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
    protocol: str = "question_decoded"  # question_decoded | question_prefilled (ablation); pipeline/decode.py
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
