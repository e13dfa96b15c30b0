"""A migrated SQLite database per test process, copied for each test that needs one.

Migrating a new SQLite file runs every Alembic revision, each committing its own schema
changes: about 0.2 s of CPU and, on a disk shared with other runs, 2-5 s of waiting for
writes (measured 2026-11-30 under load 14 on the 2-core development VM). About 230 tests
of the suite start from an empty migrated SQLite database (``sqlite_url``, the SQLite half
of ``database_url``). The file a migration leaves is the same for each of them, so this
process migrates one file once, and each test gets a byte-for-byte copy of it: the same
schema, the same ``alembic_version`` row, the same WAL journal mode in the file's header.

Tests whose subject is the migration itself (``test_migrations.py``, the backfill tests of
``test_consent.py``) still run Alembic on their own files.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_template: Path | None = None


def _remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _migrated_template() -> Path:
    """This process's migrated file, made on first use and removed when the process ends.

    The engine the migration used is disposed before the file is read, so SQLite has
    checkpointed its write-ahead log into the file and removed the ``-wal`` file: the
    database file alone holds the whole schema."""
    global _template
    if _template is None:
        from worker.commands.migrate import upgrade
        from worker.core.db import dispose_engines

        directory = Path(tempfile.mkdtemp(prefix="crosssell-test-sqlite-"))
        atexit.register(_remove, directory)
        path = directory / "migrated.db"
        upgrade(f"sqlite:///{path}")
        dispose_engines()
        leftovers = sorted(p.name for p in directory.iterdir() if p != path)
        assert leftovers == [], f"the migrated template left {leftovers} next to it"
        _template = path
    return _template


def migrated_sqlite_url(path: Path) -> str:
    """``sqlite:///<path>``: a new file at ``path`` holding the migrated, empty schema (a
    copy of this process's migrated template). Raises FileExistsError when ``path`` exists:
    a test's database is always new."""
    if path.exists():
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_migrated_template(), path)
    return f"sqlite:///{path}"
