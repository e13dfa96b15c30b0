"""The PostgreSQL half of ``database_url`` starts every test as ``TRUNCATE <all tables>
RESTART IDENTITY CASCADE`` would leave the session's database, though only the tables a
test used are truncated (tests/conftest.py ``_truncate``)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import text

from tests.conftest import MIGRATION_ROWS, _truncate
from worker.core.db import engine_for
from worker.core.models import Base


def _rows(url: str) -> dict[str, int]:
    with engine_for(url).connect() as connection:
        count = 'SELECT count(*) FROM "{}"'
        return {
            table.name: connection.execute(text(count.format(table.name))).scalar_one()
            for table in Base.metadata.sorted_tables
        }


def _next_id(url: str, table: str) -> int:
    with engine_for(url).begin() as connection:
        return int(
            connection.execute(
                text("SELECT nextval(pg_get_serial_sequence(:table, 'id'))"), {"table": table}
            ).scalar_one()
        )


def test_rows_go_and_every_used_id_sequence_starts_again(postgres_url: str) -> None:
    _truncate(postgres_url)
    with engine_for(postgres_url).begin() as connection:
        connection.execute(
            text(
                "INSERT INTO suppressions (email, reason, source, created_at) "
                "VALUES ('gone@example.ro', 'manual', 'test', :now)"
            ),
            {"now": datetime.now(UTC)},
        )
    # A sequence moved on with no row left behind: an insert rolled back does the same.
    assert [_next_id(postgres_url, "events") for _ in range(3)] == [1, 2, 3]
    assert _next_id(postgres_url, "sends") == 1

    _truncate(postgres_url)

    # Empty but for the rows a migration writes and the product keeps (catalog_version).
    assert {table: count for table, count in _rows(postgres_url).items() if count} == {
        table: 1 for table in MIGRATION_ROWS
    }
    assert _next_id(postgres_url, "events") == 1
    assert _next_id(postgres_url, "sends") == 1
    assert _next_id(postgres_url, "consent_records") == 1  # never used: at its start still
    _truncate(postgres_url)
    assert _next_id(postgres_url, "events") == 1
    _truncate(postgres_url)  # the session's database as the next test expects it
