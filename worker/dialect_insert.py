"""``INSERT … ON CONFLICT`` for the two databases crosssell runs on.

SQLAlchemy's generic ``insert()`` has no ``ON CONFLICT`` clause; PostgreSQL's and
SQLite's dialect inserts both have it (``on_conflict_do_nothing``), with the same
meaning. Statements are built on the Core table, not the mapped class, so a list of
rows runs as one multi-row statement without the ORM's unit of work.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_for(session: Session, model: Any) -> postgresql.Insert | sqlite.Insert:
    """An insert into ``model``'s table in the session's dialect; RuntimeError on any
    database but PostgreSQL and SQLite."""
    table = model.__table__
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"crosssell needs PostgreSQL or SQLite, not {dialect}")
