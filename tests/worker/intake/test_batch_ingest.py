"""Batched ingest (``worker.intake.ingest.ingest_batch``, ``worker.intake.consumer.handle_bodies``).

A batch must store and plan exactly what the same events stored one at a time would,
a customer's second event seeing what the first planned; each message keeps its own
fate (a bad one is dead-lettered alone, a refused value too); a lost database requeues
the whole batch; and messages are acknowledged only after the commit, so a consumer
that dies between the two leaves a duplicate behind, never a second plan.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.messaging import Producer
from sqlalchemy import event, func, select, text, update

from tests.support.factories import (
    TUESDAY_MORNING,
    as_json,
    customer_block,
    make_settings,
    purchase,
)
from tests.support.private_services import PrivatePostgres
from tests.support.services import fresh_postgres_database, require_rabbitmq
from triggers.events import AnyEvent, validate_event
from worker.commands.demo import seed_catalog
from worker.commands.migrate import upgrade
from worker.core.clock import ShiftedClock
from worker.core.db import dispose_engines, engine_for, transaction
from worker.core.metrics import SENDS
from worker.core.models import Enrollment, Event, Send, SendOffer
from worker.core.settings import Settings
from worker.core.topology import events_exchange, events_queue, transport_options
from worker.intake import consumer as consumer_module
from worker.intake.consumer import EventConsumer, handle_bodies, next_batch_limit, run_consumer
from worker.intake.ingest import ingest_batch, ingest_event
from worker.process.runtime import Runtime

NOW = TUESDAY_MORNING


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _usage_drop(customer_id: str, at: datetime) -> dict[str, Any]:
    return {
        "id": f"evt-usage-{customer_id}-{uuid.uuid4().hex[:6]}",
        "type": "usage_change",
        "occurred_at": at.isoformat(),
        "customer": {"id": customer_id},
        "data": {"metric": "logins_per_week", "previous": 10, "current": 2, "window_days": 14},
    }


def _mixed_batch() -> list[AnyEvent]:
    """Customers with two or three events each, interleaved with other customers':

    * ``C-lap-*``: a laptop purchase (laptop-accessories, priority 80, in 2 h), then a
      usage drop (usage-drop-bundle, priority 70): the second must see the first's plan
      and give way (``min_gap``);
    * ``C-use-*``: a small order, a usage drop, then a laptop purchase: the laptop email
      takes the place of the usage one planned earlier in the same batch (displaced);
    * the first event once more at the end: a duplicate within the batch.
    """
    laptop_first = [f"C-lap-{n}" for n in range(10)]
    usage_first = [f"C-use-{n}" for n in range(10)]
    documents: list[dict[str, Any]] = []
    documents += [
        purchase(customer=customer_block(c), at=NOW - timedelta(minutes=30)) for c in laptop_first
    ]
    documents += [
        purchase(
            customer=customer_block(c), category="books", price="20.00", at=NOW - timedelta(days=9)
        )
        for c in usage_first
    ]
    documents += [_usage_drop(c, NOW - timedelta(minutes=20)) for c in laptop_first + usage_first]
    documents += [
        purchase(customer=customer_block(c), at=NOW - timedelta(minutes=10)) for c in usage_first
    ]
    # C-seq-*: a camera enrolls them in the post-purchase journey (a sequence); their
    # next purchases in the same batch are observed by it, and a second camera finds
    # them enrolled already.
    journey = [f"C-seq-{n}" for n in range(5)]
    for minutes, category, price in ((50, "cameras", "800.00"), (40, "books", "20.00")):
        documents += [
            purchase(
                customer=customer_block(c),
                sku=f"SKU-{category}",
                category=category,
                price=price,
                at=NOW - timedelta(minutes=minutes),
            )
            for c in journey
        ]
    documents += [
        purchase(
            customer=customer_block(c), sku="SKU-cameras-2", category="cameras", price="700.00"
        )
        for c in journey
    ]
    documents.append(documents[0])
    return [validate_event(document) for document in documents]


def _plan_of(
    url: str,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What the database holds, without row ids (numbered differently by the two paths):
    sends, events' outcomes, sequence enrollments."""
    with transaction(url) as session:
        enrollments = sorted(
            (
                row.campaign_id,
                row.customer_id,
                row.entry_event_id,
                row.status,
                row.exit_reason,
                row.purchased_since_entry,
                tuple(row.categories_since_entry),
            )
            for row in session.execute(
                select(
                    Enrollment.campaign_id,
                    Enrollment.customer_id,
                    Enrollment.entry_event_id,
                    Enrollment.status,
                    Enrollment.exit_reason,
                    Enrollment.purchased_since_entry,
                    Enrollment.categories_since_entry,
                )
            )
        )
        sends = sorted(
            (row.event_id, row.campaign_id, row.status, row.reason, row.send_at)
            for row in session.execute(
                select(Send.event_id, Send.campaign_id, Send.status, Send.reason, Send.send_at)
            )
        )
        outcomes = sorted(
            (
                row.event_id,
                sorted((k, re.sub(r":\d+$", ":<id>", str(v))) for k, v in row.outcome.items()),
            )
            for row in session.execute(select(Event.event_id, Event.outcome))
        )
    return sends, outcomes, enrollments


def test_a_batch_plans_what_the_events_one_at_a_time_plan(
    tmp_path: Path, database_url: str
) -> None:
    events = _mixed_batch()
    one_by_one = f"sqlite:///{tmp_path / 'one-by-one.db'}"
    upgrade(one_by_one)
    # A gap longer than the time between the two emails, whatever the send windows.
    batch_runtime = Runtime(
        make_settings(tmp_path / "batch", database_url=database_url, min_gap="3d")
    )
    single_runtime = Runtime(
        make_settings(tmp_path / "single", database_url=one_by_one, min_gap="3d")
    )
    try:
        for runtime in (batch_runtime, single_runtime):
            seed_catalog(runtime.settings, NOW)
        rules = batch_runtime.rules.current()
        with transaction(database_url) as session:
            results = ingest_batch(session, events, rules, batch_runtime.policy, NOW)
        for event in events:
            with transaction(one_by_one) as session:
                ingest_event(session, event, rules, single_runtime.policy, NOW)

        assert [result.duplicate for result in results] == [False] * (len(events) - 1) + [True]
        batch_plan = _plan_of(database_url)
        assert batch_plan == _plan_of(one_by_one)

        sends, _, enrollments = batch_plan
        assert enrollments  # the post-purchase journey: sequences are in the batch too
        by_customer: dict[str, dict[str, tuple[str, str | None]]] = {}
        customer_of = {event.id: event.customer.id for event in events}
        for event_id, campaign_id, status, reason, _ in sends:
            by_customer.setdefault(customer_of[event_id], {})[campaign_id] = (status, reason)
        gave_way = displaced = 0
        for customer_id, plan in by_customer.items():
            if plan.get("laptop-accessories") != ("planned", None):
                continue  # held out: no email, no spacing
            # Whichever came first in the batch, the lower-priority email is not sent
            # within the gap of the laptop one.
            assert plan["usage-drop-bundle"] in {("skipped", "min_gap"), ("held_out", "holdout")}
            if plan["usage-drop-bundle"] == ("skipped", "min_gap"):
                if customer_id.startswith("C-lap-"):
                    gave_way += 1
                else:
                    displaced += 1
        assert gave_way and displaced
    finally:
        batch_runtime.close()
        single_runtime.close()
        dispose_engines()


def test_a_batch_stores_its_offers_in_one_statement(tmp_path: Path, database_url: str) -> None:
    """Every planned or held-out send of a batch has its offer row, written on PostgreSQL
    by one statement of one parameter set whatever the number of sends (an executemany
    made one server statement per send: docs/performance.md, "Offers in one statement")."""
    runtime = Runtime(make_settings(tmp_path, database_url=database_url, min_gap="3d"))
    offer_inserts: list[int] = []

    def record(
        _connection: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO SEND_OFFERS"):
            offer_inserts.append(len(parameters) if many else 1)

    engine = engine_for(database_url)
    try:
        seed_catalog(runtime.settings, NOW)
        event.listen(engine, "before_cursor_execute", record)
        try:
            with transaction(database_url) as session:
                ingest_batch(session, _mixed_batch(), runtime.rules.current(), runtime.policy, NOW)
        finally:
            event.remove(engine, "before_cursor_execute", record)
        with transaction(database_url) as session:
            offered = set(
                session.scalars(
                    select(Send.id).where(
                        Send.status.in_(["planned", "held_out"]), Send.step_id.is_(None)
                    )
                )
            )
            stored = set(session.scalars(select(SendOffer.send_id)))
        assert len(offered) > 3
        assert offered <= stored
        # SQLite runs an executemany in process (no round trip per row); PostgreSQL gets
        # one statement for the batch.
        assert offer_inserts == ([1] if database_url.startswith("postgresql") else [len(stored)])
    finally:
        runtime.close()
        dispose_engines()


def test_a_batch_writes_each_event_row_once(tmp_path: Path, database_url: str) -> None:
    """Each stored event is inserted with its outcome and never updated after: an
    ``UPDATE events`` of the outcomes wrote every row twice (docs/performance.md, "Each
    event's row written once"). What the rows hold is checked against the one-by-one path
    in ``test_a_batch_plans_what_the_events_one_at_a_time_plan``."""
    runtime = Runtime(make_settings(tmp_path, database_url=database_url, min_gap="3d"))
    statements: list[str] = []

    def record(
        _connection: Any, _cursor: Any, statement: str, _parameters: Any, _context: Any, _many: bool
    ) -> None:
        statements.append(" ".join(statement.split()).upper())

    def writes_to_events() -> list[str]:
        return [
            sql.split()[0]
            for sql in statements
            if sql.startswith(("INSERT INTO EVENTS ", "UPDATE EVENTS "))
        ]

    engine = engine_for(database_url)
    events = _mixed_batch()
    try:
        seed_catalog(runtime.settings, NOW)
        event.listen(engine, "before_cursor_execute", record)
        try:
            with transaction(database_url) as session:
                ingest_batch(session, events, runtime.rules.current(), runtime.policy, NOW)
            assert writes_to_events() == ["INSERT"]
            statements.clear()
            # The same batch again (a redelivery after a crash): read, nothing locked or
            # written.
            with transaction(database_url) as session:
                again = ingest_batch(session, events, runtime.rules.current(), runtime.policy, NOW)
            assert all(result.duplicate for result in again)
            assert [sql for sql in statements if "FOR UPDATE" in sql] == []
            assert [sql for sql in statements if sql.startswith(("INSERT", "UPDATE"))] == []
        finally:
            event.remove(engine, "before_cursor_execute", record)
        with transaction(database_url) as session:
            outcomes = {
                row.event_id: row.outcome
                for row in session.execute(select(Event.event_id, Event.outcome))
            }
        assert len(outcomes) == len({e.id for e in events})
        assert all(outcomes.values())  # every event was decided for some campaign
    finally:
        runtime.close()
        dispose_engines()


def _hold_a_batch(
    database_url: str, runtime: Runtime, events: list[AnyEvent]
) -> tuple[threading.Event, threading.Event, threading.Thread]:
    """Ingest ``events`` in a thread and keep its transaction open until released:
    (stored, release, thread)."""
    stored, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction(database_url) as session:
            ingest_batch(session, events, runtime.rules.current(), runtime.policy, NOW)
            stored.set()
            release.wait(30)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert stored.wait(30)
    return stored, release, thread


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("same_customer", [True, False], ids=["same-customer", "other-customer"])
def test_two_consumers_given_one_event_plan_it_once(
    tmp_path: Path, database_url: str, same_customer: bool
) -> None:
    """Two consumers get the same event id at once (a redelivery to a second consumer,
    or a producer that reused an id for another customer). The second waits for the
    first's commit (on the customer's lock, or on the event id's) and stores the event as
    a duplicate, its batch's other events as usual; nothing is planned twice and no
    customer is created for the duplicate."""
    runtime = Runtime(make_settings(tmp_path, database_url=database_url, min_gap="3d"))
    suffix = uuid.uuid4().hex[:8]
    original = purchase(customer=customer_block(f"C-first-{suffix}"))
    # The reused id's other event: another customer's, another order.
    reused = {
        **original,
        "customer": customer_block(f"C-copy-{suffix}"),
        "data": {**original["data"], "order_id": f"O-copy-{suffix}"},
    }
    copy = original if same_customer else reused
    other = purchase(customer=customer_block(f"C-other-{suffix}"))
    counted_before = _sends_counted()
    try:
        seed_catalog(runtime.settings, NOW)
        _, release, holder = _hold_a_batch(database_url, runtime, [validate_event(original)])
        second: list[consumer_module.Handled] = []
        racer = threading.Thread(
            target=lambda: second.extend(handle_bodies(runtime, [as_json(copy), as_json(other)])),
            daemon=True,
        )
        racer.start()
        try:
            racer.join(1.0)
            assert racer.is_alive(), "the second consumer did not wait for the first's commit"
        finally:
            release.set()
        holder.join(30)
        racer.join(30)
        assert [(h.outcome, h.event_id) for h in second] == [
            ("duplicate", original["id"]),
            ("stored", other["id"]),
        ]
        with transaction(database_url) as session:
            planned = session.execute(
                select(Send.event_id, func.count()).group_by(Send.event_id)
            ).all()
            customers = set(session.scalars(text("SELECT id FROM customers")))
        assert {row[0]: row[1] for row in planned} == {original["id"]: 1, other["id"]: 1}
        assert f"C-copy-{suffix}" not in customers
        # The racer's batch was rolled back and stored again one event at a time: what
        # it planned the first time is not counted (crosssell_sends_total).
        assert _sends_counted() - counted_before == 2
    finally:
        runtime.close()
        dispose_engines()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_batch_after_the_tables_grew_unanalyzed_reads_no_table_whole(
    tmp_path: Path, database_url: str
) -> None:
    """Batches plan their statements for the tables as they are now: after the
    connection has run the batch's statements often enough to keep generic plans (made
    while the tables were nearly empty), and the tables then grew with no ``ANALYZE``
    (autovacuum off), a batch still reads ``customers``, ``sends`` and ``events`` by
    index, not whole (``pg_stat_xact_user_tables``: this transaction's scans)."""
    runtime = Runtime(make_settings(tmp_path, database_url=database_url))
    rules = runtime.rules.current()

    def batch() -> list[AnyEvent]:
        return [
            validate_event(purchase(customer=customer_block(f"C-grow-{uuid.uuid4().hex[:8]}")))
            for _ in range(3)
        ]

    try:
        seed_catalog(runtime.settings, NOW)
        # psycopg prepares a statement at its sixth run, PostgreSQL weighs a generic plan
        # after five custom ones: 15 batches leave generic plans made for small tables.
        for _ in range(15):
            with transaction(database_url) as session:
                ingest_batch(session, batch(), rules, runtime.policy, NOW)
        with engine_for(database_url).begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO customers (id, email, email_marketing, attributes,"
                    " orders_count, lifetime_spend, categories_bought, skus_owned,"
                    " created_at, updated_at)"
                    " SELECT 'C-bulk-' || n, 'bulk' || n || '@example.com', true, '{}', 0, 0,"
                    " '[]', '[]', now(), now() FROM generate_series(1, 30000) AS n"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO sends (campaign_id, kind, customer_id, event_id, status,"
                    " dedupe_key, attempts, claims, created_at, updated_at)"
                    " SELECT 'bulk', 'cross_sell', 'C-bulk-' || n, 'evt-bulk-' || n, 'sent',"
                    " 'bulk|' || n, 1, 0, now(), now() FROM generate_series(1, 30000) AS n"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO events (event_id, type, customer_id, occurred_at,"
                    " received_at, payload, outcome)"
                    " SELECT 'evt-bulk-' || n, 'purchase', 'C-bulk-' || n, now(), now(),"
                    " '{}', '{}' FROM generate_series(1, 30000) AS n"
                )
            )
        scans = text(
            "SELECT relname, seq_scan FROM pg_stat_xact_user_tables"
            " WHERE relname IN ('customers', 'sends', 'events')"
        )
        with transaction(database_url) as session:
            # PostgreSQL 15 reports a backend's counts not yet flushed to the shared
            # statistics (at most once a second, when idle) in these views too: the
            # earlier batches' scans of the small tables may still be there. The batch's
            # own scans are the difference, read in its transaction.
            before = dict(session.execute(scans).all())
            ingest_batch(session, batch(), rules, runtime.policy, NOW)
            after = dict(session.execute(scans).all())
    finally:
        runtime.close()
        dispose_engines()
    whole = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert whole == {"customers": 0, "sends": 0, "events": 0}


# --- each message keeps its own fate ------------------------------------------------------


@pytest.fixture(scope="module")
def short_names_postgres() -> Iterator[str]:
    """A migrated PostgreSQL database that refuses first names over 3 characters (a
    DataError, SQLSTATE 22001): a value validation cannot see, as a column mismatch
    would be in production."""
    with fresh_postgres_database() as url:
        upgrade(url)
        with engine_for(url).begin() as connection:
            connection.execute(
                text("ALTER TABLE customers ALTER COLUMN first_name TYPE varchar(3)")
            )
        dispose_engines()
        yield url


def _short(customer_id: str) -> dict[str, Any]:
    return purchase(customer=customer_block(customer_id, first_name="Ana"))


def _stored(url: str, *event_ids: str) -> int:
    with transaction(url) as session:
        count = session.scalar(
            select(func.count()).select_from(Event).where(Event.event_id.in_(event_ids))
        )
    return int(count or 0)


def _sends_counted() -> float:
    """``crosssell_sends_total`` over all its labels."""
    return sum(
        sample.value
        for metric in SENDS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def test_bad_and_refused_messages_are_dead_lettered_alone(
    tmp_path: Path, short_names_postgres: str
) -> None:
    url = short_names_postgres
    runtime = Runtime(make_settings(tmp_path, database_url=url), clock=ShiftedClock(NOW))
    first, second = _short(f"C-{uuid.uuid4().hex[:8]}"), _short(f"C-{uuid.uuid4().hex[:8]}")
    refused = purchase(customer=customer_block(f"C-{uuid.uuid4().hex[:8]}", first_name="Ștefan"))
    bodies: list[object] = [
        as_json(first),
        b"{not json",
        as_json(refused),
        as_json(second),
        as_json(first),
    ]
    counted_before = _sends_counted()
    try:
        handled = handle_bodies(runtime, bodies)
    finally:
        runtime.close()
    # The batch's transaction was rolled back (at the customers' write, before it planned
    # anything) and its events stored again one by one, the refused one in a savepoint
    # rolled back: the sends count as their rows exist. (The race test above is the
    # one whose batch had planned sends before it rolled back.)
    with transaction(url) as session:
        planned = session.scalar(
            select(func.count())
            .select_from(Send)
            .where(Send.customer_id.in_([first["customer"]["id"], second["customer"]["id"]]))
        )
    assert planned
    assert _sends_counted() - counted_before == planned
    assert [(h.outcome, h.code) for h in handled] == [
        ("stored", ""),
        ("dead_letter", "not_json"),
        ("dead_letter", "storage_refused"),
        ("stored", ""),
        ("duplicate", ""),
    ]
    assert "22001" in handled[2].reason
    assert "Ștefan" not in handled[2].reason
    assert _stored(url, first["id"], second["id"]) == 2
    assert _stored(url, refused["id"]) == 0


# --- on RabbitMQ: requeue on an outage, ack only after the commit -------------------------


def _publish(settings: Settings, *documents: dict[str, Any]) -> None:
    url = settings.resolved_events_url
    with Connection(url, transport_options=transport_options(url)) as connection:
        producer = Producer(connection.channel(), exchange=events_exchange(settings))
        events_queue(settings)(producer.channel).declare()
        for document in documents:
            producer.publish(
                as_json(document),
                routing_key=document["type"],
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
            )


def _delete_queues(settings: Settings) -> None:
    with Connection(settings.resolved_events_url) as connection:
        channel = connection.default_channel
        channel.queue_delete(settings.events_queue)
        channel.queue_delete(settings.dead_letter_queue)
        channel.exchange_delete(settings.events_exchange)


@contextmanager
def _consuming(settings: Settings) -> Iterator[EventConsumer]:
    consumers: list[EventConsumer] = []
    thread = threading.Thread(
        target=run_consumer, args=(Runtime(settings), consumers.append), daemon=True
    )
    thread.start()
    _wait_for(lambda: bool(consumers), 15)
    try:
        yield consumers[0]
    finally:
        consumers[0].should_stop = True
        thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture
def outage_postgres(private_postgres: PrivatePostgres) -> Iterator[str]:
    """A migrated database on this module's own PostgreSQL cluster, whose every insert
    into ``events`` kills its own connection (counting each time in a sequence, which no
    rollback undoes): the database is lost in the middle of every batch until the test
    drops the trigger. Private, so that no connection of the machine's server is cut."""
    try:
        with _outage_database(private_postgres.admin_url) as url:
            yield url
    finally:
        dispose_engines()


@contextmanager
def _outage_database(admin_url: str) -> Iterator[str]:
    with fresh_postgres_database(admin_url=admin_url) as url:
        upgrade(url)
        with engine_for(url).begin() as connection:
            connection.execute(text("CREATE SEQUENCE outages"))
            connection.execute(
                text(
                    "CREATE FUNCTION lose_connection() RETURNS trigger AS $$ BEGIN "
                    "PERFORM nextval('outages'); PERFORM pg_terminate_backend(pg_backend_pid()); "
                    "RETURN NULL; END $$ LANGUAGE plpgsql"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER outage BEFORE INSERT ON events "
                    "FOR EACH STATEMENT EXECUTE FUNCTION lose_connection()"
                )
            )
        yield url


def _outages(url: str) -> int:
    with engine_for(url).connect() as connection:
        called = connection.execute(text("SELECT last_value, is_called FROM outages")).one()
    return int(called.last_value) if called.is_called else 0


def test_a_database_lost_mid_batch_requeues_the_whole_batch(
    tmp_path: Path, outage_postgres: str
) -> None:
    url = outage_postgres
    settings = make_settings(
        tmp_path, database_url=url, events_url=require_rabbitmq(), ingest_linger=0.5
    )
    documents = [_short(f"C-{uuid.uuid4().hex[:8]}") for _ in range(5)]
    ids = [document["id"] for document in documents]
    try:
        with _consuming(settings) as consumer:
            _publish(settings, *documents)
            _wait_for(lambda: _outages(url) >= 2)  # the batch was tried, lost, tried again
            assert _stored(url, *ids) == 0
            assert consumer.stats == {"accepted": 0, "duplicate": 0, "dead_lettered": 0}
            with engine_for(url).begin() as connection:
                connection.execute(text("DROP TRIGGER outage ON events"))
            _wait_for(lambda: _stored(url, *ids) == 5)
            _wait_for(lambda: consumer.stats["accepted"] == 5)
            assert consumer.stats == {"accepted": 5, "duplicate": 0, "dead_lettered": 0}
    finally:
        _delete_queues(settings)


def test_a_consumer_that_dies_after_the_commit_leaves_a_duplicate_not_a_second_plan(
    tmp_path: Path, postgres_url: str
) -> None:
    """The message is taken and stored, then the consumer's connection ends before the
    ack (as when the process dies there): the broker delivers it again, and the next
    consumer finds it stored."""
    settings = make_settings(tmp_path, database_url=postgres_url, events_url=require_rabbitmq())
    seed_catalog(settings, NOW)
    document = purchase(customer=customer_block(f"C-{uuid.uuid4().hex[:8]}"))
    runtime = Runtime(settings, clock=ShiftedClock(NOW))
    try:
        _publish(settings, document)
        url = settings.resolved_events_url
        with Connection(url, transport_options=transport_options(url)) as connection:
            queue = events_queue(settings)(connection.default_channel)
            message = None
            while message is None:
                message = queue.get(no_ack=False)
            [handled] = handle_bodies(runtime, [message.body])
            assert handled.outcome == "stored"
            # The connection closes here with the message unacknowledged.
        with transaction(postgres_url) as session:
            planned = session.scalar(
                select(func.count()).select_from(Send).where(Send.event_id == document["id"])
            )
        assert planned == 1
        with _consuming(settings) as consumer:
            _wait_for(lambda: consumer.stats["duplicate"] == 1)
            assert consumer.stats == {"accepted": 0, "duplicate": 1, "dead_lettered": 0}
        with transaction(postgres_url) as session:
            again = session.scalar(
                select(func.count()).select_from(Send).where(Send.event_id == document["id"])
            )
        assert again == 1
        assert _stored(postgres_url, document["id"]) == 1
    finally:
        runtime.close()
        _delete_queues(settings)


@pytest.mark.parametrize("batch_size", [1, 3, 8, 200, 500, 10_000])
def test_a_burst_after_a_quiet_moment_starts_with_small_batches(batch_size: int) -> None:
    """The batch limit after a quiet moment is an eighth of CROSSSELL_INGEST_BATCH (at
    least 1), doubles with each batch that filled it, never passes the setting, and a
    steady stream cut by the linger keeps room to grow: the linger, not the limit, cuts."""
    first = next_batch_limit(0, batch_size)
    assert first == max(1, batch_size // 8)
    limits, limit = [first], first
    while limit < batch_size:
        limit = next_batch_limit(limit, batch_size)
        limits.append(limit)
    assert limits[-1] == batch_size
    assert all(later == min(2 * earlier, batch_size) for earlier, later in pairwise(limits))
    assert next_batch_limit(batch_size, batch_size) == batch_size
    for cut in range(1, batch_size + 1, max(1, batch_size // 7)):  # batches the linger cut
        assert next_batch_limit(cut, batch_size) >= min(2 * cut, batch_size)
        assert next_batch_limit(cut, batch_size) >= first


def test_a_waiting_queue_is_stored_in_growing_batches_over_rabbitmq(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 events waiting when the consumer starts, CROSSSELL_INGEST_BATCH 16: the first
    batch is stored after 2 of them (its events can be planned and sent while the rest
    arrive), then 4, 8, 16, and the 10 left when the linger ends; each event once."""
    settings = make_settings(
        tmp_path,
        database_url=postgres_url,
        events_url=require_rabbitmq(),
        ingest_batch=16,
        ingest_linger=1.0,  # batches here end by their size, the last by the linger
    )
    seed_catalog(settings, NOW)
    sizes: list[int] = []
    real_store = consumer_module.store_parsed

    def recorded(runtime: Runtime, parsed: list[consumer_module.Parsed]) -> list[Any]:
        sizes.append(len(parsed))
        return real_store(runtime, parsed)

    monkeypatch.setattr(consumer_module, "store_parsed", recorded)
    documents = [_short(f"C-{uuid.uuid4().hex[:8]}") for _ in range(40)]
    try:
        _publish(settings, *documents)
        with _consuming(settings) as consumer:
            _wait_for(lambda: consumer.stats["accepted"] == 40)
        assert sizes == [2, 4, 8, 16, 10]
        assert _stored(postgres_url, *(document["id"] for document in documents)) == 40
    finally:
        _delete_queues(settings)


def test_a_duplicate_with_other_content_is_reported_and_an_exact_one_is_not(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A redelivery repeats an event exactly and is dropped quietly. An event under a
    known id with other content (a CRM reusing ids) is dropped too, the first one
    standing, but with a warning naming the id: in the same batch, and against the
    stored event in a later one."""
    runtime = Runtime(make_settings(tmp_path, database_url=database_url))
    seed_catalog(runtime.settings, NOW)
    rules = runtime.rules.current()
    first = purchase("evt-reused", customer=customer_block("C-reuse"), price="100.00")
    changed = purchase("evt-reused", customer=customer_block("C-reuse"), price="250.00")
    other = purchase("evt-exact", customer=customer_block("C-exact"))
    events = [validate_event(document) for document in (first, other, changed, first, other)]

    def warned() -> list[str]:
        return [
            record.getMessage()
            for record in caplog.records
            if record.levelname == "WARNING"
            and "duplicate with other content" in record.getMessage()
        ]

    with caplog.at_level("WARNING", logger="worker.intake.ingest"):
        with transaction(database_url) as session:
            results = ingest_batch(session, events, rules, runtime.policy, NOW)
        assert [result.duplicate for result in results] == [False, False, True, True, True]
        assert warned() == [
            "event evt-reused: a duplicate with other content was dropped; the event first"
            " received under this id stands (does the CRM reuse event ids?)"
        ]
        caplog.clear()
        with transaction(database_url) as session:  # a later batch, against the stored ones
            again = [validate_event(document) for document in (first, other, changed)]
            results = ingest_batch(session, again, rules, runtime.policy, NOW)
        assert [result.duplicate for result in results] == [True, True, True]
        assert len(warned()) == 1 and "evt-reused" in warned()[0]
    with transaction(database_url) as session:
        stored = session.scalars(select(Event).where(Event.event_id == "evt-reused")).one()
        assert stored.payload["data"]["total"] == "100.00", "the first one stands"
    # After a forget request the stored copy keeps the customer's id only: an exact
    # redelivery of the event is still quiet.
    from worker.records.privacy import forget_customer

    with transaction(database_url) as session:
        assert forget_customer(session, "C-reuse", b"k" * 32, NOW) is not None
    caplog.clear()
    with caplog.at_level("WARNING", logger="worker.intake.ingest"):
        with transaction(database_url) as session:
            results = ingest_batch(session, [validate_event(first)], rules, runtime.policy, NOW)
        assert results[0].duplicate and warned() == []


def test_the_log_line_names_an_email_another_event_already_planned(
    tmp_path: Path, database_url: str
) -> None:
    """An email whose dedupe key another send holds is not planned again (here the first
    send was skipped, so the decision does not see it in the history and the key
    decides): the log line says ``already_planned:<id>`` as the stored outcome does, not
    ``planned``."""
    runtime = Runtime(make_settings(tmp_path, database_url=database_url), clock=ShiftedClock(NOW))
    customer = customer_block(f"C-twice-{uuid.uuid4().hex[:8]}")
    first = purchase(customer=customer, at=NOW - timedelta(minutes=40))
    second = purchase(customer=customer, at=NOW - timedelta(minutes=20))
    try:
        seed_catalog(runtime.settings, NOW)
        [one] = handle_bodies(runtime, [as_json(first)])
        with transaction(database_url) as session:
            session.execute(
                update(Send)
                .where(Send.event_id == first["id"])
                .values(status="skipped", reason="forgotten")
            )
        [two] = handle_bodies(runtime, [as_json(second)])
        with transaction(database_url) as session:
            stored = session.scalar(select(Event.outcome).where(Event.event_id == second["id"]))
        assert stored is not None
        taken = stored["laptop-accessories"]
        assert str(taken).startswith("already_planned:")
        assert f"laptop-accessories: {taken}" in two.decided
        assert "laptop-accessories: already_planned" not in one.decided
    finally:
        runtime.close()
        dispose_engines()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_consumers_with_reused_ids_wait_for_each_other_instead_of_deadlocking(
    tmp_path: Path, database_url: str
) -> None:
    """Two batches hold the same event and order ids in opposite orders, for other
    customers (a producer that reuses ids, two consumers). Their rows go in key order, so
    the second waits for the first and is refused (then stored one by one, as
    duplicates) instead of both ending in a deadlock that PostgreSQL breaks after a second.
    Both batches reach their orders' insert together (a barrier in the statement hook)."""
    runtime = Runtime(make_settings(tmp_path, database_url=database_url), clock=ShiftedClock(NOW))
    suffix = uuid.uuid4().hex[:8]
    ids = [f"evt-reused-{suffix}-{n}" for n in range(2)]

    def batch(side: str) -> list[AnyEvent]:
        events = [
            validate_event(purchase(ids[n], customer=customer_block(f"C-{side}{n}-{suffix}")))
            for n in range(2)
        ]
        return events if side == "a" else events[::-1]

    barrier = threading.Barrier(2, timeout=15)
    waited: set[int] = set()

    def meet(
        _connection: Any, _cursor: Any, statement: str, _parameters: Any, _context: Any, _many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO ORDERS") and (
            threading.get_ident() not in waited
        ):
            waited.add(threading.get_ident())
            barrier.wait()

    failures: dict[str, str] = {}

    def ingest(side: str) -> None:
        try:
            with transaction(database_url) as session:
                ingest_batch(session, batch(side), runtime.rules.current(), runtime.policy, NOW)
        except Exception as exc:
            failures[side] = f"{type(exc).__name__}: {exc}"

    engine = engine_for(database_url)
    try:
        seed_catalog(runtime.settings, NOW)
        event.listen(engine, "before_cursor_execute", meet)
        try:
            threads = [threading.Thread(target=ingest, args=(side,)) for side in "ab"]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        finally:
            event.remove(engine, "before_cursor_execute", meet)
        assert not any("deadlock" in failure.lower() for failure in failures.values()), failures
        assert len(failures) == 1, failures  # the second to insert, refused on the order key
        with transaction(database_url) as session:
            stored = session.scalar(
                select(func.count()).select_from(Event).where(Event.event_id.in_(ids))
            )
        assert stored == 2
    finally:
        runtime.close()
        dispose_engines()


class _DriverError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__("driver error")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "logged"),
    [
        ("40P01", "the database rolled a batch back (SQLSTATE 40P01, a deadlock"),
        ("40001", "the database rolled a batch back (SQLSTATE 40001, a serialization failure"),
        ("08006", "database unavailable, 3 events requeued"),
        (None, "database unavailable, 3 events requeued"),
    ],
)
def test_a_requeue_says_whether_the_database_was_down_or_rolled_the_batch_back(
    caplog: pytest.LogCaptureFixture, sqlstate: str | None, logged: str
) -> None:
    """A deadlock or a serialization failure is requeued like an outage, but reported as
    what it is: "database unavailable" sent operators looking for an outage."""
    from sqlalchemy.exc import OperationalError

    error = OperationalError("INSERT …", {}, _DriverError(sqlstate))
    with caplog.at_level("WARNING", logger="worker.intake.consumer"):
        consumer_module._log_requeue(error, 3)
    [record] = caplog.records
    assert record.getMessage().startswith(logged)
