"""Training stages, one module each, registered by name: ``stage=NAME`` picks one.

A stage (its protocol and the ``STAGES`` registry: ``pipeline/config/stage.py``) owns what only it
checks, the LightningModule it fits and what its run leaves behind (the duo stage's gates). A new stage
is a new module here (or a plugin module named in $LONGCTX_PLUGINS) that decorates its ``Stage``
subclass with ``@STAGES.register()``.
"""
