"""The embedded broker: a kombu virtual transport on one SQLite file, at least once.

``crosssell run`` carries both the CRM events and Celery's deliver tasks through
``sqlite:///var/broker.db`` (registered with kombu under the ``sqlite`` scheme when
:mod:`worker.core.topology` is imported). Each message is one row. Handing a message out
*leases* it: the row stays, hidden until ``visible_at`` (now + the lease); an ack deletes
the row, a reject deletes it or (requeue) makes it visible again, and a consumer that
dies before either (SIGKILL, power cut) leaves a lease that simply runs out, after which
the message is handed out again. A live consumer renews the leases of the messages it
holds every third of the lease, so a slow task is not handed to a second worker.
Duplicates after a crash are expected and harmless: the consumer's event-id inbox and the
deliver task's claim absorb them.

Why not kombu's own SQLAlchemy transport (``sqla+sqlite://``), which this replaces: it
marks a message invisible when it hands it out and only makes it visible again on a clean
channel close, so a killed process lost the message it was handling; it never deletes an
acknowledged message, so the file grew forever; and the virtual transport's 1 s polling
sleep capped ``crosssell run`` at ``--concurrency`` emails per second. A file written by
it is upgraded in place on first open (:func:`_upgrade_from_kombu_sqlalchemy`).

URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, optionally with
``?lease=30s`` (any :func:`triggers.durations.parse_duration` duration, or seconds).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from queue import Empty
from typing import Any
from urllib.parse import parse_qs

from kombu.transport import virtual

from triggers.durations import parse_duration

log = logging.getLogger(__name__)

SCHEME = "sqlite"
DEFAULT_LEASE_SECONDS = 30.0
"""How long a handed-out message stays hidden without a renewal. It bounds how late a
message held by a killed process comes back (the restart waits at most this long for
it); renewals every third of it keep a message held by a live but busy process hidden.
30 s is longer than any one step of the embedded pipeline (an SMTP timeout is 30 s and
the task renews meanwhile with the thread pool) and short enough for a restart."""
DEFAULT_POLLING_INTERVAL = 0.05
"""Seconds an idle consumer waits before looking again for messages published by another
process; a message published in this process, or an ack that frees prefetch room, wakes
it at once."""
BUSY_TIMEOUT_MS = 30_000
WAL_SIZE_LIMIT_BYTES = 32 * 1024 * 1024
"""The WAL file is truncated back to this after a checkpoint (SQLite's
``journal_size_limit``); without it the ``-wal`` file keeps its largest size."""

_TABLE = "crosssell_broker_message"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload TEXT NOT NULL,
    visible_at REAL NOT NULL DEFAULT 0,
    deliveries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS {_TABLE}_queue_id ON {_TABLE} (queue, id);
"""
# AUTOINCREMENT: an id is never reused, so a late ack for a message another consumer
# already acknowledged cannot delete a newer message that got the same id.


def database_path(url: str) -> Path:
    """The file of a ``sqlite:///…`` URL (``sqlite:////abs`` is absolute); ValueError
    for anything else."""
    prefix = f"{SCHEME}:///"
    if not url.startswith(prefix):
        raise ValueError(f"not an embedded broker URL (expected {prefix}…): {url!r}")
    path = url[len(prefix) :].split("?", 1)[0]
    if not path:
        raise ValueError(f"the embedded broker URL names no file: {url!r}")
    return Path(path)


def lease_seconds(url: str) -> float:
    """The ``lease`` of the URL's query string in seconds (default 30); ValueError if it
    is not a positive duration."""
    query = parse_qs(url.split("?", 1)[1]) if "?" in url else {}
    values = query.get("lease")
    if not values:
        return DEFAULT_LEASE_SECONDS
    text = values[-1]
    try:
        seconds = float(text)
    except ValueError:
        seconds = parse_duration(text).total_seconds()
    if seconds <= 0:
        raise ValueError(f"the embedded broker's lease must be positive: {text!r}")
    return seconds


class _Wakeup:
    """Wakes the consumers of one broker file in this process when a message arrives or
    an ack frees room; ``generation`` lets a waiter notice a wake it was not yet waiting
    for."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.generation = 0

    def notify(self) -> None:
        with self.condition:
            self.generation += 1
            self.condition.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self.condition:
            if self.generation == seen:
                self.condition.wait(timeout)


_prepared: set[Path] = set()
_prepare_lock = threading.Lock()
_wakeups: dict[Path, _Wakeup] = {}


class _ThreadConnections(dict[Path, sqlite3.Connection]):
    """One thread's connections, closed when the thread ends (or the process forgets
    them), not left to the garbage collector."""

    def close(self, path: Path) -> None:
        connection = self.pop(path, None)
        if connection is not None:
            connection.close()

    def __del__(self) -> None:
        for path in list(self):
            self.close(path)


class _Local(threading.local):
    connections: _ThreadConnections

    def __init__(self) -> None:
        self.connections = _ThreadConnections()


_local = _Local()


def _after_fork_in_child() -> None:
    """A forked child (Celery's prefork pool) must not use its parent's SQLite
    connections (SQLite's rule) nor a lock another thread held at the fork: it forgets
    them, unclosed, and opens its own when it needs one."""
    global _prepare_lock
    _prepare_lock = threading.Lock()
    _local.connections.clear()
    _wakeups.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _wakeup(path: Path) -> _Wakeup:
    with _prepare_lock:
        return _wakeups.setdefault(path, _Wakeup())


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    # WAL: readers never block the writer; NORMAL: a commit survives the process being
    # killed (only a power cut can lose the last commits, as for the app database).
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    return connection


def connection_for(path: Path) -> sqlite3.Connection:
    """This thread's connection to the broker file, created (and the file prepared) on
    first use. One per thread: Celery acknowledges from its pool threads."""
    connections = _local.connections
    connection = connections.get(path)
    if connection is None:
        _prepare(path)
        connection = connections[path] = _connect(path)
    return connection


@contextmanager
def _write(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the lock up front (no read-to-write upgrade to
    fail under a concurrent writer)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _prepare(path: Path) -> None:
    """Create the file and table once per process; upgrade a kombu-SQLAlchemy file."""
    with _prepare_lock:
        if path in _prepared:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)) as connection:
            connection.isolation_level = None
            empty = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
            if empty:
                # Must precede the first table: lets freed pages be given back to the OS.
                connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)
            _upgrade_from_kombu_sqlalchemy(connection, path)
            # Give back what a past backlog left free (only with auto_vacuum on).
            connection.execute("PRAGMA incremental_vacuum")
        _prepared.add(path)


def _upgrade_from_kombu_sqlalchemy(connection: sqlite3.Connection, path: Path) -> None:
    """Move the messages waiting in a file written by kombu's SQLAlchemy transport (the
    embedded broker of earlier crosssell releases) into this transport's table, in order,
    then drop kombu's tables and compact the file.

    kombu never deleted a message it had handed out; it only marked it invisible, so an
    invisible row is either acknowledged long ago or was lost in a crash, and the two
    cannot be told apart. Replaying them all would re-ingest the whole history (events of
    customers erased since, too): they are dropped, and counted in the log line.
    """
    with _write(connection):  # checked under the lock: two processes may start at once
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if not {"kombu_message", "kombu_queue"} <= tables:
            return
        moved = connection.execute(
            f"INSERT INTO {_TABLE} (queue, payload) "
            "SELECT q.name, m.payload FROM kombu_message m JOIN kombu_queue q "
            "ON q.id = m.queue_id WHERE m.visible = 1 ORDER BY m.timestamp, m.id"
        ).rowcount
        handed_out = connection.execute(
            "SELECT count(*) FROM kombu_message WHERE visible = 0 OR visible IS NULL"
        ).fetchone()[0]
        connection.execute("DROP TABLE kombu_message")
        connection.execute("DROP TABLE kombu_queue")
    log.warning(
        "embedded broker %s upgraded from kombu's SQLAlchemy format: %d waiting message(s) "
        "kept, %d already handed out dropped",
        path,
        moved,
        handed_out,
    )
    # Compact once, switching auto_vacuum on for the file from now on. Another process
    # using the file meanwhile makes it wait, then give up: the file is only bigger.
    try:
        connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
        connection.execute("VACUUM")
    except sqlite3.OperationalError as exc:
        log.warning("embedded broker %s not compacted (%s); it works as it is", path, exc)


class QoS(virtual.QoS):  # type: ignore[misc,unused-ignore]
    """Acknowledging deletes the row; rejecting deletes it or, with requeue, ends its
    lease (kombu's default would re-publish a copy)."""

    def ack(self, delivery_tag: int) -> None:
        self.channel.delete_message(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: int, requeue: bool = False) -> None:
        if requeue:
            self.channel.release_message(delivery_tag)
        else:
            self.channel.delete_message(delivery_tag)
        self._quick_ack(delivery_tag)


class Channel(virtual.Channel):  # type: ignore[misc,unused-ignore]
    QoS = QoS
    supports_fanout = False

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        url: str = connection.client.hostname
        self.path = database_path(url)
        self.lease = lease_seconds(url)
        self._wakeup = _wakeup(self.path)
        self._held: set[int] = set()
        self._held_lock = threading.Lock()
        self._no_ack_queues: set[str] = set()
        super().__init__(connection, **kwargs)
        connection_for(self.path)  # create and upgrade the file now, not on first message

    @property
    def db(self) -> sqlite3.Connection:
        return connection_for(self.path)

    # --- publishing -----------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **_: Any) -> None:
        self.db.execute(
            f"INSERT INTO {_TABLE} (queue, payload) VALUES (?, ?)", (queue, json.dumps(message))
        )
        self._wakeup.notify()

    # --- handing out ----------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        if not no_ack:
            return super().basic_get(queue, no_ack, **kwargs)
        # No ack will come: take the message for good.
        try:
            return self.Message(self._take(queue), channel=self)
        except Empty:
            return None

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        if queue in self._no_ack_queues:
            return self._take(queue)
        now = time.time()
        row = self.db.execute(
            f"UPDATE {_TABLE} SET visible_at = ?, deliveries = deliveries + 1 WHERE id = "
            f"(SELECT id FROM {_TABLE} WHERE queue = ? AND visible_at <= ? ORDER BY id LIMIT 1) "
            "RETURNING id, payload, deliveries",
            (now + self.lease, queue, now),
        ).fetchone()
        if row is None:
            raise Empty()
        message_id, payload, deliveries = row
        with self._held_lock:
            self._held.add(message_id)
        return _as_delivered(payload, message_id, deliveries)

    def _take(self, queue: str) -> dict[str, Any]:
        row = self.db.execute(
            f"DELETE FROM {_TABLE} WHERE id = (SELECT id FROM {_TABLE} WHERE queue = ? "
            "AND visible_at <= ? ORDER BY id LIMIT 1) RETURNING id, payload, deliveries",
            (queue, time.time()),
        ).fetchone()
        if row is None:
            raise Empty()
        message_id, payload, deliveries = row
        return _as_delivered(payload, message_id, deliveries + 1)

    # --- settling -------------------------------------------------------------------

    def delete_message(self, message_id: int) -> None:
        """Acknowledged (or rejected for good): the row goes."""
        self.db.execute(f"DELETE FROM {_TABLE} WHERE id = ?", (message_id,))
        self._forget(message_id)

    def release_message(self, message_id: int) -> None:
        """Given back: visible again at once, in its original place."""
        self.db.execute(f"UPDATE {_TABLE} SET visible_at = 0 WHERE id = ?", (message_id,))
        self._forget(message_id)

    def _forget(self, message_id: int) -> None:
        with self._held_lock:
            self._held.discard(message_id)
        self._wakeup.notify()

    def _restore(self, message: Any) -> None:
        # kombu restores unacked messages (clean close, requeue) by re-publishing a copy;
        # here the row is still there: end its lease.
        self.release_message(message.delivery_tag)

    def renew_leases(self) -> None:
        """Push back the deadline of every message this channel holds."""
        with self._held_lock:
            held = list(self._held)
        if not held:
            return
        until = time.time() + self.lease
        with _write(self.db) as db:
            db.executemany(
                f"UPDATE {_TABLE} SET visible_at = ? WHERE id = ?",
                [(until, message_id) for message_id in held],
            )

    # --- queues ---------------------------------------------------------------------

    def _size(self, queue: str) -> int:
        """Messages not yet acknowledged: waiting, and handed out (a leased message may
        still come back), so "0" means the queue is truly done."""
        row = self.db.execute(f"SELECT count(*) FROM {_TABLE} WHERE queue = ?", (queue,))
        return int(row.fetchone()[0])

    def _purge(self, queue: str) -> int:
        """Delete the waiting messages (handed-out ones stay until settled)."""
        cursor = self.db.execute(
            f"DELETE FROM {_TABLE} WHERE queue = ? AND visible_at <= ?", (queue, time.time())
        )
        return int(cursor.rowcount)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self.db.execute(f"DELETE FROM {_TABLE} WHERE queue = ?", (queue,))

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True


def _as_delivered(payload: str, message_id: int, deliveries: int) -> dict[str, Any]:
    """The stored envelope as kombu expects it, tagged with the row id (what ack and
    reject name) and flagged redelivered after the first hand-out."""
    message: dict[str, Any] = json.loads(payload)
    properties = message.setdefault("properties", {})
    properties["delivery_tag"] = message_id
    properties.setdefault("delivery_info", {})["redelivered"] = deliveries > 1
    message["redelivered"] = deliveries > 1
    return message


class Transport(virtual.Transport):  # type: ignore[misc,unused-ignore]
    Channel = Channel
    polling_interval = DEFAULT_POLLING_INTERVAL
    can_parse_url = True
    driver_type = "sqlite"
    driver_name = "sqlite3"
    connection_errors = (sqlite3.OperationalError,)
    channel_errors = (sqlite3.DatabaseError,)

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.path = database_path(client.hostname)
        self._renewed_at = time.monotonic()

    def close_connection(self, connection: Any) -> None:
        super().close_connection(connection)
        # This thread's connection to the file; used again, it is opened again.
        _local.connections.close(self.path)

    def driver_version(self) -> str:
        return sqlite3.sqlite_version

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        return uri.split("?", 1)[0]

    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> None:
        """Deliver one message; with none available wait for a wake-up from this process
        or ``polling_interval``, whichever comes first (TimeoutError, which is
        socket.timeout, after ``timeout`` seconds). Renews the held leases on the way."""
        started = time.monotonic()
        cycle = self.cycle
        assert cycle is not None, "set by virtual.Transport.__init__"
        while True:
            self._maybe_renew()
            seen = [channel._wakeup.generation for channel in self.channels]
            try:
                cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            waited = time.monotonic() - started
            if timeout is not None and waited >= timeout:
                raise TimeoutError()
            pause = self.polling_interval
            if timeout is not None:
                pause = min(pause, timeout - waited)
            if self.channels:
                self.channels[0]._wakeup.wait(seen[0], pause)
            else:
                time.sleep(pause)

    def _maybe_renew(self) -> None:
        now = time.monotonic()
        channels = list(self.channels)
        if not channels or now - self._renewed_at < min(c.lease for c in channels) / 3:
            return
        self._renewed_at = now
        for channel in channels:
            channel.renew_leases()
