"""The guard that fails a test leaving ``worker`` loggers disabled finds them."""

from __future__ import annotations

import logging

from tests.support.logging_guard import reenable_disabled


def test_disabled_worker_loggers_are_found_and_enabled_again() -> None:
    """``logging.config`` sets ``disabled`` on every existing logger; done here by hand
    (a real dictConfig would also close the session's handlers)."""
    probe = logging.getLogger("worker.logging_guard_probe")
    neighbour = logging.getLogger("workerish.not_ours")
    try:
        probe.disabled = neighbour.disabled = True
        assert reenable_disabled("worker") == ["worker.logging_guard_probe"]
        assert not probe.disabled
        assert neighbour.disabled  # another prefix, not ours to judge
    finally:
        probe.disabled = neighbour.disabled = False
    assert reenable_disabled("worker") == []
