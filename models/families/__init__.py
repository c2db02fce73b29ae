"""Model families, one module each: a ``DecoderLM`` subclass registered by its ``family`` name, whose
``config_class`` is the dataclass of ``model.*`` (validated before anything is built)."""

from __future__ import annotations

from registries import Registry

FAMILIES: Registry[type] = Registry("family", "model.family", package="models.families")
