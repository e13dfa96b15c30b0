"""``INSERT … ON CONFLICT`` (and ``IN`` lists) for the two databases crosssell runs on.

SQLAlchemy's generic ``insert()`` has no ``ON CONFLICT`` clause; PostgreSQL's and
SQLite's dialect inserts both have it (``on_conflict_do_nothing``), with the same
meaning. Statements are built on the Core table, not the mapped class, so a list of
rows runs as one multi-row statement without the ORM's unit of work.

:func:`insert_rows` inserts a batch of rows as one statement whose text does not grow with
the batch on PostgreSQL: each column travels as one array parameter and ``unnest`` turns
the arrays back into rows. A multi-row ``VALUES`` list (SQLAlchemy's "insertmanyvalues",
used for ``RETURNING``) is a new statement text per batch size, which the driver parses
again every time (psycopg caches no statement over 4 kB or 50 parameters): for 200 sends
of 14 columns, 92 kB of SQL and 17 ms of client CPU per batch, before the server parses
it (docs/performance.md, "Ingest").

Array parameters of strings, integers, booleans and aware datetimes travel in psycopg's
binary format (:func:`array_parameter`): its text format quotes and escapes each element
in Python, 0.4 µs per string and 2.2 µs per datetime, against about 0.1 µs in binary
(200 values, median of 200 dumps; docs/performance.md, "Ingest").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from psycopg import adapters
from psycopg.types.array import ListBinaryDumper
from sqlalchemy import (
    JSON,
    ColumnElement,
    Dialect,
    Row,
    String,
    Table,
    TypeDecorator,
    any_,
    bindparam,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.sql.type_api import TypeEngine, _BindProcessorType


class BinaryArray(list[Any]):
    """A list psycopg sends as a binary array (``ListBinaryDumper``, registered below for
    every connection made after this import; one made before sends it as text, the same
    array). Build it with :func:`array_parameter`, which checks its elements."""


adapters.register_dumper(BinaryArray, ListBinaryDumper)

_BINARY_ELEMENTS = (str, int, bool)


def array_parameter(values: list[Any]) -> list[Any]:
    """``values`` as an array parameter: a :class:`BinaryArray` when every value, None
    aside, has one type among ``str``, ``int``, ``bool`` and ``datetime`` with a time
    zone, which psycopg's binary dumpers write as the text format would have been read
    (same array type, same values); else ``values`` as they are, in text format (a
    ``Decimal``: psycopg's binary numeric is slower than its text; an empty or all-None
    list; mixed types)."""
    kinds = {type(value) for value in values}
    kinds.discard(type(None))
    if len(kinds) != 1:
        return values
    kind = kinds.pop()
    if kind in _BINARY_ELEMENTS:
        return BinaryArray(values)
    if kind is datetime and all(value is None or value.tzinfo is not None for value in values):
        return BinaryArray(values)
    return values


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


def insert_rows(
    session: Session,
    model: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    conflict: str | None = None,
    returning: Sequence[str] = (),
) -> list[Row[Any]]:
    """Insert ``rows`` (dicts with the same keys) into ``model``'s table in one statement;
    with ``conflict``, a row whose ``conflict`` column value is taken is skipped (``ON
    CONFLICT (conflict) DO NOTHING``). Returns the ``returning`` columns of the rows
    inserted (none without ``returning``), in no particular order.

    The same rows and values as ``insert_for(...)`` executed with the list: each value
    goes through its column type's bind processing (UTC check, money, JSON), and a column
    a row leaves out gets the column's Python default (a scalar), as Core's insert does."""
    if not rows:
        return []
    table: Table = model.__table__
    keys = tuple(rows[0])
    if session.get_bind().dialect.name != "postgresql" or any(tuple(row) != keys for row in rows):
        return _insert_values(session, model, rows, conflict, returning)
    dialect = session.get_bind().dialect
    plan = _unnest_insert(dialect, table, keys, conflict, tuple(returning))
    if plan is None:
        return _insert_values(session, model, rows, conflict, returning)
    sql, columns, defaults = plan
    parameters: dict[str, Any] = {}
    for index, (name, process) in enumerate(columns):
        if name in defaults:
            values: list[Any] = [defaults[name]] * len(rows)
        else:
            values = [row[name] for row in rows]
        if process is _JSON_DOCUMENTS:
            if not all(isinstance(value, dict | list) for value in values):
                # None, JSON.NULL, a scalar: SQLAlchemy's own rules decide.
                return _insert_values(session, model, rows, conflict, returning)
            serializer = getattr(dialect, "_json_serializer", None) or json.dumps
            parameters[f"c{index}"] = serializer(values)
        else:
            parameters[f"c{index}"] = array_parameter(
                values if process is None else [process(v) for v in values]
            )
    result = session.execute(text(sql), parameters)
    return list(result) if returning else []


def _insert_values(
    session: Session,
    model: Any,
    rows: Sequence[Mapping[str, Any]],
    conflict: str | None,
    returning: Sequence[str],
) -> list[Row[Any]]:
    """The rows through Core's insert: SQLite, and rows :func:`_unnest_insert` cannot take.
    With ``returning`` SQLAlchemy sends multi-row ``VALUES`` lists; without, the driver's
    executemany (SQLite's runs in process, with no round trip per row)."""
    table: Table = model.__table__
    statement = insert_for(session, model)
    if conflict is not None:
        statement = statement.on_conflict_do_nothing(index_elements=[conflict])
    if returning:
        return list(
            session.execute(statement.returning(*(table.c[name] for name in returning)), rows)
        )
    session.execute(statement, rows)
    return []


def _json_documents(value: Any) -> Any:
    """Marks a JSON column: its values travel as one JSON array text (see below)."""
    return value


_JSON_DOCUMENTS: _BindProcessorType[Any] = _json_documents


@lru_cache(maxsize=64)
def _unnest_insert(
    dialect: Dialect,
    table: Table,
    keys: tuple[str, ...],
    conflict: str | None,
    returning: tuple[str, ...],
) -> tuple[str, list[tuple[str, _BindProcessorType[Any] | None]], dict[str, Any]] | None:
    """The ``INSERT … SELECT * FROM unnest(…)`` text for these columns, each column's bind
    processor, and the Python scalar defaults of the columns ``keys`` leaves out; None
    when a column left out has a default computed per row (Core's insert calls it)."""
    defaults: dict[str, Any] = {}
    for column in table.c:
        default = column.default
        if column.name in keys or default is None:
            continue
        if not getattr(default, "is_scalar", False):
            return None
        defaults[column.name] = getattr(default, "arg")  # noqa: B009 - typed as a union
    names = [*keys, *defaults]
    quote = dialect.identifier_preparer.quote
    columns: list[tuple[str, _BindProcessorType[Any] | None]] = []
    arrays: list[str] = []
    for index, name in enumerate(names):
        column_type = table.c[name].type
        sql_type = column_type.compile(dialect=dialect)
        if isinstance(column_type, JSON):
            # One JSON array of the documents, split back in order: an array parameter of
            # JSON texts would have psycopg escape every quote in them, in Python.
            function = "jsonb_array_elements" if sql_type == "JSONB" else "json_array_elements"
            columns.append((name, _JSON_DOCUMENTS))
            arrays.append(
                f"ARRAY(SELECT value FROM {function}(CAST(:c{index} AS {sql_type}))"
                " WITH ORDINALITY ORDER BY ordinality)"
            )
        else:
            columns.append((name, column_type._cached_bind_processor(dialect)))
            arrays.append(f"CAST(:c{index} AS {sql_type}[])")
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(name) for name in names)})"
        f" SELECT * FROM unnest({', '.join(arrays)})"
        + (f" ON CONFLICT ({quote(conflict)}) DO NOTHING" if conflict is not None else "")
        + (f" RETURNING {', '.join(quote(name) for name in returning)}" if returning else "")
    )
    return sql, columns, defaults


def among(
    session: Session, column: ColumnElement[Any] | QueryableAttribute[Any], values: Iterable[Any]
) -> ColumnElement[bool]:
    """``column IN (values)``; on PostgreSQL written ``column = ANY(:array)``, the same
    condition (PostgreSQL turns an ``IN`` list into it) as a statement whose text does not
    change with the number of values, so the driver parses it once, not once per batch
    (an ``IN`` list of 200 ids is 200 placeholders psycopg parses every time)."""
    wanted = list(values)
    if session.get_bind().dialect.name != "postgresql":
        return column.in_(wanted)
    element = column.__clause_element__() if isinstance(column, QueryableAttribute) else column
    return element == any_(bindparam(None, wanted, type_=_array_of(element)))


def bound_among(column: ColumnElement[Any], name: str, postgres: bool) -> ColumnElement[bool]:
    """:func:`among` for a statement built once: ``column IN (:name)`` with the values
    bound at each execution under ``name`` (a list), ``column = ANY(:name)`` on
    PostgreSQL."""
    if not postgres:
        return column.in_(bindparam(name, expanding=True))
    return column == any_(bindparam(name, type_=_array_of(column)))


def _array_of(element: ColumnElement[Any]) -> TypeEngine[Any]:
    """The array type of ``element``'s values for ``= ANY(…)``."""
    if isinstance(element.type, String):
        # VARCHAR without a length: a cast to VARCHAR(n)[] would cut a longer value to a
        # prefix that might equal a stored one, where IN compares it whole.
        return _StringArray()
    return postgresql.ARRAY(element.type)


class _StringArray(TypeDecorator[list[Any]]):
    """``VARCHAR[]`` whose value reaches the driver through :func:`array_parameter` (the
    ARRAY type's own bind processing copies it into a plain list, sent as text)."""

    impl = postgresql.ARRAY(String())
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> _BindProcessorType[list[Any]]:
        return _string_array

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return _string_array(value)


def _string_array(value: Any) -> Any:
    return None if value is None else array_parameter(list(value))
