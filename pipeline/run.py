"""A training run goes straight through: resolve the config (and its base) -> fit the stage -> evaluate -> rows.

``train`` (train.py) validates the config and, for a study, its base model up front; fits the base
once if it is missing; then fits the configured stage (``pipeline/train/stages/``) and evaluates. eval.py's
job, evaluating a checkpoint, is ``pipeline/eval_run.py``; both write rows through ``evaluate``.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from models.caches import CacheConfig
from models.registry import build_model
from pipeline.config.config_hash import hashed_config, short_hash
from pipeline.config.quiet import silence_known_noise
from pipeline.config.resolve import Resolved, validate
from pipeline.config.threads import apply_threads
from pipeline.evaluation.eval_kinds import kind_summary, run_eval_kind
from pipeline.evaluation.evaluate import evaluate_grid
from pipeline.evaluation.prefix import evaluate_prefix_cache
from pipeline.results.identity import model_columns, run_identity
from pipeline.results.provenance import plugin_columns
from pipeline.results.summary import print_summary
from pipeline.train.base_model import resolve_base
from pipeline.train.checkpoint import load_weights, model_state, read_checkpoint, remove_stale_temps
from pipeline.train.fit import count_params, fit_stage
from pipeline.train.hf_init import check_hf_weights, hf_path, load_hf_model, with_hf_model
from pipeline.train.run_state import ROWS_FILE, RunLock, claim_run_config, is_launcher_rank
from tasks.dataset import clean_stale_temps

log = logging.getLogger(__name__)
silence_known_noise()  # also in DDP worker processes, which import this module


def describe(model_cfg: Any) -> dict[str, Any]:
    """Row identifiers of an architecture: family, positional rule, attention pattern (pipeline/results/identity.py)."""
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


def row_base(cfg: DictConfig, res: Resolved, run_id: str) -> dict[str, Any]:
    """The columns every row of this run shares: its identity (pipeline/results/identity.py) and where it came from."""
    data = res.data  # a curriculum's first phase is part of how the model was trained (only where one ran)
    curriculum = ({"train_curriculum": f"{data.curriculum_task}:{data.curriculum_share:g}"}
                  if data.curriculum_task else {})
    return dict(run_id=run_id, **run_identity(res.model, scoped_policy(res.cache, res.model), res.lora), **curriculum,
                train_len=res.task.train_len, train_task=res.task.name, stage=cfg.get("stage", "pretrain"),
                config_hash=res.config_hash,
                variant=cfg.get("variant_name"),  # a study arm's name (conf/variant), if any
                arm_hash=arm_hash(cfg),  # equal for seeds of one configuration; collect/plot keep others apart
                threads=torch.get_num_threads(),  # the speed columns depend on it (trainer.threads)
                **plugin_columns())  # $LONGCTX_PLUGINS: code that ran in this process


# What a model's arm is not: where and how visibly it ran, and how it is evaluated (eval, cache: rows say
# those as columns). What is left is how the model was built and trained.
NOT_ARM = ("hydra", "paths", "run_dir", "run_id", "seed", "init_from", "evaluate", "checkpoint_every", "study_dir",
           "resume", "logger", "eval", "cache", "ckpt", "zero_shot_eval")


def arm_hash(cfg: DictConfig) -> str:
    """Hash of the resolved config that made the model, less seed, locations and evaluation: equal for seeds
    of one configuration, and for train.py and eval.py on one checkpoint (eval.py's config is the checkpoint's,
    resolved), so a model is one series in tables and figures whichever script evaluated it."""
    container = hashed_config(cfg, drop=NOT_ARM)
    try:
        container = OmegaConf.to_container(OmegaConf.create(container), resolve=True)
    except Exception:  # an interpolation into a dropped key: hash the unresolved form (still stable per run)
        pass
    return short_hash(container, 8)


def evaluate(model: torch.nn.Module, cfg: DictConfig, res: Resolved, run_dir: Path, run_id: str,
             device: torch.device, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    model.to(device)
    learned = run_dir / "gates.pt"
    if res.cache.policy == "duo" and res.cache.gates_path == "learned" and learned.exists():
        res.cache.gates_path = str(learned)  # this run's (or its checkpoint's) gates
    base = dict(row_base(cfg, res, run_id), n_params=count_params(model), **(extra or {}))
    rows_path = run_dir / ROWS_FILE
    if res.eval.kind != "grid":  # perplexity, LongBench, sink probe (pipeline/evaluation/eval_kinds.py)
        rows = run_eval_kind(model, res, cfg.get("tokenizer") or "bytes", int(cfg.seed), base, rows_path, device)
        log.info("%s", kind_summary(rows))
        log.info("rows in %s", rows_path)
        return rows
    policy = scoped_policy(res.cache, res.model)
    rows = evaluate_grid(model, res.eval_tasks, res.vocab, res.eval, policy, int(cfg.seed), base, rows_path,
                         device=device)
    if res.eval.prefix_cache:
        rows += evaluate_prefix_cache(model, res.task, res.vocab, res.eval.lengths, res.eval.n_examples,
                                      res.eval.batch_size, res.eval.n_questions, policy, int(cfg.seed), base,
                                      rows_path, device, protocol=res.eval.protocol)
    print_summary(rows, title=f"{run_id}: {describe(res.model)}")
    log.info("rows in %s", rows_path)
    return rows


def scoped_policy(policy: CacheConfig, model_cfg: Any) -> CacheConfig:
    """A KV policy on a hybrid acts on the attention layers only, and its row label says so."""
    mixers = getattr(model_cfg, "mixers", None)
    if policy.policy == "full" or mixers is None:
        return policy
    return policy.scoped(f"attn layers {mixers.count('attention')}/{len(mixers)}")


def train(cfg: DictConfig) -> list[dict[str, Any]]:
    """Resolve the config and its study's base, fit the base if missing, then fit, evaluate, write rows."""
    cfg = with_hf_model(cfg)  # init_from=hf:PATH: the model node comes from PATH/config.json
    res = validate(cfg)  # every config error surfaces here, before data or steps
    check_hf_weights(res.model, cfg.get("init_from"))  # an imported model's shapes, before any allocation
    apply_threads(cfg.get("trainer"))  # before any tensor work (pipeline/config/threads.py)
    chain = resolve_base(cfg)  # a study's base model (and its extension), validated too
    for base in chain:
        with base.lock():  # concurrent sweep jobs: the first trains the base, the others wait
            if base.needs_training():
                log.info("training the study's base model (stage %s) into %s", base.cfg.stage, base.run_dir)
                run(base.cfg, base.res)
    if chain:
        base = chain[-1]
        acc = base.start_from(cfg)  # init_from -> the base's checkpoint; stops if the base did not learn
        log.info("base model %s: exact match %.3f at L=%s", base.run_dir, acc, base.train_len)
    return run(cfg, res)


def run(cfg: DictConfig, res: Resolved) -> list[dict[str, Any]]:
    """One validated run in its run dir: claim it (rank 0), fit its stage, evaluate."""
    run_dir = run_dir_of(cfg)
    log.info("run dir: %s", run_dir)
    if not is_launcher_rank():  # a DDP/SLURM worker: rank 0 holds the lock and the run record
        return fit_and_evaluate(cfg, res, run_dir)
    with RunLock(run_dir, cfg.get("run_id")):
        claim_run_config(cfg, run_dir, res.config_hash)  # same run_id, other config: stop here
        remove_stale_temps(run_dir / "checkpoints")  # writes a kill interrupted
        clean_stale_temps(res.data.cache_dir)
        return fit_and_evaluate(cfg, res, run_dir)


def initial_model(cfg: DictConfig, res: Resolved) -> torch.nn.Module:
    """The model a run starts from: fresh, a Hugging Face import, or ``init_from``'s weights."""
    hf_dir = hf_path(cfg.get("init_from"))
    allow_nonfinite = bool(cfg.get("allow_nonfinite", False))
    model = build_model(res.model) if hf_dir is None else load_hf_model(res.model, cfg.init_from, allow_nonfinite)
    if cfg.get("init_from") and hf_dir is None:  # a checkpoint of this project
        state = model_state(read_checkpoint(cfg.init_from, field="init_from"))
        state.pop("duo_gates", None)  # gates of an earlier duo stage are not model weights
        load_weights(model, state, source=f"init_from={cfg.init_from}", allow_nonfinite=allow_nonfinite)
    return model


def fit_and_evaluate(cfg: DictConfig, res: Resolved, run_dir: Path) -> list[dict[str, Any]]:
    run_id = cfg.get("run_id") or f"{res.model.family}-{res.task.name}-{uuid.uuid4().hex[:6]}"
    L.seed_everything(int(cfg.seed), workers=True)
    model = initial_model(cfg, res)
    device = device_of(cfg)
    rows: list[dict[str, Any]] = []
    if cfg.get("zero_shot_eval") and cfg.get("init_from"):
        # the checkpoint under this config's rule, before any fine-tuning (dashed lines in figures)
        rows += evaluate(model, cfg, res, run_dir, run_id, device, {"stage": "zero_shot", "finetuned": False})
    if not cfg.get("fit", True):
        return rows + evaluate(model, cfg, res, run_dir, run_id, device, {"finetuned": False})
    model.train()  # a zero-shot evaluation above left it in eval mode
    extra = fit_stage(res.stage, cfg, res, model, run_dir)
    if extra is None:  # a non-zero DDP rank: rank 0 evaluates
        return []
    if not cfg.get("evaluate", True):
        log.info("run dir: %s (evaluate=false)", run_dir)
        return rows
    return rows + evaluate(model, cfg, res, run_dir, run_id, device, extra)
