"""The broker objects events travel through, declared the same way by every process.

A plain AMQP client publishes JSON to the durable topic exchange ``crm.events`` with the
event type as routing key; the worker's durable queue is bound with ``#`` so it receives
every type, unknown ones included (those are dead-lettered with a reason, never dropped).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from kombu.entity import Exchange, Queue

from worker.settings import Settings


def events_exchange(settings: Settings) -> Exchange:
    return Exchange(settings.events_exchange, type="topic", durable=True)


def events_queue(settings: Settings) -> Queue:
    return Queue(
        settings.events_queue,
        exchange=events_exchange(settings),
        routing_key="#",
        durable=True,
    )


def dead_letter_queue(settings: Settings) -> Queue:
    """Bad messages, kept whole with the reason in headers; read via the default exchange."""
    return Queue(settings.dead_letter_queue, routing_key=settings.dead_letter_queue, durable=True)


def _embedded_broker_wal(url: str) -> None:
    """Put the embedded broker's SQLite file in WAL mode (it persists in the file):
    kombu commits once per message, and WAL makes each commit several times cheaper."""
    path = Path(url.split("///", 1)[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=30)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def transport_options(url: str) -> dict[str, object]:
    """Per-transport options that make publishing safe (confirms) and SQLite patient."""
    if url.startswith(("amqp", "pyamqp")):
        return {"confirm_publish": True}
    if url.startswith("sqla+sqlite:///"):
        _embedded_broker_wal(url)
        return {"connect_args": {"timeout": 30}}
    if url.startswith(("redis", "rediss")):
        return {"visibility_timeout": 3600}
    return {}
