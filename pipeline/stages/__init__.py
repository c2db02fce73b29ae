"""Training stages, one module each, registered by name: ``stage=NAME`` picks one.

A stage (``pipeline/stages/base.py``) owns what only it checks, the LightningModule it fits and what
its run leaves behind (the duo stage's gates). A new stage is a new module here (or a plugin module
named in $LONGCTX_PLUGINS) that decorates its ``Stage`` subclass with ``@STAGES.register()``.
"""

from __future__ import annotations

from registries import Registry

STAGES: Registry[type] = Registry("stage", "stage", package="pipeline.stages", skip=("base",))
