"""Engines and sessions, built on first use (never at import) and shared per process."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, decide when a transaction starts (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # Take the write lock up front: SQLite cannot upgrade a read transaction once another
    # writer has committed, so concurrent deferred transactions fail instead of waiting.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _json_default(value: object) -> object:
    # Custom attributes arrive as exact decimals; JSON has only numbers. Money never
    # goes through here (it has its own columns).
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_dumps(value: object) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)


_JSON_DECODER = json.JSONDecoder(parse_float=Decimal)
"""Built once: ``json.loads(text, parse_float=…)`` builds a decoder and its scanner per
call, and every JSON column read goes through here (reading 200 customers: 2.38 ms with
one per call, 1.24 ms with this; measured with ``bench.ingest``'s customers)."""


def json_loads(text: str | bytes) -> object:
    """A JSON column's value: numbers with a fraction or exponent as ``Decimal`` (prices
    keep their digits). Bytes are decoded as ``json.loads`` does (RFC 8259 8.1: UTF-8,
    or UTF-16/32 found by its BOM-less first bytes)."""
    if isinstance(text, bytes | bytearray):
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    return _JSON_DECODER.decode(text)


POOL_SIZE = 10
"""Connections a PostgreSQL pool keeps open per process."""
POOL_OVERFLOW = 20
"""Connections it may open beyond ``POOL_SIZE`` at a peak, closed again when returned."""


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URL; None for another database or an
    in-memory one."""
    if not url.startswith("sqlite"):
        return None
    database = url.split("///", 1)[-1].split("?", 1)[0] if "///" in url else ""
    return Path(database) if database and database != ":memory:" else None


def sqlite_parent(url: str) -> None:
    """Create the directory of a SQLite database file (``crosssell migrate`` creates the
    database); nothing for other URLs."""
    database = sqlite_file(url)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str) -> Engine:
    """An engine with the options each backend needs for safe concurrent use.

    ``hide_parameters`` keeps bound values (addresses, names) out of SQLAlchemy's error
    messages and statement logs, which end up in our logs and tracebacks.

    PostgreSQL pool: up to ``POOL_SIZE + POOL_OVERFLOW`` connections per process. A Celery
    worker thread holds its batch's connection while it sends and briefly takes a second
    one for its lease heartbeat, so the README's 8 threads need up to 16 (the rest is
    headroom for recheck sessions and a larger ``--concurrency``); a pool smaller than the
    threads need makes heartbeats wait out ``pool_timeout`` and leases expire.
    """
    if url.startswith("sqlite"):
        # No directory is created here: a command that only reads (``status``) must not
        # leave a new empty database behind a mistyped path; ``crosssell migrate`` (and
        # the embedded services, which migrate on start) create it (``sqlite_parent``).
        engine = create_engine(
            url,
            connect_args={"timeout": 30},
            hide_parameters=True,
            json_serializer=json_dumps,
            json_deserializer=json_loads,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(
        url,
        pool_pre_ping=True,
        hide_parameters=True,
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        json_serializer=json_dumps,
        json_deserializer=json_loads,
    )


_cached_urls: set[str] = set()


@cache
def engine_for(url: str) -> Engine:
    _cached_urls.add(url)
    return make_engine(url)


@cache
def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def transaction(url: str) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with session_factory(url)() as session, session.begin():
        yield session


_CUSTOM_PLANS = text("SET LOCAL plan_cache_mode = force_custom_plan")


def plan_for_this_batch(session: Session) -> None:
    """Plan every statement of the caller's transaction for its own parameters and the
    tables' size now (PostgreSQL; nothing elsewhere). For the transactions that read or
    write a batch by lists of ids: ingest's batch, the worker's recheck round, the step
    planner's pass.

    psycopg prepares a statement run five times on a connection, and PostgreSQL may then
    keep one generic plan for it, made while ``events``, ``sends`` or ``customers`` were
    small (a hash join over a sequential scan) and kept until an ``ANALYZE`` of the table.
    Without autovacuum's (it is off on the development VM), such plans read whole tables in
    every batch, and ingest slowed down as the tables grew: 1,138 → 505 events/s over six
    rounds of ``python -m bench.ingest --batch 50 --each-round`` (docs/performance.md,
    "Plans made for small tables"). ``SET LOCAL`` ends with the transaction; planning a
    batch's statements costs far less than one such scan."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_CUSTOM_PLANS)


def surviving_disconnects(action: Callable[[], T], within: float = 60.0) -> T:
    """Run a whole transaction again when the database connection was lost under it.

    Only for units of work that are safe to repeat (conditional updates, reads): a
    PostgreSQL restart or a killed backend must not turn a delivered email into an
    unrecorded one. Other errors, and a database still gone after ``within`` seconds,
    propagate.
    """
    deadline = time.monotonic() + within
    pause = 0.1
    while True:
        try:
            return action()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("database connection lost (%s); retrying in %.1fs", exc.orig, pause)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
        except DBAPIError as exc:
            if not exc.connection_invalidated or time.monotonic() + pause > deadline:
                raise
            log.warning("database connection invalidated; retrying in %.1fs", pause)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def dispose_engines() -> None:
    """Close every pooled connection of this process (tests, forks, shutdown)."""
    for url in list(_cached_urls):
        engine_for(url).dispose()
    _cached_urls.clear()
    session_factory.cache_clear()
    engine_for.cache_clear()
