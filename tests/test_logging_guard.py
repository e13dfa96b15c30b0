"""The guard that fails a test leaving ``worker`` loggers disabled finds them."""

from __future__ import annotations

import logging
import logging.config

from tests.support.logging_guard import reenable_disabled


def test_a_logging_config_that_disables_existing_loggers_is_found_and_undone() -> None:
    probe = logging.getLogger("worker.logging_guard_probe")
    neighbour = logging.getLogger("workerish.not_ours")
    loggers = [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    was = {logger: logger.disabled for logger in loggers}
    try:
        logging.config.dictConfig({"version": 1, "incremental": False})
        assert probe.disabled and neighbour.disabled
        assert reenable_disabled("worker") == ["worker.logging_guard_probe"]
        assert not probe.disabled
        assert neighbour.disabled  # another prefix, not ours to judge
    finally:  # dictConfig disabled every other library's logger too
        for logger, disabled in was.items():
            logger.disabled = disabled
    assert reenable_disabled("worker") == []
