"""From a composed Hydra config to validated, typed objects — before any data or step.

``validate`` turns every section into its dataclass (``pipeline/config/schema.py``: an unknown key or a wrong
type is an error, then each dataclass's ``__post_init__`` checks values), then checks the combinations:
the model against task, eval and cache (``pipeline/config/model_checks.py``), the stage's own rules (each
stage in ``pipeline/train/stages/``), and what only a training run needs. Every message names the field,
the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from models.caches import CacheConfig, policy_knobs
from models.lora import LoraPlusConfig
from pipeline.config.config_hash import config_hash, hashed_config  # noqa: F401  (re-exported)
from pipeline.config.eval_config import EvalConfig
from pipeline.config.model_checks import (
    attention_layers,  # noqa: F401  (re-exported)
    build_model_config,
    check_attention,
    check_cache_on_model,
    check_lengths,
    check_lora,
    check_positional,
    check_text_eval,
    check_vocab_size,
)
from pipeline.config.schema import ConfigError, check_finite, reraise_as_config_error, to_dataclass
from pipeline.config.sections import DataConfig, OptimConfig, RunConfig, run_config
from pipeline.config.stage import STAGES, Stage
from pipeline.config.task_config import bind_and_check_vocab, build_task, eval_tasks
from pipeline.config.trainer_config import activation_checkpointing, check_accelerator, compile_settings, trainer_kwargs
from tasks.base import Task
from tasks.curriculum import curriculum_task
from tasks.vocab import Vocab

__all__ = ["ConfigError", "Resolved", "build_model_config", "build_task", "to_dataclass", "trainer_kwargs",
           "validate"]


@dataclass
class Resolved:
    """Everything a run needs, validated."""

    model: Any
    task: Task
    vocab: Vocab
    cache: CacheConfig
    data: DataConfig
    optim: OptimConfig
    eval: EvalConfig
    eval_tasks: list[Task]
    config_hash: str
    stage: Stage
    stage_config: Any = None  # the stage's own section (duo_gates: DuoConfig), None if it has none
    lora: LoraPlusConfig = field(default_factory=LoraPlusConfig)
    activation_checkpointing: bool = False  # trainer.activation_checkpointing


def validate(cfg: DictConfig, training: bool = True) -> Resolved:
    """Check the whole config; raise ConfigError before anything is generated or trained.

    ``training=False`` for eval.py's config (a checkpoint's training config plus overrides): what
    only a training run needs (init_from on disk, a data set that fills a batch) is not checked.
    """
    run = run_config(cfg)
    check_finite(cfg)
    stage = resolve_stage(cfg)
    res = resolve_sections(cfg, stage)
    check_combinations(cfg, run, res)
    if training:
        check_training(cfg, run, res)
    return res


def resolve_stage(cfg: DictConfig) -> Stage:
    name = cfg.get("stage", "pretrain")
    if name not in STAGES:
        raise ConfigError(f"stage={name!r}; allowed: {STAGES.names()}")
    stage = STAGES.get(name)()
    if stage.needs_init and not cfg.get("init_from"):
        raise ConfigError(f"stage={name!r} needs init_from=PATH of a checkpoint to start from")
    return stage


def resolve_sections(cfg: DictConfig, stage: Stage) -> Resolved:
    """Every section as its dataclass (each checks its own values)."""
    vocab = reraise_as_config_error(Vocab, int(cfg.vocab_size))
    model = build_model_config(cfg.model)
    check_vocab_size(model, vocab)
    task = build_task(cfg.task)
    ev = to_dataclass(EvalConfig, cfg.eval, "eval")
    # the policy's own config class (models/caches/); knobs of other policies are dropped
    cache_cls, cache_node = reraise_as_config_error(policy_knobs, OmegaConf.to_container(cfg.cache, resolve=True))
    cache = to_dataclass(cache_cls, cache_node, "cache")
    data = to_dataclass(DataConfig, cfg.get("data"), "data")  # eval.py configs have no data/optim
    optim = to_dataclass(OptimConfig, cfg.get("optim"), "optim")
    tasks = eval_tasks(ev.tasks, task)
    bind_and_check_vocab(tasks + [task], cfg.get("tokenizer") or "bytes", vocab)
    lora = to_dataclass(LoraPlusConfig, cfg.get("lora"), "lora")
    for _, other in STAGES.items():  # every stage's own section is checked where present, used here or not
        if other.section is not None and other.section in cfg and other.name != stage.name:
            other().settings(cfg)
    return Resolved(model, task, vocab, cache, data, optim, ev, tasks, config_hash(cfg), stage,
                    stage.settings(cfg), lora, activation_checkpointing(cfg.get("trainer")))


def check_combinations(cfg: DictConfig, run: RunConfig, res: Resolved) -> None:
    """Checks across sections, the stage's own, then the Trainer's arguments."""
    check_lengths(res.model, res.task, res.eval, res.eval_tasks)
    check_positional(res.model)
    check_text_eval(res.model, res.eval, cfg.get("tokenizer") or "bytes")
    check_cache_on_model(res.cache, res.model)
    res.stage.check(cfg, res)
    check_lora(res.lora, res.model)
    check_attention(res.model, res.task, run.allow_sparse_eval)
    check_prefix_cache(res.eval, res.task)
    if "trainer" in cfg:
        trainer_kwargs(cfg.trainer)
        if compile_settings(cfg.trainer)[0] and not res.stage.compiles:
            raise ConfigError(f"trainer.compile=true is not supported with stage={res.stage.name!r} (its module "
                              "has no compiled forward); allowed: trainer.compile=false")


def check_prefix_cache(ev: EvalConfig, task: Task) -> None:
    if not ev.prefix_cache:
        return
    if not hasattr(task, "questions"):
        raise ConfigError(f"eval.prefix_cache=true needs a task with several needles to ask about (niah); "
                          f"got task.name={task.name!r}")
    needles = getattr(task, "needles", None)
    if needles is not None and ev.n_questions > needles:
        raise ConfigError(f"eval.n_questions={ev.n_questions} exceeds task.needles={needles}; "
                          f"allowed with eval.prefix_cache=true: n_questions <= needles")


def check_training(cfg: DictConfig, run: RunConfig, res: Resolved) -> None:
    """What only train.py needs: a batch the data fills, a start checkpoint, gates for the duo policy."""
    if "trainer" in cfg:
        check_accelerator(cfg.trainer)
    data, cache = res.data, res.cache
    if run.fit and data.n_train < data.batch_size:
        raise ConfigError(f"data.n_train={data.n_train} is smaller than data.batch_size={data.batch_size}: not one "
                          f"full training batch; allowed: n_train >= batch_size")
    check_curriculum(cfg, res)
    hf_model = str(run.init_from or "").startswith("hf:")  # an HF directory: pipeline/train/hf_init.py checks it
    if run.init_from and not cfg.get("base") and not hf_model and not Path(run.init_from).is_file():
        raise ConfigError(f"init_from={run.init_from!r} does not exist (or is not a file); allowed: a checkpoint "
                          f"written by train.py (e.g. outputs/runs/NAME/checkpoints/last.ckpt)")
    if run.evaluate and cache.policy == "duo" and cache.gates_path == "learned" and not res.stage.learns_gates:
        raise ConfigError(f"cache.policy=duo with cache.gates_path=learned in a stage={res.stage.name!r} run: no "
                          f"gates are learned here; allowed: stage=duo_gates (learns them), cache.gates_path=PATH "
                          f"of a gates.pt, or evaluate a duo_gates checkpoint with eval.py")


def check_curriculum(cfg: DictConfig, res: Resolved) -> None:
    """The warm-up family exists and fits the task's length (only stage=pretrain runs the first phase:
    the other stages start from a trained model and ignore a recipe's curriculum)."""
    data = res.data
    reraise_as_config_error(curriculum_task, data.curriculum_task, res.task, res.vocab)
