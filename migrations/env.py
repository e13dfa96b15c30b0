"""Alembic environment: the URL comes from crosssell settings unless one is passed in.

On PostgreSQL a run (upgrade, downgrade, ``alembic check``) is one transaction that:

1. takes a transaction-level advisory lock (``pg_advisory_xact_lock``, key
   ``MIGRATION_LOCK_KEY``), so two deploys migrating the same database at once run one
   after the other: the second reads the version table only after the first committed,
   and finds nothing left to do. It waits at most ``CROSSSELL_MIGRATION_LOCK_WAIT``
   (default ``10min``) for the other run. Advisory locks are per database, so migrations
   of other databases on the same server never wait for each other.
2. sets ``lock_timeout`` (``CROSSSELL_MIGRATION_LOCK_TIMEOUT``, default ``5s``): DDL needs
   strong table locks, and a statement queued behind a long transaction blocks every
   query on that table while it waits. Failing after a few seconds (the whole migration
   rolls back; run it again) is better than stalling the application.
3. sets ``statement_timeout`` (``CROSSSELL_MIGRATION_STATEMENT_TIMEOUT``, default
   ``15min``): a backfill or index build that runs away is cancelled, not left holding
   its locks. Raise it for a known long data migration.

Values use PostgreSQL's duration syntax (``500ms``, ``5s``, ``10min``; ``0`` means no
limit); they apply with ``SET LOCAL``, so they end with the migration's transaction.
SQLite has none of this: one process at a time writes its file anyway.
"""

from __future__ import annotations

import hashlib
import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import text

import worker.records.webhook_events  # noqa: F401  (registers webhook_events on the metadata)
from worker.core.db import make_engine
from worker.core.models import Base
from worker.core.settings import get_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


# A fixed 64-bit key every crosssell deploy agrees on: the first 8 bytes of the SHA-256
# of "crosssell migrations", read as a signed big-endian integer (PostgreSQL's bigint).
MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"crosssell migrations").digest()[:8], "big", signed=True
)
DEFAULT_TIMEOUTS = {
    "MIGRATION_LOCK_WAIT": "10min",
    "MIGRATION_LOCK_TIMEOUT": "5s",
    "MIGRATION_STATEMENT_TIMEOUT": "15min",
}


def _url() -> str:
    return config.attributes.get("url") or get_settings().resolved_database_url


def _timeout(name: str) -> str:
    """``CROSSSELL_<name>`` from the environment, else the default above."""
    return os.environ.get(f"CROSSSELL_{name}", DEFAULT_TIMEOUTS[name])


def _set_local(connection: Any, **settings: str) -> None:
    """``SET LOCAL`` for each setting; ``set_config(..., true)`` takes bound values."""
    for name, value in settings.items():
        connection.execute(
            text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value}
        )


def _serialize_and_bound(connection: Any) -> None:
    """Inside the migration transaction on PostgreSQL: wait for any other migration run
    of this database, then bound how long each statement may wait for locks and run."""
    wait = _timeout("MIGRATION_LOCK_WAIT")
    _set_local(connection, lock_timeout=wait, statement_timeout=wait)
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    _set_local(
        connection,
        lock_timeout=_timeout("MIGRATION_LOCK_TIMEOUT"),
        statement_timeout=_timeout("MIGRATION_STATEMENT_TIMEOUT"),
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=Base.metadata,
        literal_binds=True,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        engine = make_engine(_url())
        with engine.connect() as connection:
            _run(connection)
        engine.dispose()
    else:
        _run(connection)


def _run(connection: Any) -> None:
    if connection.dialect.name == "sqlite":
        # Rebuilding a table in batch mode drops it; with foreign keys enforced that fails
        # for any table others refer to. Off for the migration (before it begins), as the
        # SQLite documentation prescribes for schema changes.
        connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            _serialize_and_bound(connection)
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
