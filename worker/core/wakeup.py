"""Wake the dispatcher when ingest commits sends that are due now, instead of letting
them wait for its next poll (``CROSSSELL_DISPATCH_INTERVAL``).

* PostgreSQL: ingest issues ``NOTIFY crosssell_sends_due`` in its own transaction, so
  the notification is delivered only if (and when) the sends are committed; every
  dispatcher holds one extra connection that ``LISTEN``s on the channel.
* Any database, one process (``crosssell run``, the embedded SQLite mode): the commit
  sets a ``threading.Event`` the dispatcher thread waits on.

A wake-up says what it is for: ``sends`` (an email due now) or ``steps`` (a sequence
entry whose first step is due now, which a pass must plan first). A woken pass plans the
sequences' due steps only when one of its wake-ups asked for it: planning them costs a
pass several statements (``python -m bench.dispatch``, docs/performance.md, "Woken passes
plan steps only when asked"), and steps that become due later are found by the poll.

The poll stays: sends that become due later (a delay, a retry's backoff, quiet hours)
and a lost notification (the listening connection dropped) are found by it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import event, make_url, text
from sqlalchemy.orm import Session

from triggers.outcomes import Decision

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

CHANNEL = "crosssell_sends_due"
SENDS = "sends"
"""The payload of a wake-up for emails due now."""
STEPS = "steps"
"""The payload of a wake-up for a sequence step due now: the woken pass plans steps."""
NOTHING: frozenset[str] = frozenset()
# How often a waiting dispatcher looks at its stop flag: the longest a SIGTERM waits.
STOP_CHECK_SECONDS = 0.5

_committed = threading.Event()
_steps_committed = threading.Event()


def _set_committed(_session: Session) -> None:
    _committed.set()


def _set_steps_committed(_session: Session) -> None:
    _steps_committed.set()
    _committed.set()


def wake_dispatcher(session: Session, *, steps: bool = False) -> None:
    """Wake the dispatchers once this transaction commits (nothing if it rolls back);
    ``steps``: the woken pass must plan the sequences' due steps first."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {CHANNEL}, '{STEPS if steps else SENDS}'"))
    setter = _set_steps_committed if steps else _set_committed
    event.listen(session, "after_commit", setter, once=True)


def wake_kinds(payloads: Iterable[str]) -> frozenset[str]:
    """What the notifications' payloads ask for. One without a known payload (a ``NOTIFY``
    of an earlier version, or typed by an operator) asks for everything."""
    kinds: set[str] = set()
    for payload in payloads:
        kinds.update((payload,) if payload in (SENDS, STEPS) else (SENDS, STEPS))
    return frozenset(kinds)


def wake_if_due(
    session: Session,
    decided: Iterable[Sequence[Decision]],
    now: datetime,
    first_step_due_at: datetime | None = None,
) -> None:
    """Ingest's call: wake the dispatchers when the batch planned an email due now, or
    entered a customer into a sequence whose first step is due now
    (``first_step_due_at``: the earliest of the batch's entries; a woken pass plans it)."""
    if first_step_due_at is not None and first_step_due_at <= now:
        wake_dispatcher(session, steps=True)
        return
    for decisions in decided:
        for decision in decisions:
            if decision.outcome == "planned" and (
                decision.send_at is None or decision.send_at <= now
            ):
                wake_dispatcher(session)
                return


class Waiter:
    """Where the dispatcher waits between polls: until ``timeout`` passes, ``stop`` is
    set, or ingest commits a due send or step (``wait`` returns what the wake-ups asked
    for, :data:`SENDS` and/or :data:`STEPS`; :data:`NOTHING` when none came)."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self._conninfo: str | None = None
        if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg", ""):
            self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._connection: psycopg.Connection[object] | None = None
        self._retry_at = 0.0
        self._lost = False  # a LISTEN connection failed: say so when one is back

    @property
    def listening(self) -> bool:
        return self._connection is not None

    def _listen(self) -> psycopg.Connection[object] | None:
        if self._connection is not None or self._conninfo is None:
            return self._connection
        if time.monotonic() < self._retry_at:
            return None
        import psycopg

        try:
            connection: psycopg.Connection[object] = psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=5
            )
            connection.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            log.warning(
                "cannot LISTEN for due sends (%s); polling only for now", type(exc).__name__
            )
            self._retry_at = time.monotonic() + 30
            self._lost = True
            return None
        self._connection = connection
        if self._lost:
            self._lost = False
            log.info("listening for due sends again (LISTEN %s)", CHANNEL)
        return connection

    def wait(self, timeout: float, stop: threading.Event) -> frozenset[str]:
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return NOTHING
            step = min(left, STOP_CHECK_SECONDS)
            connection = self._listen()
            if connection is None:
                if _committed.wait(step):
                    _committed.clear()
                    # Cleared only when seen: a step's commit landing between the two
                    # calls keeps its flag for the next wake-up instead of losing it.
                    steps = _steps_committed.is_set()
                    if steps:
                        _steps_committed.clear()
                    return frozenset((SENDS, STEPS) if steps else (SENDS,))
                continue
            # Listening: the NOTIFY of a commit in this process arrives too; waking on
            # the event as well would make two passes of one commit.
            _committed.clear()
            _steps_committed.clear()
            woken = self._notified(connection, step)
            if woken:
                return woken
        return NOTHING

    def _notified(self, connection: psycopg.Connection[object], timeout: float) -> frozenset[str]:
        import psycopg

        try:
            payloads = [
                notify.payload for notify in connection.notifies(timeout=timeout, stop_after=1)
            ]
            if payloads:
                # Several commits while the dispatcher worked: one pass takes them all.
                payloads += [notify.payload for notify in connection.notifies(timeout=0.001)]
            return wake_kinds(payloads)
        except (psycopg.Error, OSError) as exc:
            log.warning(
                "lost the LISTEN connection (%s); polling until it is back", type(exc).__name__
            )
            self._lost = True
            self.close()
            return NOTHING

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None
