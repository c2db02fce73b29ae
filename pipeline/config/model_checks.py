"""Checks across sections that involve the model: what the model can run, given the task, eval and cache.

Each function raises ConfigError naming the field, the value and what is allowed. (Checks that belong
to one variant's own config move into that variant's ``__post_init__`` as variants get their configs.)
"""

from __future__ import annotations

from typing import Any

from models.caches import CacheConfig
from models.lora import LoraPlusConfig
from models.patterns.shifted_sparse import group_size
from models.registry import config_class
from pipeline.config.eval_config import EvalConfig
from pipeline.config.schema import ConfigError, reraise_as_config_error, to_dataclass
from tasks.base import Task
from tasks.tokenizer import load_tokenizer
from tasks.vocab import Vocab


def build_model_config(node: Any) -> Any:
    family = node.get("family") if node is not None else None
    cls = reraise_as_config_error(config_class, family)
    return to_dataclass(cls, node, "model")


def attention_layers(model: Any) -> int:
    """Layers a KV-cache policy acts on: all of a transformer's, a hybrid's attention layers, none of a
    recurrent family's (mamba, mamba2, gla, retention: their decode state is constant)."""
    mixers = getattr(model, "mixers", None)
    if mixers is not None:
        return mixers.count("attention")
    return int(getattr(model, "n_layers", 1)) if model.family == "transformer" else 0


def check_positional(model: Any) -> None:
    """The positional rule builds at this head size: longrope's per-pair factor lists need head_dim/2
    entries, which only the model's width and heads decide (a sweep over widths would fail per job)."""
    if attention_layers(model) == 0 or not hasattr(model, "pos"):
        return
    from models.pos.positional import Positional  # torch modules: imported only where a model has attention

    reraise_as_config_error(Positional, model.pos, model.d_model // model.n_heads, model.n_heads)


def check_vocab_size(model: Any, vocab: Vocab) -> None:
    if model.vocab_size < vocab.size:
        raise ConfigError(f"model.vocab_size={model.vocab_size} is smaller than vocab_size={vocab.size}")


def check_lengths(model: Any, task: Task, ev: EvalConfig, eval_tasks: list[Task]) -> None:
    """Training and grid lengths fit the model and every evaluated task."""
    max_len = model.max_seq_len
    if task.train_len > max_len:
        raise ConfigError(f"task.train_len={task.train_len} exceeds model.max_seq_len={max_len}")
    for length in ev.lengths if ev.kind == "grid" else []:  # other kinds have their own lengths
        if length > max_len:
            raise ConfigError(f"eval.lengths contains {length} > model.max_seq_len={max_len}; "
                              f"allowed: lengths <= {max_len} (raise model.max_seq_len)")
        for t in eval_tasks:
            reraise_as_config_error(t.check_length, length, "eval.lengths")


def check_text_eval(model: Any, ev: EvalConfig, tokenizer: str) -> None:
    """Text evaluations feed the tokenizer's ids straight to the model; the sink probe needs heads."""
    if ev.kind == "grid":
        return
    n = reraise_as_config_error(load_tokenizer, tokenizer).vocab_size
    if n > model.vocab_size:
        raise ConfigError(f"eval.kind={ev.kind}: tokenizer={tokenizer!r} has {n} tokens but model.vocab_size="
                          f"{model.vocab_size}; allowed: a tokenizer that fits the model (tokenizer=hf:PATH)")
    if ev.kind == "sinks" and attention_layers(model) == 0:
        raise ConfigError(f"eval.kind=sinks probes attention heads; model.family={model.family!r} has none; "
                          "allowed: transformer or hybrid")


def check_cache_on_model(cache: CacheConfig, model: Any) -> None:
    if cache.policy != "full" and attention_layers(model) == 0:
        raise ConfigError(f"cache.policy={cache.policy!r} on model.family={model.family!r}"
                          f"{f' (model.layers={model.schedule!r})' if hasattr(model, 'schedule') else ''}: a KV policy "
                          "needs attention layers and this model has none (its decode state is constant); "
                          "allowed: cache=full")


def check_lora(lora: LoraPlusConfig, model: Any) -> None:
    if lora.enabled and model.family != "transformer":
        raise ConfigError(f"lora.enabled=true is for model.family=transformer, got {model.family!r}")


def check_attention(model: Any, task: Task, allow_sparse_eval: bool) -> None:
    """S2-Attn's groups divide the training length; evaluation with it only on purpose."""
    attn = getattr(model, "attention", None)
    if attn is None:
        return
    if attn.train == "shifted_sparse":
        try:
            group_size(task.train_len, attn)
        except ValueError as err:
            raise ConfigError(f"task.train_len={task.train_len}: {err}") from None
    if attn.eval == "shifted_sparse" and not allow_sparse_eval:
        raise ConfigError("model.attention.eval=shifted_sparse: LongLoRA evaluates with full attention; "
                          "set model.attention.eval=full, or allow_sparse_eval=true to study it on purpose")

