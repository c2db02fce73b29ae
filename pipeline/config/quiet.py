"""Silence messages that are known to be harmless for this workbench, at their source, so that a
warning a user does see means something. Each filter names the exact message and why it is noise."""

from __future__ import annotations

import logging
import warnings

# (logger, message start): Lightning's info lines that are advertisements or restate our choices.
_LOG_NOISE = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip"),  # litlogger / litmodels adverts
    ("lightning.fabric.utilities.rank_zero", "💡 Tip"),
)
# Warning messages (regex on the start): none of them concerns a choice a user made here.
_WARNING_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)",  # Lightning's own call into a deprecated torch API
    r"The number of training batches \(\d+\) is smaller than the logging interval",  # step-based runs
)


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith(self.prefixes)


def silence_known_noise() -> None:
    for name, prefix in _LOG_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            logger.addFilter(_DropPrefixes((prefix,)))
    for pattern in _WARNING_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
