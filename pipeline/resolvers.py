"""OmegaConf resolvers used in conf/ (registered on import by train.py and eval.py)."""

from __future__ import annotations

from omegaconf import OmegaConf


def run_path(run_id: str | None, stamp: str, root: str = "outputs") -> str:
    """A named run has a stable directory (re-running its command resumes it); others a timestamp."""
    return f"{root}/runs/{run_id}" if run_id else f"{root}/{stamp}"


if not OmegaConf.has_resolver("run_path"):
    OmegaConf.register_new_resolver("run_path", run_path)
