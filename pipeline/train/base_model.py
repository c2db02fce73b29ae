"""A study's base model: the pretraining run that produces ``init_from``, resolved before the run starts.

A study config (``conf/experiment/*.yaml``) names its base with ``base`` (dotlist overrides of its own
config) and where the base's checkpoint lives (``init_from``); ``base_extend`` (more overrides, on top
of ``base``) adds a second link, a fine-tune of that base (e.g. a YaRN context extension), which then
is what the study starts from. ``resolve_base`` derives and validates the chain up front; ``train``
fits each link once (concurrent sweep jobs wait on a file lock), points ``init_from`` at the last and
stops unless it learned its task (``base_min_accuracy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.config.config_hash import short_hash
from pipeline.config.resolve import Resolved, validate
from pipeline.results.rows import read_rows
from pipeline.train.hf_init import PREFIX as HF_PREFIX
from pipeline.train.run_state import ROWS_FILE


class BaseNotLearned(RuntimeError):
    """A study's base model did not learn its task; nothing downstream would mean anything."""


@dataclass
class BaseRun:
    """The base's validated config and where its checkpoint and rows are."""

    cfg: DictConfig
    res: Resolved

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def train_len(self) -> int:
        return int(self.cfg.task.train_len)

    def lock(self) -> FileLock:
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.run_dir) + ".lock")

    def needs_training(self) -> bool:
        return not self.checkpoint.exists() or base_accuracy(self.run_dir, self.train_len) is None

    def start_from(self, cfg: DictConfig) -> float:
        """Point ``cfg.init_from`` at the base; its exact match, or BaseNotLearned below ``base_min_accuracy``."""
        with open_dict(cfg):
            cfg.init_from = str(self.checkpoint)
        acc = base_accuracy(self.run_dir, self.train_len)
        floor = float(cfg.get("base_min_accuracy", 0.0) or 0.0)
        if acc is None or acc < floor:
            raise BaseNotLearned(
                f"the study's base model {self.run_dir} reached exact match {acc if acc is None else round(acc, 3)} "
                f"on held-out {self.cfg.task.name} at its length {self.train_len}, below base_min_accuracy={floor}: "
                f"the study would compare noise. Train it longer (base_steps=...), change its task, or set "
                f"base_min_accuracy=0 to go on anyway.")
        return acc


def resolve_base(cfg: DictConfig) -> list[BaseRun]:
    """The study's base runs in training order, validated (empty when ``cfg`` has no base to train)."""
    base = base_config(cfg)
    if base is None:
        return []
    chain = [base]
    extended = extend_config(cfg, base)
    if extended is not None:
        chain.append(extended)
    return [BaseRun(c, validate(c)) for c in chain]


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
    template = Path(cfg.init_from).parent.parent
    base.run_dir = str(template.with_name(f"{template.name}-{short_hash(_shaping(base), 8)}"))
    base.run_id = f"base-{Path(base.run_dir).name}"
    # every arm of a study derives this base from its own config (kv_name, cache, ...); what the base
    # is comes from cfg.base, so an arm that finds it half-trained resumes it rather than refusing
    base.resume = "force"
    return base


def extend_config(cfg: DictConfig, base: DictConfig) -> DictConfig | None:
    """The second link of a study's base: ``base`` + ``cfg.base_extend`` fine-tuned from the base's
    checkpoint, in ``<base dir name>-ext-<hash>`` (the hash covers what shapes it, the base's dir included)."""
    if not cfg.get("base_extend"):
        return None
    ext = OmegaConf.create(OmegaConf.to_container(base, resolve=True))
    OmegaConf.set_struct(ext, False)
    ext.merge_with(OmegaConf.from_dotlist(list(cfg.base_extend)))
    if ext.stage == "pretrain":
        raise ValueError(f"base_extend={list(cfg.base_extend)} must set a fine-tuning stage (stage=extend): "
                         f"it starts from the base's checkpoint")
    ext.init_from = str(Path(base.run_dir) / "checkpoints" / "last.ckpt")
    ext.base = list(cfg.base)  # trained after its base link: validation accepts an init_from not yet written
    ext.eval.lengths = [int(ext.task.train_len)]
    template = Path(cfg.init_from).parent.parent
    ext.run_dir = str(template.with_name(f"{template.name}-ext-{short_hash(_shaping(ext, base.run_dir), 8)}"))
    ext.run_id = f"base-{Path(ext.run_dir).name}"
    return ext


def _shaping(cfg: DictConfig, *extra: object) -> dict:
    """What shapes a base's weights (model, task, data, optimiser, trainer, seed), not where data is read."""
    shaping = {k: OmegaConf.to_container(cfg[k]) if isinstance(cfg.get(k), DictConfig) else cfg.get(k)
               for k in ("model", "task", "data", "optim", "trainer", "seed", "vocab_size")}
    for where in ("cache_dir", "num_workers"):  # where and how data is read does not change the model
        shaping["data"].pop(where, None)
    if extra:
        shaping["from"] = [str(e) for e in extra] + [cfg.get("stage")]
    return shaping


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
