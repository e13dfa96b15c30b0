"""Loggers a test disabled: ``logging.config`` disables every logger that exists when it
runs unless told not to (``disable_existing_loggers``), and import-linter's command does
that in-process; later tests' log assertions then go silent far from the cause."""

from __future__ import annotations

import logging


def reenable_disabled(prefix: str = "worker") -> list[str]:
    """Names of the disabled loggers under ``prefix``, sorted; each is enabled again."""
    disabled = sorted(
        name
        for name, logger in logging.Logger.manager.loggerDict.items()
        if (name == prefix or name.startswith(prefix + "."))
        and isinstance(logger, logging.Logger)
        and logger.disabled
    )
    for name in disabled:
        logging.getLogger(name).disabled = False
    return disabled
