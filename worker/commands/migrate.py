"""Apply the Alembic migrations to the configured database (``crosssell migrate``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

# Importing alembic sets up its plugins, each announced at INFO: noise in every service's
# start-up log (crosssell migrate reports what it did in its own words).
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402

from worker.core.settings import PROJECT_ROOT  # noqa: E402


def alembic_config(database_url: str) -> Config:
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database to ``revision``; a SQLite file's directory is created first."""
    from worker.core.db import sqlite_parent

    sqlite_parent(database_url)
    command.upgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    """The database's schema revision; None for a database never migrated."""
    from alembic.runtime.migration import MigrationContext

    from worker.core.db import engine_for

    with engine_for(database_url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def pending(database_url: str) -> bool:
    """True when the database is not at the latest schema revision."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from worker.core.db import engine_for

    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    with engine_for(database_url).connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current != head


class SchemaNotCurrent(RuntimeError):
    """The configured database needs ``crosssell migrate`` first."""


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic logs each plugin it sets up and each step at INFO: noise in a service's
    start-up log, which says what matters in its own one line (worker.process.startup)."""
    logger = logging.getLogger("alembic")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def ensure_schema(database_url: str, embedded: bool) -> None:
    """The embedded SQLite database is migrated on start; any other must be migrated
    explicitly (``crosssell migrate``) so that schema changes are a deliberate step."""
    with _quiet_alembic():
        _ensure_schema(database_url, embedded)


def _ensure_schema(database_url: str, embedded: bool) -> None:
    if embedded:
        upgrade(database_url)
    elif pending(database_url):
        raise SchemaNotCurrent(
            "the database schema is not at the latest revision: run `crosssell migrate`"
        )
