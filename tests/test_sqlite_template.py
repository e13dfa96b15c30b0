"""The copied SQLite database (tests/support/sqlite_template.py) is the database a
migration makes: same schema, same revision, same journal mode, no rows, and each copy
is a database of its own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.support.sqlite_template import migrated_sqlite_url
from worker.commands.migrate import upgrade
from worker.core.db import dispose_engines


def _lines(sql: str | None) -> list[str]:
    """A schema statement's lines in sorted order, without their separating commas.

    Alembic's batch mode rebuilds a table with its constraints in an order that differs
    from one migration to the next (two fresh migrations of the same revisions differ so),
    and the order of a table's constraints means nothing to SQLite."""
    return sorted(line.strip().rstrip(",").strip() for line in (sql or "").splitlines())


def _describe(path: Path) -> dict[str, object]:
    """Schema objects, revision, journal mode and row counts of the SQLite file."""
    with sqlite3.connect(path) as connection:
        schema = [
            (kind, name, table, _lines(sql))
            for kind, name, table, sql in connection.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
            )
        ]
        tables = [name for kind, name, _, _ in schema if kind == "table"]
        rows = {
            table: connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            for table in tables
            if table != "alembic_version"
        }
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        journal = connection.execute("PRAGMA journal_mode").fetchone()[0]
    connection.close()
    return {"schema": schema, "rows": rows, "revision": revision, "journal": journal}


def test_a_copy_is_the_database_a_migration_makes(tmp_path: Path) -> None:
    migrated = tmp_path / "migrated.db"
    upgrade(f"sqlite:///{migrated}")
    dispose_engines()
    url = migrated_sqlite_url(tmp_path / "copy" / "crosssell.db")
    assert url == f"sqlite:///{tmp_path / 'copy' / 'crosssell.db'}"
    copied = _describe(tmp_path / "copy" / "crosssell.db")
    assert copied == _describe(migrated)
    assert copied["journal"] == "wal"
    rows = copied["rows"]
    assert isinstance(rows, dict) and copied["schema"]
    # Empty but for the rows migrations write (catalog_version's one row, 0015).
    assert {table: count for table, count in rows.items() if count} == {"catalog_version": 1}


def test_each_copy_is_a_database_of_its_own(tmp_path: Path) -> None:
    first = Path(migrated_sqlite_url(tmp_path / "a.db").removeprefix("sqlite:///"))
    second = Path(migrated_sqlite_url(tmp_path / "b.db").removeprefix("sqlite:///"))
    with sqlite3.connect(first) as connection:
        connection.execute("DELETE FROM alembic_version")
    connection.close()
    assert _describe(first)["revision"] == []
    assert _describe(second)["revision"] != []
    third = Path(migrated_sqlite_url(tmp_path / "c.db").removeprefix("sqlite:///"))
    assert _describe(third)["revision"] == _describe(second)["revision"]


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    taken = tmp_path / "taken.db"
    taken.write_bytes(b"someone's data")
    with pytest.raises(FileExistsError):
        migrated_sqlite_url(taken)
    assert taken.read_bytes() == b"someone's data"
