"""Alembic environment: the URL comes from crosssell settings unless one is passed in."""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context

import worker.webhooks.store  # noqa: F401  (registers webhook_events on the metadata)
from worker.db import make_engine
from worker.models import Base
from worker.settings import get_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return config.attributes.get("url") or get_settings().resolved_database_url


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
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
