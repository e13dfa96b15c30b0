"""Shared fixtures: real PostgreSQL, RabbitMQ, Redis and an SMTP sink on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import fresh_postgres_database
from tests.support.smtp_sink import SmtpSink


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL database for the whole session."""
    from worker.migrate import upgrade

    with fresh_postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    from worker.db import dispose_engines
    from worker.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'crosssell.db'}"
    upgrade(url)
    yield url
    dispose_engines()


def _truncate(url: str) -> None:
    from sqlalchemy import text

    from worker.db import engine_for
    from worker.models import Base

    names = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    with engine_for(url).begin() as connection:
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test using this runs on both SQLite and PostgreSQL (emptied after each test)."""
    if request.param == "sqlite":
        yield str(request.getfixturevalue("sqlite_url"))
        return
    url = str(request.getfixturevalue("postgres_url"))
    _truncate(url)
    yield url
    _truncate(url)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink
