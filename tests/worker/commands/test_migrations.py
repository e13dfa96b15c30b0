"""The schema comes only from Alembic and matches the models on both databases."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text

from worker.commands.migrate import alembic_config
from worker.core.db import engine_for


def test_migrations_match_models(database_url: str) -> None:
    # alembic check raises if autogenerate finds any difference from the models.
    command.check(alembic_config(database_url))
    tables = set(inspect(engine_for(database_url)).get_table_names())
    assert {
        "customers",
        "products",
        "events",
        "orders",
        "order_lines",
        "sends",
        "suppressions",
    } <= tables


def test_sends_dedupe_key_is_unique(database_url: str) -> None:
    uniques = inspect(engine_for(database_url)).get_unique_constraints("sends")
    indexes = inspect(engine_for(database_url)).get_indexes("sends")
    unique_columns = [u["column_names"] for u in uniques] + [
        i["column_names"] for i in indexes if i.get("unique")
    ]
    assert ["dedupe_key"] in unique_columns


def test_upgrades_keep_existing_rows(tmp_path: Path) -> None:
    """Every migration runs over a database that already holds data (SQLite rebuilds
    tables in batch mode; foreign keys must not stop it)."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = alembic_config(url)
    command.upgrade(config, "0001")
    now = datetime.now(UTC).isoformat()
    with engine_for(url).begin() as connection:
        connection.execute(
            text(
                "INSERT INTO customers (id, attributes, orders_count, lifetime_spend, "
                "categories_bought, skus_owned, created_at, updated_at) "
                "VALUES ('C-1', '{}', 0, '0', '[]', '[]', :now, :now)"
            ),
            {"now": now},
        )
        connection.execute(
            text(
                "INSERT INTO events (event_id, type, customer_id, occurred_at, received_at, "
                "payload, outcome) VALUES ('e1', 'purchase', 'C-1', :now, :now, '{}', '{}')"
            ),
            {"now": now},
        )
    command.upgrade(config, "head")
    with engine_for(url).connect() as connection:
        kinds = connection.execute(
            text("SELECT opted_out_kinds FROM customers WHERE id = 'C-1'")
        ).scalar_one()
        events = connection.execute(text("SELECT count(*) FROM events")).scalar_one()
    assert kinds == "[]" and events == 1
    command.check(config)


def test_localized_product_texts_migrate_up_and_down(tmp_path: Path) -> None:
    """0007 adds the per-language texts with empty defaults for products already there,
    and its downgrade removes them again, on SQLite and PostgreSQL alike."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    from tests.support.services import fresh_postgres_database

    def run(url: str) -> None:
        config = alembic_config(url)
        command.upgrade(config, "0006")
        with engine_for(url).begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO products (sku, name, category, price, currency, in_stock, "
                    "updated_at) VALUES ('P-1', 'Laptop', 'laptops', 10, 'EUR', true, :now)"
                ),
                {"now": datetime.now(UTC)},
            )
        command.upgrade(config, "0007")
        with engine_for(url).connect() as connection:
            row = connection.execute(
                text("SELECT name, name_i18n, description, description_i18n FROM products")
            ).one()
        as_json = [value if isinstance(value, dict) else json.loads(value) for value in row[1::2]]
        assert (row.name, row.description, as_json) == ("Laptop", None, [{}, {}])
        command.downgrade(config, "0006")
        columns = {c["name"] for c in inspect(engine_for(url)).get_columns("products")}
        assert not {"name_i18n", "description", "description_i18n"} & columns
        assert "name" in columns
        command.upgrade(config, "head")
        command.check(config)

    run(f"sqlite:///{tmp_path / 'i18n.db'}")
    with fresh_postgres_database() as url:
        run(url)


def _revisions_in_order(url: str) -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(url))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def test_every_migration_goes_up_down_and_up_again(tmp_path: Path) -> None:
    """Each revision's downgrade undoes it exactly (the schema after up, down, up is the
    schema after up), on SQLite and PostgreSQL; afterwards ``alembic check`` is clean."""
    from tests.support.services import fresh_postgres_database
    from worker.commands.migrate import current_revision

    def schema(url: str) -> dict[str, list[tuple[str, str]]]:
        inspector = inspect(engine_for(url))
        return {
            table: sorted((c["name"], str(c["type"])) for c in inspector.get_columns(table))
            + sorted(("index", i["name"] or "") for i in inspector.get_indexes(table))
            for table in inspector.get_table_names()
            if table != "alembic_version"  # Alembic's own, stays once created
        }

    def run(url: str) -> None:
        config = alembic_config(url)
        revisions = _revisions_in_order(url)
        assert len(revisions) >= 10
        previous: str = "base"
        for revision in revisions:
            before = schema(url)
            command.upgrade(config, revision)
            after = schema(url)
            command.downgrade(config, previous)
            assert schema(url) == before, f"downgrade of {revision} left changes behind"
            assert current_revision(url) == (None if previous == "base" else previous)
            command.upgrade(config, revision)
            assert schema(url) == after, f"{revision} differs on its second upgrade"
            previous = revision
        command.check(config)
        command.downgrade(config, "base")
        assert schema(url) == {}
        command.upgrade(config, "head")
        command.check(config)

    run(f"sqlite:///{tmp_path / 'updown.db'}")
    with fresh_postgres_database() as url:
        run(url)


ROOT = Path(__file__).resolve().parents[3]
# Restated from the contract in migrations/env.py: the lock every migration run takes.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"crosssell migrations").digest()[:8], "big", signed=True)


STATEMENT_TIMEOUT = "CROSSSELL_MIGRATION_STATEMENT_TIMEOUT"


def _migrate_in_a_process(url: str, **environment: str) -> subprocess.Popen[str]:
    """``upgrade(url)`` in its own interpreter, as a second deploy would run it."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from worker.commands.migrate import upgrade; upgrade(sys.argv[1])",
            url,
        ],
        cwd=ROOT,
        env={**os.environ, **environment},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _waiting_for_the_lock(admin: Engine, database: str) -> int:
    with admin.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                    "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = :name"
                ),
                {"name": database},
            ).scalar_one()
        )


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_two_concurrent_upgrades_of_a_fresh_database_both_succeed() -> None:
    """Two deploys migrate one empty PostgreSQL database at the same moment. Without a
    lock both would create ``alembic_version`` and the first tables, and one would fail
    (duplicate table or key); with it the second waits, then finds the work done.

    The test holds the migration lock itself until both runs wait for it, so they are
    released together, the worst case, rather than relying on lucky timing."""
    from sqlalchemy import create_engine

    from tests.support.services import POSTGRES_ADMIN_URL, database_name, fresh_postgres_database
    from worker.commands.migrate import current_revision

    with fresh_postgres_database() as url:
        holder = create_engine(url)
        admin = create_engine(POSTGRES_ADMIN_URL)
        runs: list[subprocess.Popen[str]] = []
        try:
            with holder.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
                runs = [_migrate_in_a_process(url), _migrate_in_a_process(url)]
                _wait(
                    lambda: _waiting_for_the_lock(admin, database_name(url)) == 2,
                    60,
                    "both migration runs to wait for the advisory lock",
                )
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
                connection.commit()
            outputs = [run.communicate(timeout=120) for run in runs]
        finally:
            for run in runs:
                if run.poll() is None:
                    run.kill()
                    run.wait()
            holder.dispose()
            admin.dispose()
        for run, (_, stderr) in zip(runs, outputs, strict=True):
            assert run.returncode == 0, stderr
        head = _revisions_in_order(url)[-1]
        assert current_revision(url) == head
        with engine_for(url).connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [row[0] for row in versions] == [head]
        command.check(alembic_config(url))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {
                "CROSSSELL_MIGRATION_LOCK_TIMEOUT": "1s",
                "CROSSSELL_MIGRATION_STATEMENT_TIMEOUT": "0",
            },
            "canceling statement due to lock timeout",
        ),
        (
            {
                "CROSSSELL_MIGRATION_LOCK_TIMEOUT": "0",
                "CROSSSELL_MIGRATION_STATEMENT_TIMEOUT": "1s",
            },
            "canceling statement due to statement timeout",
        ),
    ],
)
def test_a_migration_blocked_by_a_long_transaction_gives_up_and_rolls_back(
    settings: dict[str, str], message: str
) -> None:
    """A transaction holding a lock on a table (a long report on ``sends``, a stuck
    session) would leave the migration's DDL queued behind it, and every query on that
    table queued behind the DDL. Every table is locked, so the last migration is blocked
    whichever table it alters. With the timeouts the migration fails within seconds, rolls
    back whole, and can simply be run again. Each timeout is shown alone (the other set to
    0, no limit)."""
    from tests.support.services import fresh_postgres_database
    from worker.commands.migrate import current_revision

    with fresh_postgres_database() as url:
        revisions = _revisions_in_order(url)
        before = revisions[-2]
        command.upgrade(alembic_config(url), before)
        blocker = engine_for(url).connect()
        try:
            tables = sorted(set(inspect(blocker).get_table_names()) - {"alembic_version"})
            quoted = ", ".join(f'"{table}"' for table in tables)
            blocker.execute(text(f"LOCK TABLE {quoted} IN ACCESS EXCLUSIVE MODE"))
            run = _migrate_in_a_process(url, **settings)
            try:
                # Without the timeout it would wait for the lock for ever. The message
                # below names the timeout that ended it; how long the process took also
                # counts its interpreter's start, tens of seconds on a loaded machine.
                _, stderr = run.communicate(timeout=120)
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
        finally:
            blocker.rollback()
            blocker.close()
        assert run.returncode != 0
        assert message in stderr, stderr[-2000:]
        assert current_revision(url) == before, "the failed run left nothing half-done"
        command.upgrade(alembic_config(url), "head")
        assert current_revision(url) == revisions[-1]
