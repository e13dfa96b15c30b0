"""Shared fixtures: real PostgreSQL, RabbitMQ, Redis and an SMTP sink on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from tests.hostile.personal_data import LeakRecorder
from tests.support.logging_guard import reenable_disabled
from tests.support.services import fresh_postgres_database
from tests.support.smtp_sink import SmtpSink
from tests.support.sqlite_template import migrated_sqlite_url

# Puts the ``integration`` marker on every test that needs a service, and fails one that
# reaches a service without it (see the module's docstring); and the ``private_postgres``
# fixture of the tests that break a PostgreSQL server.
pytest_plugins = ["tests.support.integration", "tests.support.private_services"]

# No per-example deadline (Hypothesis's default is 200 ms): a property test checks what
# the code answers, not how fast, and on a loaded 2-core machine a cheap example can take
# longer (seen: the cart-link test of test_content_lint). Speed is measured under bench/.
hypothesis_settings.register_profile("crosssell", deadline=None)
hypothesis_settings.load_profile("crosssell")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL database for the whole session."""
    from worker.commands.migrate import upgrade

    with fresh_postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A migrated, empty SQLite database of the test's own (a copy of the migrated file
    this process made once: tests/support/sqlite_template.py)."""
    from worker.core.db import dispose_engines

    url = migrated_sqlite_url(tmp_path / "crosssell.db")
    yield url
    dispose_engines()


# The tables of ``names`` that hold a row or whose id sequence has handed out a value
# (a row inserted and deleted, or an insert rolled back, moves it on too).
_USED_TABLES = """
SELECT t.name FROM unnest(CAST(:names AS text[])) AS t(name)
WHERE EXISTS (
    SELECT FROM pg_depend d
    JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
    JOIN pg_sequences q ON q.schemaname = s.relnamespace::regnamespace::text
        AND q.sequencename = s.relname
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
        AND d.refobjid = to_regclass(quote_ident(t.name)) AND d.deptype IN ('a', 'i')
        AND q.last_value IS NOT NULL
)
"""


# Tables whose rows a migration writes and the product keeps: emptied, the database would
# be in a state no installation is in (``catalog_version``'s one row, migration 0015; the
# catalog tables' triggers give it a new value whenever a test's TRUNCATE empties them).
MIGRATION_ROWS = frozenset({"catalog_version"})


def _truncate(url: str) -> None:
    """Every table empty and every id sequence back at its start, as ``TRUNCATE <all
    tables> RESTART IDENTITY CASCADE`` leaves them. Only the tables a test used are
    truncated: TRUNCATE gives each table and index a new file, about 0.7 s for all of
    them under load (measured 2026-11-30, load 15 on the 2-core VM), twice per test,
    while a table with no row and an unused sequence is in that state already."""
    from sqlalchemy import text

    from worker.core.db import engine_for
    from worker.core.models import Base

    names = [
        table.name for table in Base.metadata.sorted_tables if table.name not in MIGRATION_ROWS
    ]
    with engine_for(url).begin() as connection:
        filled = " UNION ALL ".join(
            f"SELECT CAST('{name}' AS text) WHERE EXISTS (SELECT FROM \"{name}\")" for name in names
        )
        used = set(connection.scalars(text(filled)))
        used |= set(connection.scalars(text(_USED_TABLES), {"names": names}))
        if used:
            listed = ", ".join(f'"{name}"' for name in names if name in used)
            connection.execute(text(f"TRUNCATE {listed} RESTART IDENTITY CASCADE"))


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


@pytest.fixture(autouse=True)
def _loggers_stay_enabled() -> Iterator[None]:
    """Fail the test that leaves a ``worker`` logger disabled (tests/support/logging_guard.py
    says how that happens); the loggers are enabled again for the tests after it."""
    yield
    disabled = reenable_disabled("worker")
    assert not disabled, f"this test left loggers disabled: {', '.join(disabled)}"


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


# --- no personal data in any log record (see tests/hostile/personal_data.py) ------------

_LEAKS = LeakRecorder()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Collect every log record, at DEBUG, while each test sets up, runs and tears down."""
    with _LEAKS.watching(item.nodeid):
        yield


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LEAKS.leaks:
        terminalreporter.section("personal data in log records", red=True)
        for line in _LEAKS.report():
            terminalreporter.line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The session-end assertion: a log record that named a test customer fails the run."""
    if _LEAKS.leaks and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- parallel runs (pytest-xdist, ``--dist loadgroup``) ------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A module whose fixtures live for the module (a private RabbitMQ node, a served
    report, a signed key) runs on one worker: split over two, each would build them.

    ``tryfirst``: pytest-xdist reads the ``xdist_group`` markers in its own hook of the
    same name (it appends ``@<group>`` to the node id), which runs before a conftest's
    hook otherwise; a marker added after it is ignored and the module is split (seen:
    the delivery fault module's 65 s set-up paid on both processes)."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or item.get_closest_marker("xdist_group") is not None:
            continue
        scopes = {
            definition.scope
            for definitions in info.name2fixturedefs.values()
            for definition in definitions
        }
        if scopes & {"module", "class", "package"}:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
