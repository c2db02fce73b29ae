"""What every checkpoint, run.json and row records about where it came from: the run's config, the code's
commit, and the out-of-tree modules ($LONGCTX_PLUGINS) whose code ran in the process."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from registries import plugin_modules


def plugin_columns() -> dict[str, str]:
    """``{"plugins": "a,b"}`` when $LONGCTX_PLUGINS named modules (their code ran and may define what a row
    measured), else nothing: rows of runs without plugins keep their columns."""
    modules = plugin_modules()
    return {"plugins": ",".join(modules)} if modules else {}


def code_version() -> str:
    """The git commit of the code (with '+dirty' when the tree has changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha or "unknown") + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


class RecordsProvenance:
    """LightningModule mixin: every checkpoint carries ``self.config`` (the resolved run config) and the commit."""

    config: dict[str, Any]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["config"] = self.config
        checkpoint["code_version"] = code_version()
        checkpoint["plugins"] = plugin_modules()
