"""From a composed Hydra config to validated, typed objects — before any data or step.

Every group becomes its dataclass through ``OmegaConf.structured``, so an unknown key or a wrong
type is an error; then each dataclass's ``__post_init__`` checks values, and ``validate`` checks
the combinations (eval lengths vs the model, vocabulary vs the task, stage vs init_from). Every
message names the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from models.cache import CacheConfig, policy_knobs
from models.lora import LoraPlusConfig
from models.patterns.shifted_sparse import group_size
from models.registry import config_class
from pipeline.decode import PROTOCOLS
from pipeline.duo_stage import DuoConfig
from pipeline.eval_kinds import EVAL_KINDS, LmEvalConfig, LongBenchConfig, SinkProbeConfig
from tasks.base import MAX_SEED, Task
from tasks.registry import TASKS
from tasks.text import bind_tokenizer
from tasks.tokenizer import load_tokenizer
from tasks.vocab import Vocab

STAGES = ("pretrain", "extend", "duo_gates")
RESUME_MODES = ("auto", "force")  # force: continue a named run whose config changed


class ConfigError(ValueError):
    """A config value that cannot run; the message names field, value and what is allowed."""


@dataclass
class RunConfig:
    """The top-level scalars of train.py / eval.py configs (those present are checked)."""

    seed: int = 0
    vocab_size: int = 256
    checkpoint_every: int = 200
    run_id: Optional[str] = None
    init_from: Optional[str] = None
    resume: str = "auto"
    evaluate: bool = True
    fit: bool = True
    zero_shot_eval: bool = False
    allow_sparse_eval: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.seed < MAX_SEED:
            raise ConfigError(f"seed={self.seed} is out of range; allowed: 0 <= seed < {MAX_SEED}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every} must be >= 1 (training steps)")
        if self.resume not in RESUME_MODES:
            raise ConfigError(f"resume={self.resume!r}; allowed: {RESUME_MODES}")


@dataclass
class DataConfig:
    n_train: int = 20000
    n_val: int = 256
    batch_size: int = 32
    num_workers: int = 0
    cache_dir: Optional[str] = None  # None: generate in memory, no cache
    shuffle: bool = True  # false: fixed order (DDP vs single-process equivalence checks)

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be >= 1")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0")


@dataclass
class OptimConfig:
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay={self.weight_decay} must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas={self.betas} must be two numbers in [0, 1)")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")


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
        if self.kind not in EVAL_KINDS:
            raise ConfigError(f"eval.kind={self.kind!r}; allowed: {list(EVAL_KINDS)}")
        if self.kind == "longbench":
            try:
                self.longbench.check()  # the folder and every dataset file, before any model is built
            except ValueError as err:
                raise ConfigError(str(err)) from None
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
        if self.n_examples < 1 or self.batch_size < 1 or self.n_questions < 1:
            raise ConfigError(
                f"eval.n_examples={self.n_examples}, eval.batch_size={self.batch_size} and "
                f"eval.n_questions={self.n_questions} must be >= 1")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"eval.protocol={self.protocol!r}; allowed: {list(PROTOCOLS)}")
        if self.decode_tail is not None and self.decode_tail < 0:
            raise ConfigError(f"eval.decode_tail={self.decode_tail} must be null (the whole question) or >= 0")
        if self.decode_tail is not None and self.protocol != "question_decoded":
            raise ConfigError(f"eval.decode_tail={self.decode_tail} needs eval.protocol=question_decoded, "
                              f"got {self.protocol!r}")
        if not (self.decode or self.teacher_forced):
            raise ConfigError("eval.decode=false and eval.teacher_forced=false: nothing to evaluate")


def to_dataclass(cls: type, node: Any, prefix: str) -> Any:
    """Merge ``node`` into the schema of ``cls`` and instantiate it, with errors that name fields."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    node = dict(node or {})
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, node)
        return OmegaConf.to_object(merged)
    except ConfigKeyError as err:
        key = getattr(err, "key", None) or str(err).split("'")[1]
        allowed = sorted(f.name for f in dataclasses.fields(cls))
        raise ConfigError(f"{prefix}.{key} is not a field of {prefix} ({cls.__name__}); allowed: {allowed}") from None
    except ValidationError as err:
        key = getattr(err, "full_key", None) or "?"
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        top = str(key).split(".")[0]
        name = f"{prefix}.{key}" if prefix else str(key)
        raise ConfigError(
            f"{name}={getattr(err, 'value', None)!r} has the wrong type; expected {types.get(top, '?')}"
        ) from None
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build_task(node: Any, prefix: str = "task") -> Task:
    node = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    name = node.pop("name", None)
    if name not in TASKS:
        raise ConfigError(f"{prefix}.name={name!r} is not a known task; allowed: {sorted(TASKS)}")
    return to_dataclass(TASKS[name], node, prefix)


def build_model_config(node: Any) -> Any:
    family = node.get("family") if node is not None else None
    try:
        cls = config_class(family)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return to_dataclass(cls, node, "model")


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
    lora: LoraPlusConfig = field(default_factory=LoraPlusConfig)
    duo: DuoConfig = field(default_factory=DuoConfig)
    activation_checkpointing: bool = False  # trainer.activation_checkpointing


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def task_nodes_from_conf() -> dict[str, Any]:
    """Every conf/task/NAME.yaml by NAME (for ``eval.tasks``)."""
    return {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in sorted((CONF_DIR / "task").glob("*.yaml"))}


def activation_checkpointing(node: Any) -> bool:
    """``trainer.activation_checkpointing``: ours (per-block recompute in models/lm.py), not Lightning's."""
    value = (node or {}).get("activation_checkpointing", False)
    if not isinstance(value, bool):
        raise ConfigError(f"trainer.activation_checkpointing={value!r} must be true or false")
    return value


TRAINER_INTS = ("max_steps", "min_steps", "max_epochs", "min_epochs", "log_every_n_steps", "num_sanity_val_steps",
                "accumulate_grad_batches", "check_val_every_n_epoch", "num_nodes")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def available_accelerators() -> list[str]:
    """Accelerator names Lightning can use on this machine ('auto' always)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = {"auto"}
    for name in AcceleratorRegistry.available_accelerators():
        if AcceleratorRegistry[name]["accelerator"].is_available():
            names.add(name)
            if name in ("cuda", "mps"):
                names.add("gpu")
    return sorted(names)


def check_trainer_values(kwargs: dict[str, Any]) -> None:
    for key in TRAINER_INTS:
        v = kwargs.get(key)
        if v is not None and not _is_int(v):
            raise ConfigError(f"trainer.{key}={v!r} has the wrong type; expected an integer")
    steps = kwargs.get("max_steps", -1)
    if steps is not None and steps != -1 and steps < 1:
        raise ConfigError(f"trainer.max_steps={steps} must be >= 1 (or -1 for epochs)")
    vci = kwargs.get("val_check_interval")
    if vci is not None:
        if _is_int(vci):
            if vci < 1:
                raise ConfigError(f"trainer.val_check_interval={vci} must be >= 1 (training steps), or a "
                                  "fraction of an epoch in (0, 1]")
        elif not (_is_number(vci) and 0 < vci <= 1):
            raise ConfigError(f"trainer.val_check_interval={vci!r}; allowed: an integer >= 1 (training steps) "
                              "or a fraction of an epoch in (0, 1]")
    clip = kwargs.get("gradient_clip_val")
    if clip is not None and not (_is_number(clip) and clip >= 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip!r} must be a number >= 0 (or null)")


def check_accelerator(node: Any) -> None:
    """The accelerator a training run asks for exists on this machine (eval.py picks its own device)."""
    accel = node.get("accelerator") if node is not None else None
    if isinstance(accel, str):
        allowed = available_accelerators()
        if accel not in allowed:
            raise ConfigError(f"trainer.accelerator={accel!r} is not available on this machine; "
                              f"allowed here: {allowed}")


def trainer_kwargs(node: Any) -> dict[str, Any]:
    """Lightning Trainer arguments, each name checked against the Trainer's signature.

    ``activation_checkpointing`` is validated and left out: the model applies it, the Trainer never sees it.
    """
    import lightning as L

    kwargs = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    activation_checkpointing(kwargs)
    kwargs.pop("activation_checkpointing", None)
    allowed = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(f"trainer.{key} is not a Lightning Trainer argument; allowed: {sorted(allowed)}")
    check_trainer_values(kwargs)
    return kwargs


def attention_layers(model: Any) -> int:
    """Layers a KV-cache policy acts on: all of a transformer's, a hybrid's attention layers, none of Mamba's."""
    if model.family == "mamba":
        return 0
    mixers = getattr(model, "mixers", None)
    return mixers.count("attention") if mixers is not None else int(getattr(model, "n_layers", 1))


# Keys that say where or how visibly a run goes, not what it computes: outside the config hash.
UNHASHED = ("hydra", "paths", "run_dir", "resume", "logger", "evaluate")
UNHASHED_NESTED = {"data": ("num_workers", "cache_dir"),
                   "trainer": ("enable_progress_bar", "enable_model_summary", "log_every_n_steps")}


def hashed_config(cfg: DictConfig) -> dict[str, Any]:
    """The config a run's identity is made of: unresolved, minus run-location and display keys."""
    container = OmegaConf.to_container(cfg, resolve=False)
    for volatile in UNHASHED:
        container.pop(volatile, None)
    for group, keys in UNHASHED_NESTED.items():
        if isinstance(container.get(group), dict):
            container[group] = {k: v for k, v in container[group].items() if k not in keys}
    return container


def config_hash(cfg: DictConfig) -> str:
    """Hash of ``hashed_config``, so equal experiments hash equal wherever they run."""
    return hashlib.md5(json.dumps(hashed_config(cfg), sort_keys=True, default=str).encode()).hexdigest()[:12]


def check_finite(node: Any, prefix: str = "") -> None:
    """No NaN or infinity anywhere in the config (comparisons with NaN pass every bound check)."""
    if isinstance(node, DictConfig):
        for key in node:
            if prefix == "" and key == "hydra":
                continue
            try:
                value = node[key]
            except Exception:  # an interpolation only the running job can resolve (run_dir)
                continue
            check_finite(value, f"{prefix}{key}.")
    elif isinstance(node, (list, tuple)) or OmegaConf.is_list(node):
        for i, value in enumerate(node):
            check_finite(value, f"{prefix[:-1]}[{i}].")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{prefix[:-1]}={node} is not a finite number; allowed: finite values")


def run_config(cfg: DictConfig) -> RunConfig:
    names = [f.name for f in dataclasses.fields(RunConfig)]
    return to_dataclass(RunConfig, {k: cfg[k] for k in names if k in cfg}, "")


def validate(cfg: DictConfig, eval_task_nodes: dict[str, Any] | None = None, training: bool = True) -> Resolved:
    """Check the whole config; raise ConfigError before anything is generated or trained.

    ``training=False`` for eval.py's config (a checkpoint's training config plus overrides): what
    only a training run needs (init_from on disk, a data set that fills a batch) is not checked.
    """
    run = run_config(cfg)
    check_finite(cfg)
    stage = cfg.get("stage", "pretrain")
    if stage not in STAGES:
        raise ConfigError(f"stage={stage!r}; allowed: {STAGES}")
    if stage != "pretrain" and not cfg.get("init_from"):
        raise ConfigError(f"stage={stage!r} needs init_from=PATH of a checkpoint to start from")
    try:
        vocab = Vocab(int(cfg.vocab_size))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    model = build_model_config(cfg.model)
    if model.vocab_size < vocab.size:
        raise ConfigError(f"model.vocab_size={model.vocab_size} is smaller than vocab_size={vocab.size}")
    task = build_task(cfg.task)
    eval_cfg = to_dataclass(EvalConfig, cfg.eval, "eval")
    try:  # the policy's own config class (models/caches/); other policies' knobs are dropped
        cache_cls, cache_node = policy_knobs(OmegaConf.to_container(cfg.cache, resolve=True))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    cache = to_dataclass(cache_cls, cache_node, "cache")
    data = to_dataclass(DataConfig, cfg.get("data"), "data")  # eval.py configs have no data/optim
    optim = to_dataclass(OptimConfig, cfg.get("optim"), "optim")
    eval_tasks = [task]
    if eval_cfg.tasks:
        nodes = eval_task_nodes if eval_task_nodes is not None else task_nodes_from_conf()
        missing = [name for name in eval_cfg.tasks if name not in nodes]
        if missing:
            raise ConfigError(f"eval.tasks names unknown task configs {missing}; allowed: {sorted(nodes)}")
        eval_tasks = [build_task(nodes[name], f"eval.tasks[{name}]") for name in eval_cfg.tasks]
    for t in eval_tasks + [task]:
        try:
            bind_tokenizer(t, cfg.get("tokenizer") or "bytes")  # text tasks read the run's tokenizer
            t.check_vocab(vocab)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    max_len = model.max_seq_len
    if task.train_len > max_len:
        raise ConfigError(f"task.train_len={task.train_len} exceeds model.max_seq_len={max_len}")
    for length in eval_cfg.lengths if eval_cfg.kind == "grid" else []:  # other kinds have their own lengths
        if length > max_len:
            raise ConfigError(f"eval.lengths contains {length} > model.max_seq_len={max_len}; "
                              f"allowed: lengths <= {max_len} (raise model.max_seq_len)")
        for t in eval_tasks:
            try:
                t.check_length(length, "eval.lengths")
            except ValueError as err:
                raise ConfigError(str(err)) from None
    if eval_cfg.kind != "grid":  # text evaluations feed the tokenizer's ids straight to the model
        spec = cfg.get("tokenizer") or "bytes"
        try:
            n = load_tokenizer(spec).vocab_size
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if n > model.vocab_size:
            raise ConfigError(f"eval.kind={eval_cfg.kind}: tokenizer={spec!r} has {n} tokens but model.vocab_size="
                              f"{model.vocab_size}; allowed: a tokenizer that fits the model (tokenizer=hf:PATH)")
    if eval_cfg.kind == "sinks" and model.family == "mamba":
        raise ConfigError("eval.kind=sinks probes attention heads; model.family='mamba' has none; "
                          "allowed: transformer or hybrid")
    lora = to_dataclass(LoraPlusConfig, cfg.get("lora"), "lora")
    duo = to_dataclass(DuoConfig, cfg.get("duo"), "duo")
    n_attention = attention_layers(model)
    if cache.policy != "full" and n_attention == 0:
        raise ConfigError(f"cache.policy={cache.policy!r} on model.family={model.family!r}"
                          f"{'' if model.family == 'mamba' else f' (model.layers={model.schedule!r})'}: a KV policy "
                          "needs attention layers and this model has none (its decode state is constant); "
                          "allowed: cache=full")
    if lora.enabled and stage == "duo_gates":
        raise ConfigError("lora.enabled=true with stage=duo_gates: the duo stage trains only the gates")
    if stage == "duo_gates" and model.family != "transformer":
        raise ConfigError(f"stage=duo_gates needs model.family=transformer (attention heads), got {model.family!r}")
    if lora.enabled and model.family != "transformer":
        raise ConfigError(f"lora.enabled=true is for model.family=transformer, got {model.family!r}")
    attn = getattr(model, "attention", None)
    if attn is not None and attn.train == "shifted_sparse":
        try:
            group_size(task.train_len, attn)
        except ValueError as err:
            raise ConfigError(f"task.train_len={task.train_len}: {err}") from None
    if attn is not None and attn.eval == "shifted_sparse" and not cfg.get("allow_sparse_eval", False):
        raise ConfigError("model.attention.eval=shifted_sparse: LongLoRA evaluates with full attention; "
                          "set model.attention.eval=full, or allow_sparse_eval=true to study it on purpose")
    for name in ("norm_eps", "init_std"):
        value = getattr(model, name, None)
        if value is not None and not value > 0:
            raise ConfigError(f"model.{name}={value} must be > 0")
    if eval_cfg.prefix_cache:
        if not hasattr(task, "questions"):
            raise ConfigError(f"eval.prefix_cache=true needs a task with several needles to ask about (niah); "
                              f"got task.name={task.name!r}")
        needles = getattr(task, "needles", None)
        if needles is not None and eval_cfg.n_questions > needles:
            raise ConfigError(f"eval.n_questions={eval_cfg.n_questions} exceeds task.needles={needles}; "
                              f"allowed with eval.prefix_cache=true: n_questions <= needles")
    if "trainer" in cfg:
        trainer_kwargs(cfg.trainer)
    if stage == "duo_gates" and activation_checkpointing(cfg.get("trainer")):
        # the stage switches attention patterns around each forward; a recompute in the backward
        # would run outside that switch, with the wrong pattern
        raise ConfigError("trainer.activation_checkpointing=true with stage=duo_gates: not supported "
                          "(the gates are the only weights trained; set it to false)")
    if training:
        check_training(cfg, run, stage, data, cache)
    return Resolved(model, task, vocab, cache, data, optim, eval_cfg, eval_tasks, config_hash(cfg), lora, duo,
                    activation_checkpointing(cfg.get("trainer")))


def check_training(cfg: DictConfig, run: RunConfig, stage: str, data: DataConfig, cache: CacheConfig) -> None:
    """What only train.py needs: a batch the data fills, a start checkpoint, gates for the duo policy."""
    if "trainer" in cfg:
        check_accelerator(cfg.trainer)
    if run.fit and data.n_train < data.batch_size:
        raise ConfigError(f"data.n_train={data.n_train} is smaller than data.batch_size={data.batch_size}: not one "
                          f"full training batch; allowed: n_train >= batch_size")
    hf_model = str(run.init_from or "").startswith("hf:")  # a Hugging Face directory: pipeline/hf_init checks it
    if run.init_from and not cfg.get("base") and not hf_model and not Path(run.init_from).is_file():
        raise ConfigError(f"init_from={run.init_from!r} does not exist (or is not a file); allowed: a checkpoint "
                          f"written by train.py (e.g. outputs/runs/NAME/checkpoints/last.ckpt)")
    if run.evaluate and cache.policy == "duo" and cache.gates_path == "learned" and stage != "duo_gates":
        raise ConfigError(f"cache.policy=duo with cache.gates_path=learned in a stage={stage!r} run: no gates are "
                          f"learned here; allowed: stage=duo_gates (learns them), cache.gates_path=PATH of a gates.pt, "
                          f"or evaluate a duo_gates checkpoint with eval.py")
