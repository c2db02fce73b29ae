"""eval.py's job: a trained checkpoint (or a Hugging Face directory) evaluated under a cache policy."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.config.resolve import validate
from pipeline.config.schema import ConfigError, reraise_as_config_error
from pipeline.config.threads import apply_threads
from pipeline.run import device_of, evaluate, run_dir_of
from pipeline.train.checkpoint import load_trained_model, read_checkpoint
from pipeline.train.hf_init import check_hf_weights, hf_path, load_hf_model, with_hf_model
from pipeline.train.run_state import RunLock
from pipeline.train.stages.duo_gates import save_gates

log = logging.getLogger(__name__)


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
    apply_threads(cfg.get("trainer"))  # eval.py's own trainer.threads (pipeline/config/threads.py)
    if hf_path(cfg.get("init_from")) is not None:
        return evaluate_hf(cfg, overrides)
    if not cfg.get("ckpt"):
        raise ConfigError("eval.py needs ckpt=PATH (a checkpoint of train.py) or init_from=hf:PATH (a local "
                          "Hugging Face model directory)")
    # the file handed in is input: missing, unreadable or foreign, it is a config error (no run dir, no row)
    ckpt = reraise_as_config_error(read_checkpoint, cfg.ckpt)
    saved = OmegaConf.create(ckpt.get("config") or {})
    if "model" not in saved:
        raise ConfigError(f"ckpt={cfg.ckpt!r} carries no config; it was not written by train.py")
    run_cfg = apply_eval_overrides(saved, cfg, overrides)
    res = validate(run_cfg, training=False)
    # a duo_gates checkpoint's gates are served to the duo policy; weights that do not fit are bad input too
    model, gates = reraise_as_config_error(load_trained_model, ckpt, res.model, res.lora, f"ckpt={cfg.ckpt}",
                                           bool(cfg.get("allow_nonfinite", False)))
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
    check_hf_weights(res.model, cfg.init_from)  # the stored shapes, before any allocation
    model = reraise_as_config_error(load_hf_model, res.model, cfg.init_from, bool(cfg.get("allow_nonfinite", False)))
    run_id = cfg.get("run_id") or f"eval-hf-{hf_path(cfg.init_from).name}-{uuid.uuid4().hex[:6]}"
    run_dir = run_dir_of(cfg)
    log.info("run dir: %s", run_dir)
    # an imported model was not trained here: no training length or task of ours to claim for it
    imported = {"train_len": None, "train_task": None, "imported_from": str(cfg.init_from)}
    with RunLock(run_dir, cfg.get("run_id")):
        return evaluate(model, run_cfg, res, run_dir, run_id, device_of(cfg), imported)
