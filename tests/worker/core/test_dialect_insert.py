"""worker.core.dialect_insert.insert_rows: on PostgreSQL the ``unnest`` statement stores what
Core's multi-row insert stores, value for value; on SQLite it is Core's insert."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from tests.support.factories import insert_customers
from worker.core.db import engine_for
from worker.core.dialect_insert import insert_for, insert_rows
from worker.core.models import Customer, Event, Order, Send

NOW = datetime(2026, 11, 24, 8, 30, tzinfo=UTC)
AWKWARD = ["plain", 'quote " and \\ backslash', "comma, {brace} NULL", "ț ș ă — 漢字 😀", "", " "]


def _event_rows(prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{prefix}-{index}",
            "type": "purchase",
            "customer_id": f"{prefix}-c{index % 2}",
            "occurred_at": NOW - timedelta(minutes=index, microseconds=index),
            "received_at": NOW,
            "payload": {"text": text, "nested": {"list": [1, "2", None, True]}, "n": "1.50"},
            "outcome": {} if index % 2 else {"campaign": f"planned {text}"},
        }
        for index, text in enumerate(AWKWARD)
    ]


def _send_rows(prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "campaign_id": "laptop-accessories",
            "kind": "cross_sell",
            "variant": None if index % 2 else text,
            "template": text,
            "customer_id": f"{prefix}-c{index % 2}",
            "event_id": f"{prefix}-{index}",
            "status": "planned",
            "reason": None,
            "dedupe_key": f"{prefix}:{text}:{index}",
            "send_at": None if index == 1 else NOW + timedelta(hours=index),
            "expires_at": NOW + timedelta(days=index),
            "created_at": NOW,
            "updated_at": NOW,
        }
        for index, text in enumerate(AWKWARD)
    ]


def _stored(session: Session, model: Any, key: str, prefix: str) -> list[dict[str, Any]]:
    table = model.__table__
    rows = session.execute(
        select(table).where(table.c[key].like(f"{prefix}%")).order_by(table.c[key])
    ).mappings()
    return [{name: value for name, value in row.items() if name != "id"} for row in rows]


def _both_ways(session: Session, model: Any, rows_for: Any, key: str, conflict: str | None) -> None:
    """The same rows through Core's insert (prefix ``a``) and ``insert_rows`` (``b``)."""
    expected = rows_for("a")
    statement = insert_for(session, model)
    if conflict is not None:
        statement = statement.on_conflict_do_nothing(index_elements=[conflict])
    session.execute(statement, expected)
    insert_rows(session, model, rows_for("b"), conflict=conflict)
    old = _stored(session, model, key, "a")
    new = _stored(session, model, key, "b")
    assert len(old) == len(expected)
    assert [_renamed(row, "b", "a") for row in new] == old


def _renamed(row: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {
        name: value.replace(f"{old}-", f"{new}-").replace(f"{old}:", f"{new}:")
        if isinstance(value, str)
        else value
        for name, value in row.items()
    }


def test_unnest_stores_what_core_stores(database_url: str) -> None:
    with Session(engine_for(database_url)) as session, session.begin():
        insert_customers(session, ["a-c0", "a-c1", "b-c0", "b-c1"], NOW)
        _both_ways(session, Event, _event_rows, "event_id", "event_id")
        _both_ways(session, Send, _send_rows, "event_id", "dedupe_key")
        _both_ways(
            session,
            Order,
            lambda prefix: [
                {
                    "id": f"{prefix}-o{index}",
                    "customer_id": f"{prefix}-c0",
                    "event_id": f"{prefix}-{index}",
                    "currency": "RON",
                    "total": Decimal("999.9999") / (index + 1),
                    "ordered_at": NOW,
                }
                for index in range(3)
            ],
            "id",
            None,
        )
        sends = session.execute(select(Send.attempts).where(Send.event_id.like("b-%"))).all()
        assert {attempts for (attempts,) in sends} == {0}  # the column's Python default


def test_conflicts_are_skipped_and_returning_names_the_inserted_rows(database_url: str) -> None:
    with Session(engine_for(database_url)) as session, session.begin():
        insert_customers(session, ["x-c0", "x-c1"], NOW)
        first = _event_rows("x")[:3]
        inserted = insert_rows(
            session, Event, first, conflict="event_id", returning=("id", "event_id")
        )
        assert sorted(row.event_id for row in inserted) == sorted(r["event_id"] for r in first)
        again = insert_rows(
            session, Event, _event_rows("x"), conflict="event_id", returning=("id", "event_id")
        )
        assert sorted(row.event_id for row in again) == [f"x-{index}" for index in range(3, 6)]
        assert not {row.id for row in again} & {row.id for row in inserted}


def test_a_naive_datetime_is_refused_as_core_refuses_it(database_url: str) -> None:
    with Session(engine_for(database_url)) as session, session.begin():
        insert_customers(session, ["n-c0", "n-c1"], NOW)
        rows = _event_rows("n")
        rows[2]["received_at"] = datetime(2026, 11, 24, 8, 30)
        with pytest.raises(Exception, match="naive datetime"):
            insert_rows(session, Event, rows, conflict="event_id")


def test_a_column_left_to_a_per_row_default_takes_cores_path(database_url: str) -> None:
    """``events.outcome`` defaults to ``dict()``, called per row: Core's insert fills it."""
    with Session(engine_for(database_url)) as session, session.begin():
        insert_customers(session, ["k-c0", "k-c1"], NOW)
        rows = [
            {key: value for key, value in row.items() if key != "outcome"}
            for row in _event_rows("k")[:2]
        ]
        insert_rows(session, Event, rows)
        stored = _stored(session, Event, "event_id", "k")
        assert [row["outcome"] for row in stored] == [{}, {}]


def test_among_is_in(database_url: str) -> None:
    """``among`` finds what ``IN`` finds: none, some, all; a longer value than the column
    holds is compared whole, never cut to a stored prefix."""
    from worker.core.dialect_insert import among

    with Session(engine_for(database_url)) as session, session.begin():
        insert_customers(session, ["m-c0", "m-c1", "m-c2"], NOW)
        short = Customer.__table__.c.id.type.length
        for wanted in ([], ["nobody"], ["m-c1", "nobody"], ["m-c0", "m-c1", "m-c2"]):
            found = session.scalars(select(Customer.id).where(among(session, Customer.id, wanted)))
            plain = session.scalars(select(Customer.id).where(Customer.id.in_(wanted)))
            assert sorted(found) == sorted(plain) == sorted(w for w in wanted if w != "nobody")
        insert_customers(session, ["x" * short], NOW)
        longer = ["x" * (short + 5)]
        assert (
            list(session.scalars(select(Customer.id).where(among(session, Customer.id, longer))))
            == []
        )


def test_array_parameter_is_binary_only_for_one_known_element_type() -> None:
    """Binary for strings, integers, booleans and aware datetimes (None allowed among
    them); the text format, as before, for anything else."""
    from worker.core.dialect_insert import BinaryArray, array_parameter

    binary = [
        ["a", None, "b"],
        [1, 2**40],
        [True, None],
        [NOW, None, NOW + timedelta(microseconds=1)],
    ]
    for values in binary:
        sent = array_parameter(values)
        assert isinstance(sent, BinaryArray) and sent == values
    text = [[], [None], ["a", 1], [True, 1], [Decimal("1.5")], [datetime(2026, 1, 1), NOW]]
    for values in text:
        assert type(array_parameter(values)) is list


@pytest.mark.parametrize(
    ("values", "sql_type"),
    [
        ([*AWKWARD, None, "\\N", "NULL", '"', "{", "}", "a\tb\nc"], "VARCHAR"),
        (
            [
                NOW,
                None,
                datetime(1970, 1, 1, tzinfo=UTC),
                datetime(2026, 3, 29, 3, 30, 0, 999_999, tzinfo=timezone(timedelta(hours=3))),
                datetime(8999, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=11))),
            ],
            "TIMESTAMP WITH TIME ZONE",
        ),
        ([0, -1, None, 2**31 - 1, -(2**63), 2**63 - 1], "BIGINT"),
        ([0, 1, None, 32_767], "INTEGER"),
        ([True, False, None], "BOOLEAN"),
    ],
)
def test_a_binary_array_reads_as_the_text_one(
    postgres_url: str, values: list[Any], sql_type: str
) -> None:
    """The server reads the same array from psycopg's binary format as from its text."""
    from worker.core.dialect_insert import BinaryArray, array_parameter

    sent = array_parameter(values)
    assert isinstance(sent, BinaryArray)
    query = text(f"SELECT CAST(:binary AS {sql_type}[]), CAST(:text AS {sql_type}[])")
    with Session(engine_for(postgres_url)) as session:
        binary, plain = session.execute(query, {"binary": sent, "text": list(values)}).one()
    assert binary == plain == values


def test_out_of_range_integers_are_refused_in_binary_too(postgres_url: str) -> None:
    """An integer the column cannot hold is the database's refusal either way."""
    from worker.core.dialect_insert import array_parameter

    query = text("SELECT CAST(:values AS INTEGER[])")
    for values in ([2**31], [2**63]):
        for sent in (array_parameter(values), list(values)):
            with Session(engine_for(postgres_url)) as session, pytest.raises(DataError):
                session.execute(query, {"values": sent})
