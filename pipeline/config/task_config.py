"""``task`` and ``eval.tasks``: task configs to task objects, and the named task configs of ``conf/task``.

``eval.tasks`` names entries of the Hydra config group ``task`` (``conf/task/NAME.yaml``, or a
search-path plugin's), composed through Hydra's compose API so they read exactly as ``task=NAME``
would; a registered family without an entry there (an out-of-tree plugin) takes its defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from pipeline.config.schema import ConfigError, reraise_as_config_error, to_dataclass
from tasks.base import Task
from tasks.registry import TASKS
from tasks.text import bind_tokenizer
from tasks.vocab import Vocab

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def build_task(node: Any, prefix: str = "task") -> Task:
    node = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    name = node.pop("name", None)
    cls = reraise_as_config_error(TASKS.get, name, f"{prefix}.name")
    return to_dataclass(cls, node, prefix)


def task_nodes(names: list[str]) -> dict[str, dict[str, Any]]:
    """``task=NAME`` for each name as Hydra composes it (unresolved), or a registered family's defaults."""

    def read() -> dict[str, dict[str, Any]]:
        options = set(GlobalHydra.instance().config_loader().get_group_options("task"))
        missing = [name for name in names if name not in options and name not in TASKS]
        if missing:
            raise ConfigError(f"eval.tasks names unknown task configs {missing}; "
                              f"allowed: {sorted(options | set(TASKS))}")
        return {name: OmegaConf.to_container(compose(overrides=[f"+task={name}"]).task) if name in options
                else {"name": name} for name in names}

    if GlobalHydra.instance().is_initialized():  # train.py, eval.py: the running app's search path
        return read()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return read()


def eval_tasks(names: Optional[list[str]], task: Task) -> list[Task]:
    """The tasks an evaluation grid runs: the training task, or the named task configs."""
    if not names:
        return [task]
    nodes = task_nodes(names)
    return [build_task(nodes[name], f"eval.tasks[{name}]") for name in names]


def bind_and_check_vocab(tasks: list[Task], tokenizer: str, vocab: Vocab) -> None:
    """Text tasks read the run's tokenizer; every task fits the vocabulary."""
    for t in tasks:
        reraise_as_config_error(bind_tokenizer, t, tokenizer)
        reraise_as_config_error(t.check_vocab, vocab)
