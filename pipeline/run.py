"""The two jobs behind train.py and eval.py: build from a validated config, fit, evaluate, write rows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import signal
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
from filelock import FileLock
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from models.cache import CacheConfig
from models.duo import detach_duo_gates
from models.duo import save_gates as save_gate_file
from models.lora import apply_lora, has_lora, merge_lora, trainable_parameters
from models.registry import build_model
from pipeline.checkpoint import (
    AtomicCheckpointIO,
    find_resume_checkpoint,
    load_trained_model,
    load_weights,
    model_state,
    read_checkpoint,
    remove_stale_temps,
)
from pipeline.config import ConfigError, Resolved, trainer_kwargs, validate
from pipeline.costs import TrainCostProbe
from pipeline.duo_stage import DuoGatesLM
from pipeline.eval_kinds import run_eval_kind
from pipeline.evaluate import evaluate_grid
from pipeline.hf_init import PREFIX as HF_PREFIX
from pipeline.hf_init import hf_path, load_hf_model, with_hf_model
from pipeline.identity import model_columns, run_identity
from pipeline.interrupt import CheckpointOnInterrupt
from pipeline.module import LitLM
from pipeline.prefix import evaluate_prefix_cache
from pipeline.quiet import silence_known_noise
from pipeline.rows import read_rows
from pipeline.run_state import RunLock, claim_run_config, is_launcher_rank
from pipeline.summary import print_summary
from tasks.datamodule import TaskDataModule
from tasks.dataset import clean_stale_temps

log = logging.getLogger(__name__)
ROWS_FILE = "results.jsonl"
silence_known_noise()  # also in DDP worker processes, which import this module


def describe(model_cfg: Any) -> dict[str, Any]:
    """Row identifiers of an architecture: family, positional rule, attention pattern (pipeline/identity.py)."""
    return {k: v for k, v in model_columns(model_cfg).items() if k in ("model", "pos", "attention")}


def run_dir_of(cfg: DictConfig) -> Path:
    path = Path(cfg.run_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def device_of(cfg: DictConfig) -> torch.device:
    accel = str(cfg.get("trainer", {}).get("accelerator", "cpu"))
    if accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    node = cfg.get("logger")
    if not node:
        return []
    return [instantiate(v, save_dir=str(run_dir)) for v in node.values() if v and "_target_" in v]


def row_base(cfg: DictConfig, res: Resolved, run_id: str) -> dict[str, Any]:
    """The columns every row of this run shares: its identity (pipeline/identity.py) and where it came from."""
    return dict(run_id=run_id, **run_identity(res.model, scoped_policy(res.cache, res.model), res.lora),
                train_len=res.task.train_len, train_task=res.task.name, stage=cfg.get("stage", "pretrain"),
                config_hash=res.config_hash,
                variant=cfg.get("variant_name"),  # a study arm's name (conf/variant), if any
                arm_hash=arm_hash(cfg))  # equal for seeds of one configuration; collect/plot keep others apart


def arm_hash(cfg: DictConfig) -> str:
    """Hash of what defines an experiment arm: the config without seed, run names and locations."""
    container = OmegaConf.to_container(cfg, resolve=False)
    for volatile in ("hydra", "paths", "run_dir", "run_id", "seed", "init_from", "evaluate", "checkpoint_every"):
        container.pop(volatile, None)
    return hashlib.md5(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:8]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def evaluate(model: torch.nn.Module, cfg: DictConfig, res: Resolved, run_dir: Path, run_id: str,
             device: torch.device, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    model.to(device)
    learned = run_dir / "gates.pt"
    if res.cache.policy == "duo" and res.cache.gates_path == "learned" and learned.exists():
        res.cache.gates_path = str(learned)  # this run's (or its checkpoint's) gates
    base = dict(row_base(cfg, res, run_id), n_params=count_params(model), **(extra or {}))
    if res.eval.kind != "grid":  # perplexity, LongBench, sink probe (pipeline/eval_kinds.py)
        return run_eval_kind(model, res, cfg.get("tokenizer") or "bytes", int(cfg.seed), base, run_dir / ROWS_FILE,
                             device)
    policy = scoped_policy(res.cache, res.model)
    rows = evaluate_grid(
        model, res.eval_tasks, res.vocab, res.eval.lengths, res.eval.depths, res.eval.n_examples,
        res.eval.batch_size, policy, int(cfg.seed), base, run_dir / ROWS_FILE,
        decode=res.eval.decode, teacher_forced=res.eval.teacher_forced, device=device,
        protocol=res.eval.protocol, decode_tail=res.eval.decode_tail)
    if res.eval.prefix_cache:
        rows += evaluate_prefix_cache(model, res.task, res.vocab, res.eval.lengths, res.eval.n_examples,
                                      res.eval.batch_size, res.eval.n_questions, policy, int(cfg.seed), base,
                                      run_dir / ROWS_FILE, device, protocol=res.eval.protocol)
    print_summary(rows, title=f"{run_id}: {describe(res.model)}")
    log.info("rows in %s", run_dir / ROWS_FILE)
    return rows


@dataclasses.dataclass
class ScopedCacheConfig(CacheConfig):
    """A KV policy on a hybrid: it acts on the attention layers only, and its row label says so."""

    scope: str = ""

    @property
    def label(self) -> str:
        return f"{super().label}[{self.scope}]"


def scoped_policy(policy: CacheConfig, model_cfg: Any) -> CacheConfig:
    layers = getattr(model_cfg, "layers", None)
    if policy.policy == "full" or not isinstance(layers, str):
        return policy
    fields = {f.name: getattr(policy, f.name) for f in dataclasses.fields(CacheConfig)}
    return ScopedCacheConfig(**fields, scope=f"attn layers {layers.count('A')}/{len(layers)}")


def save_gates(gates: torch.Tensor, run_dir: Path) -> Path:
    """Write learned DuoAttention gates as run_dir/gates.pt; evaluation serves them to
    ``cache.gates_path=learned`` (validation accepts that name before the gates exist)."""
    path = run_dir / "gates.pt"
    save_gate_file(gates, str(path))
    return path


def build_module(cfg: DictConfig, res: Resolved, model: torch.nn.Module) -> L.LightningModule:
    """The LightningModule of the configured stage (LoRA+ applied for extend when enabled)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    if hasattr(model, "set_activation_checkpointing"):
        model.set_activation_checkpointing(res.activation_checkpointing)
    if cfg.get("stage") == "duo_gates":
        return DuoGatesLM(model, res.duo, query_token=res.vocab.QUERY, config=config)
    apply_lora(model, res.lora)
    return LitLM(model, res.optim, config=config)


def base_config(cfg: DictConfig) -> DictConfig | None:
    """Studies: the pretraining run that produces ``init_from``, from ``cfg.base`` (dotlist overrides).

    Its directory is ``<init_from's run dir>-<hash>``, the hash of everything that shapes the base
    (model, task, data, optimiser, trainer, seed), so a base trained under other settings (a
    smaller ``scale``, fewer steps) is never silently reused. It is evaluated at its own length only.
    """
    if not cfg.get("base") or not cfg.get("init_from") or str(cfg.init_from).startswith(HF_PREFIX):
        return None
    base = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.set_struct(base, False)
    base.merge_with(OmegaConf.from_dotlist(list(cfg.base)))
    base.stage, base.init_from, base.base, base.fit, base.zero_shot_eval = "pretrain", None, None, True, False
    base.variant_name = None
    base.eval.lengths, base.eval.tasks, base.eval.prefix_cache = [int(base.task.train_len)], None, False
    shaping = {k: OmegaConf.to_container(base[k]) if isinstance(base.get(k), DictConfig) else base.get(k)
               for k in ("model", "task", "data", "optim", "trainer", "seed", "vocab_size")}
    for where in ("cache_dir", "num_workers"):  # where and how data is read does not change the model
        shaping["data"].pop(where, None)
    digest = hashlib.md5(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:8]
    template = Path(cfg.init_from).parent.parent
    base.run_dir = str(template.with_name(f"{template.name}-{digest}"))
    base.run_id = f"base-{Path(base.run_dir).name}"
    # every arm of a study derives this base from its own config (kv_name, cache, ...); what the base
    # is comes from cfg.base, so an arm that finds it half-trained resumes it rather than refusing
    base.resume = "force"
    return base


def base_accuracy(run_dir: Path, train_len: int) -> float | None:
    """Held-out exact match (prefill + decode) of a base run at its training length, from its rows."""
    rows_file = run_dir / ROWS_FILE
    if not rows_file.exists():
        return None
    rows = read_rows(rows_file)
    ok = [r for r in rows if r.get("status") == "ok" and r.get("eval_len") == train_len
          and r.get("accuracy") is not None]
    n = sum(r.get("n_examples") or 0 for r in ok)
    return sum(r["accuracy"] * (r.get("n_examples") or 0) for r in ok) / n if n else None


def ensure_base(cfg: DictConfig) -> None:
    """Pretrain the study's base model once (concurrent sweep jobs wait on a file lock), point
    ``init_from`` at it, and stop unless it learned its task (``base_min_accuracy``)."""
    base = base_config(cfg)
    if base is None:
        return
    validate(base)
    run_dir = Path(base.run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(run_dir) + ".lock"):
        if not ckpt.exists() or base_accuracy(run_dir, int(base.task.train_len)) is None:
            log.info("pretraining the study's base model into %s", run_dir)
            train(base)
    with open_dict(cfg):
        cfg.init_from = str(ckpt)
    acc = base_accuracy(run_dir, int(base.task.train_len))
    floor = float(cfg.get("base_min_accuracy", 0.0) or 0.0)
    if acc is None or acc < floor:
        raise BaseNotLearned(
            f"the study's base model {run_dir} reached exact match {acc if acc is None else round(acc, 3)} on "
            f"held-out {base.task.name} at its length {base.task.train_len}, below base_min_accuracy={floor}: "
            f"the study would compare noise. Train it longer (base_steps=...), change its task, or set "
            f"base_min_accuracy=0 to go on anyway.")
    log.info("base model %s: exact match %.3f at L=%s", run_dir, acc, base.task.train_len)


class BaseNotLearned(RuntimeError):
    """A study's base model did not learn its task; nothing downstream would mean anything."""


def train(cfg: DictConfig) -> list[dict[str, Any]]:
    """Fit the model of ``cfg`` on its task, save checkpoints, evaluate the grid, write rows."""
    cfg = with_hf_model(cfg)  # init_from=hf:PATH: the model node comes from PATH/config.json
    res = validate(cfg)  # every config error surfaces here, before data or steps
    ensure_base(cfg)
    run_dir = run_dir_of(cfg)
    log.info("run dir: %s", run_dir)
    if not is_launcher_rank():  # a DDP/SLURM worker: rank 0 holds the lock and the run record
        return _train(cfg, res, run_dir)
    with RunLock(run_dir, cfg.get("run_id")):
        claim_run_config(cfg, run_dir, res.config_hash)  # same run_id, other config: stop here
        remove_stale_temps(run_dir / "checkpoints")  # writes a kill interrupted
        clean_stale_temps(res.data.cache_dir)
        return _train(cfg, res, run_dir)


def _train(cfg: DictConfig, res: Resolved, run_dir: Path) -> list[dict[str, Any]]:
    run_id = cfg.get("run_id") or f"{res.model.family}-{res.task.name}-{uuid.uuid4().hex[:6]}"
    L.seed_everything(int(cfg.seed), workers=True)
    hf_dir = hf_path(cfg.get("init_from"))
    model = build_model(res.model) if hf_dir is None else load_hf_model(res.model, cfg.init_from)
    if cfg.get("init_from") and hf_dir is None:  # a checkpoint of this project
        state = model_state(read_checkpoint(cfg.init_from, field="init_from"))
        state.pop("duo_gates", None)  # gates of an earlier duo stage are not model weights
        load_weights(model, state, source=f"init_from={cfg.init_from}")
    rows: list[dict[str, Any]] = []
    if cfg.get("zero_shot_eval") and cfg.get("init_from"):
        # the checkpoint under this config's rule, before any fine-tuning (dashed lines in figures)
        rows += evaluate(model, cfg, res, run_dir, run_id, device_of(cfg),
                         {"stage": "zero_shot", "finetuned": False})
    if not cfg.get("fit", True):
        return rows + evaluate(model, cfg, res, run_dir, run_id, device_of(cfg), {"finetuned": False})
    model.train()  # a zero-shot evaluation above left it in eval mode
    lit = build_module(cfg, res, model)
    trainable = trainable_parameters(model)
    log.info("trainable parameters: %d of %d", trainable, count_params(model))
    data = TaskDataModule(res.task, res.vocab, res.data.n_train, res.data.n_val, res.data.batch_size,
                          int(cfg.seed), res.data.cache_dir, res.data.num_workers, res.data.shuffle)
    ckpt_dir = run_dir / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                 every_n_train_steps=int(cfg.get("checkpoint_every", 200)))
    costs = TrainCostProbe()
    kwargs = trainer_kwargs(cfg.trainer)
    plugins = kwargs.pop("plugins", None) or []
    plugins = [plugins] if isinstance(plugins, (str, dict)) else list(plugins)
    callbacks = [checkpoint, costs, CheckpointOnInterrupt(ckpt_dir / "last.ckpt")]
    if kwargs.get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())
    trainer = L.Trainer(**kwargs, default_root_dir=str(run_dir), use_distributed_sampler=False,
                        logger=build_loggers(cfg, run_dir) or False, callbacks=callbacks,
                        plugins=[*plugins, AtomicCheckpointIO()])  # checkpoints: temp beside, fsync, rename
    for lg in trainer.loggers:
        lg.log_hyperparams({"config_hash": res.config_hash, "trainable_params": trainable, **flat_config(cfg)})
    # a killed or requeued run continues from its newest loadable checkpoint (a corrupt one is skipped)
    resume = find_resume_checkpoint(ckpt_dir)
    if resume is not None:
        log.info("resuming from %s", resume)
    try:
        trainer.fit(lit, datamodule=data, ckpt_path=str(resume) if resume else None, weights_only=True)
    except SIGTERMException:  # checkpointed by CheckpointOnInterrupt; exit as a terminated process, not 0
        raise SystemExit(128 + signal.SIGTERM) from None
    if trainer.global_rank != 0:
        return []
    if not trainer.fast_dev_run:
        trainer.save_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)  # a full checkpoint: the resume point
    extra = dict(trainable_params=trainable, finetuned=bool(cfg.get("init_from")), **costs.summary())
    if cfg.get("stage") == "duo_gates":
        extra["gates_path"] = str(save_gates(lit.gates, run_dir))
        detach_duo_gates(model)
    if has_lora(model):
        merge_lora(model)  # evaluation and export use plain merged weights
    if not cfg.get("evaluate", True):
        log.info("run dir: %s (evaluate=false)", run_dir)
        return rows
    return rows + evaluate(model, cfg, res, run_dir, run_id, device_of(cfg), extra)


class StepProgressBar(RichProgressBar):
    """Lightning's bar without "Epoch 0/-2": step-based runs have no epoch count to show."""

    def _get_train_description(self, current_epoch: int) -> str:
        steps = self.trainer.max_steps
        return f"train (max_steps={steps})" if steps and steps > 0 else f"train, epoch {current_epoch}"


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """Hyperparameters for loggers: the resolved config flattened to dotted keys."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) or node is None else str(node)

    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    walk(container, "")
    return out


def apply_eval_overrides(saved: DictConfig, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The checkpoint's config, with only what the user overrode for this evaluation.

    ``model.pos.rule=yarn`` changes one field; ``task=mqar`` swaps the task group; ``cache``,
    ``eval`` and ``seed`` always come from the evaluation config.
    """
    out = OmegaConf.create(OmegaConf.to_container(saved, resolve=True))
    OmegaConf.set_struct(out, False)
    for key in ("cache", "eval", "seed", "run_dir", "logger"):
        if key in cfg:
            out[key] = cfg[key]
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        root = key.split(".")[0]
        if root in ("model", "task", "vocab_size", "tokenizer"):
            OmegaConf.update(out, key, OmegaConf.select(cfg, key), merge=False)
    return out


def evaluate_checkpoint(cfg: DictConfig, overrides: list[str]) -> list[dict[str, Any]]:
    """eval.py: load a checkpoint (or init_from=hf:PATH), apply overrides, evaluate the grid under a cache policy."""
    if hf_path(cfg.get("init_from")) is not None:
        return evaluate_hf(cfg, overrides)
    if not cfg.get("ckpt"):
        raise ConfigError("eval.py needs ckpt=PATH (a checkpoint of train.py) or init_from=hf:PATH (a local "
                          "Hugging Face model directory)")
    ckpt = read_checkpoint(cfg.ckpt)
    saved = OmegaConf.create(ckpt.get("config") or {})
    if "model" not in saved:
        raise ValueError(f"ckpt={cfg.ckpt!r} carries no config; it was not written by train.py")
    run_cfg = apply_eval_overrides(saved, cfg, overrides)
    res = validate(run_cfg, training=False)
    # a duo_gates checkpoint's gates are served to the duo policy
    model, gates = load_trained_model(ckpt, res.model, res.lora, source=f"ckpt={cfg.ckpt}")
    run_dir = run_dir_of(cfg)
    log.info("run dir: %s", run_dir)
    if gates is not None:
        save_gates(gates, run_dir)
    run_id = cfg.get("run_id") or f"eval-{Path(str(cfg.ckpt)).parent.parent.name}-{uuid.uuid4().hex[:6]}"
    with RunLock(run_dir, cfg.get("run_id")):  # a rerun into the same dir skips the cells it has
        return evaluate(model, run_cfg, res, run_dir, run_id, device_of(cfg))


def evaluate_hf(cfg: DictConfig, overrides: list[str]) -> list[dict[str, Any]]:
    """eval.py init_from=hf:PATH: the imported model as it is, under the config's rule and cache policy."""
    if cfg.get("ckpt"):
        raise ConfigError(f"ckpt={cfg.ckpt!r} and init_from={cfg.init_from!r}: give one model to evaluate")
    run_cfg = with_hf_model(cfg, overrides)
    res = validate(run_cfg, training=False)
    model = load_hf_model(res.model, cfg.init_from)
    run_id = cfg.get("run_id") or f"eval-hf-{hf_path(cfg.init_from).name}-{uuid.uuid4().hex[:6]}"
    run_dir = run_dir_of(cfg)
    with RunLock(run_dir, cfg.get("run_id")):
        return evaluate(model, run_cfg, res, run_dir, run_id, device_of(cfg))
