"""worker.records.customers.write_customers: on PostgreSQL its ``UPDATE … FROM unnest``
stores what the ORM's flush stores, value for value, and leaves nothing for the flush to
write again; elsewhere it writes nothing and the flush does it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, cast

import pytest
from sqlalchemy import Table, delete, event, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from worker.core.db import engine_for
from worker.core.dialect_insert import insert_for
from worker.core.models import Customer
from worker.records.customers import lock_customers, write_customers

NOW = datetime(2026, 11, 24, 8, 30, tzinfo=UTC)
AWKWARD = ['quote " and \\ backslash', "comma, {brace} NULL", "ț ș ă — 漢字 😀", "", " "]

Change = Callable[[Customer, int], None]


def _profile(customer: Customer, index: int) -> None:
    customer.email = f"ana.{index}@example.ro"
    customer.first_name = AWKWARD[index % len(AWKWARD)]
    customer.last_name = None
    customer.locale = "ro-RO"
    customer.timezone = "Europe/Bucharest"
    customer.email_marketing = index % 3 == 0 or (None if index % 3 == 1 else False)
    customer.updated_at = NOW + timedelta(microseconds=index)


def _purchase(customer: Customer, index: int) -> None:
    customer.orders_count = index + 1
    customer.lifetime_spend = Decimal("999.9999") / (index + 1)
    customer.last_purchase_at = (NOW - timedelta(days=index)).astimezone(
        timezone(timedelta(hours=2))
    )
    customer.first_purchase_at = None if index % 2 else NOW - timedelta(days=400)
    customer.categories_bought = sorted({"laptops", AWKWARD[index % len(AWKWARD)]})
    customer.skus_owned = [] if index % 2 else ["LAP-14", 'SKU "1"']
    customer.updated_at = NOW


def _preferences(customer: Customer, index: int) -> None:
    customer.opted_out_kinds = ["upsell"] if index % 2 else []
    customer.attributes = {"plan": AWKWARD[index % len(AWKWARD)], "seats": index, "nested": [1]}
    customer.updated_at = NOW


def _mixed(customer: Customer, index: int) -> None:
    """Different columns per customer: one statement per distinct set of columns."""
    [_profile, _purchase, _preferences][index % 3](customer, index)


CHANGES: dict[str, Change] = {
    "profile": _profile,
    "purchase": _purchase,
    "preferences": _preferences,
    "mixed": _mixed,
}


def _add(session: Session, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}-{index}" for index in range(count)]
    session.execute(
        insert_for(session, Customer),
        [
            {
                "id": customer_id,
                "email": "old@example.ro",
                "first_name": "Old",
                "attributes": {"old": True},
                "categories_bought": ["books"],
                "skus_owned": [],
                "opted_out_kinds": ["loyalty"],
                "orders_count": 1,
                "lifetime_spend": Decimal("20.00"),
                "created_at": NOW - timedelta(days=90),
                "updated_at": NOW - timedelta(days=90),
            }
            for customer_id in ids
        ],
    )
    return ids


def _stored(url: str, prefix: str) -> list[dict[str, Any]]:
    table = Customer.__table__
    with engine_for(url).connect() as connection:
        rows = connection.execute(
            select(table).where(table.c.id.like(f"{prefix}-%")).order_by(table.c.id)
        ).mappings()
        return [
            {name: value for name, value in row.items() if name != "id"} | {"n": row["id"][2:]}
            for row in rows
        ]


@pytest.fixture
def updates(database_url: str) -> Iterator[list[str]]:
    """The UPDATE statements sent to customers while the test runs."""
    sent: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE CUSTOMERS"):
            sent.append(statement)

    engine = engine_for(database_url)
    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


def _changed_and_stored(url: str, prefix: str, change: Change, *, core: bool) -> None:
    with Session(engine_for(url)) as session, session.begin():
        ids = _add(session, prefix, 7)
    with Session(engine_for(url)) as session, session.begin():
        customers = lock_customers(session, ids)
        for index, customer_id in enumerate(ids):
            change(customers[customer_id], index)
        if core:
            written = write_customers(session, customers.values())
            assert written == (len(ids) if url.startswith("postgresql") else 0)
            if written:
                assert not any(session.is_modified(c) for c in customers.values())
                # Nothing left for the flush to look at, as after the flush's own write.
                assert not set(session.dirty) & set(customers.values())
        session.flush()


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_write_customers_stores_what_the_orm_stores(
    database_url: str, updates: list[str], change: str
) -> None:
    _changed_and_stored(database_url, "o", CHANGES[change], core=False)
    orm_statements = len(updates)
    updates.clear()
    _changed_and_stored(database_url, "w", CHANGES[change], core=True)
    assert _stored(database_url, "w") == _stored(database_url, "o")
    if database_url.startswith("postgresql"):
        # One statement per distinct set of changed columns, none left to the flush.
        assert len(updates) == (3 if change == "mixed" else 1)
        assert all("unnest" in statement for statement in updates)
    else:
        assert len(updates) == orm_statements


def test_a_json_column_holding_null_is_left_to_the_orm(database_url: str) -> None:
    def to_null(customer: Customer, index: int) -> None:
        _purchase(customer, index)
        if index == 2:
            customer.attributes = None  # type: ignore[assignment]

    _changed_and_stored(database_url, "p", to_null, core=False)
    with Session(engine_for(database_url)) as session, session.begin():
        ids = _add(session, "q", 7)
    with Session(engine_for(database_url)) as session, session.begin():
        customers = lock_customers(session, ids)
        for index, customer_id in enumerate(ids):
            to_null(customers[customer_id], index)
        written = write_customers(session, customers.values())
        assert written == (6 if database_url.startswith("postgresql") else 0)
        assert session.is_modified(customers["q-2"])
    assert _stored(database_url, "q") == _stored(database_url, "p")


def test_a_vanished_row_is_stale_data_as_for_the_orm(postgres_url: str) -> None:
    with Session(engine_for(postgres_url)) as session:
        ids = _add(session, "v", 2)
        customers = lock_customers(session, ids)
        for index, customer in enumerate(customers.values()):
            _purchase(customer, index)
        table = cast(Table, Customer.__table__)
        session.connection().execute(delete(table).where(table.c.id == ids[1]))
        with pytest.raises(StaleDataError):
            write_customers(session, customers.values())
        session.rollback()


JSON_DOCUMENTS: list[dict[str, Any]] = [
    {"attributes": {}, "categories_bought": [], "skus_owned": [], "opted_out_kinds": []},
    {
        "attributes": {
            "score": Decimal("1.50"),
            "big": 12345678901234567890,
            "nested": {"list": [1, "2", None, True, {"x": "ț ș 漢字 😀"}]},
            "quote": 'a "b" \\ c',
            "null": None,
        },
        "categories_bought": ["books", "laptops"],
        "skus_owned": ["BOOK-1"],
        "opted_out_kinds": ["upsell"],
    },
]


def test_locked_customers_have_the_json_the_orm_loads(database_url: str) -> None:
    """The JSON columns decoded together (PostgreSQL) equal the ORM's own load."""
    with Session(engine_for(database_url)) as session, session.begin():
        ids = _add(session, "j", len(JSON_DOCUMENTS))
        for customer_id, document in zip(ids, JSON_DOCUMENTS, strict=True):
            customer = session.get(Customer, customer_id)
            assert customer is not None
            for name, value in document.items():
                setattr(customer, name, value)
    with Session(engine_for(database_url)) as session, session.begin():
        plain = {
            customer.id: {name: getattr(customer, name) for name in JSON_DOCUMENTS[0]}
            for customer in session.scalars(select(Customer).where(Customer.id.in_(ids)))
        }
    with Session(engine_for(database_url)) as session, session.begin():
        locked = lock_customers(session, ids)
        for customer_id in ids:
            customer = locked[customer_id]
            assert {name: getattr(customer, name) for name in plain[customer_id]} == plain[
                customer_id
            ]
            assert not session.is_modified(customer)
        assert [plain[customer_id] for customer_id in ids] == JSON_DOCUMENTS


def test_a_customer_already_in_the_session_keeps_its_pending_change(database_url: str) -> None:
    with Session(engine_for(database_url)) as session, session.begin():
        ids = _add(session, "k", 2)
    with Session(engine_for(database_url)) as session, session.begin():
        held = session.get(Customer, ids[0])
        assert held is not None
        held.attributes = {"pending": "yes"}
        with session.no_autoflush:
            locked = lock_customers(session, ids)
        assert locked[ids[0]] is held
        assert held.attributes == {"pending": "yes"}
        assert session.is_modified(held)
