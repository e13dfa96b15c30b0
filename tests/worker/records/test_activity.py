"""Activity out: events written with the change they report, published with confirms to
a real RabbitMQ, never twice by one process, and free of personal data."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from sqlalchemy import select, update

from tests.support.factories import TUESDAY_MORNING, customer_block
from tests.support.services import require_rabbitmq
from tests.worker.end_to_end.test_pipeline import (
    _close_runtimes,
    _dispatch,
    _planned_send,
    _runtime,
)
from worker.core.clock import ShiftedClock
from worker.core.db import transaction
from worker.core.models import ActivityOutbox, ConsentRecord, Customer, Send
from worker.outbox.delivery import deliver_send
from worker.process.runtime import Runtime
from worker.records.activity import (
    ActivityPublisher,
    activity_id,
    prune_activity,
    record_activity,
)
from worker.web.web import unsubscribe_customer
from worker.webhooks.apply import apply_events
from worker.webhooks.events import TrackingEvent

__all__ = ["_close_runtimes"]  # the autouse fixture that closes the runtimes made here


def _outbox(url: str) -> list[ActivityOutbox]:
    with transaction(url) as session:
        return list(session.scalars(select(ActivityOutbox).order_by(ActivityOutbox.id)))


def _sent(runtime: Runtime, name: str) -> Send:
    send_id = _planned_send(runtime, name)
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    assert _dispatch(runtime) == [send_id]
    assert deliver_send(runtime, send_id) == "sent"
    with transaction(runtime.settings.resolved_database_url) as session:
        send = session.get(Send, send_id)
    assert send is not None
    return send


def test_each_change_records_its_activity_in_the_same_transaction(
    tmp_path: Path, database_url: str
) -> None:
    runtime = _runtime(tmp_path, database_url)
    send = _sent(runtime, "C-act")
    with transaction(database_url) as session:
        customer = session.get(Customer, send.customer_id)
        assert customer is not None and customer.email is not None
        address = customer.email
    bounce_at = TUESDAY_MORNING + timedelta(hours=4)
    complaint_at = TUESDAY_MORNING + timedelta(hours=5)
    now = TUESDAY_MORNING + timedelta(hours=6)
    with transaction(database_url) as session:
        apply_events(
            session,
            [
                TrackingEvent(
                    "postmark", "b-1", "bounced", address, bounce_at, "hard", send.message_id
                ),
                TrackingEvent(
                    "postmark", "c-1", "complained", address, complaint_at, None, send.message_id
                ),
            ],
            now,
        )
    assert unsubscribe_customer(runtime, send.customer_id, "one-click")

    rows = _outbox(database_url)
    by_type = {row.type: row for row in rows}
    assert sorted(by_type) == ["complained", "email_bounced", "email_sent", "unsubscribed"]
    assert len(rows) == 4
    assert by_type["email_sent"].activity_id == f"email_sent:send-{send.id}"
    assert by_type["email_sent"].occurred_at == send.sent_at
    assert by_type["email_sent"].data["campaign_id"] == send.campaign_id
    assert by_type["email_bounced"].activity_id == f"email_bounced:send-{send.id}"
    assert by_type["email_bounced"].occurred_at == bounce_at
    with transaction(database_url) as session:
        records = list(
            session.scalars(
                select(ConsentRecord)
                .where(ConsentRecord.customer_id == send.customer_id, ~ConsentRecord.granted)
                .order_by(ConsentRecord.id)
            )
        )
    complaint, unsubscribe = records[-2:]
    assert by_type["complained"].activity_id == f"complained:consent-{complaint.id}"
    assert by_type["complained"].occurred_at == complaint.decided_at == complaint_at
    assert by_type["complained"].data["changed"] is True
    assert by_type["unsubscribed"].activity_id == f"unsubscribed:consent-{unsubscribe.id}"
    assert by_type["unsubscribed"].occurred_at == unsubscribe.decided_at
    assert by_type["unsubscribed"].data["changed"] is False  # the complaint withdrew it
    assert all(row.customer_id == send.customer_id for row in rows)
    block = customer_block(send.customer_id)
    text = json.dumps([row.data for row in rows], ensure_ascii=False)
    for personal in (address, block["first_name"], block["last_name"]):
        assert personal not in text


def test_a_rolled_back_change_leaves_no_activity(tmp_path: Path, database_url: str) -> None:
    runtime = _runtime(tmp_path, database_url)
    send_id = _planned_send(runtime, "C-rollback")
    with (
        pytest.raises(RuntimeError, match="rolled back"),
        transaction(database_url) as session,
    ):
        record_activity(session, "converted", "C-x", {"send_id": send_id}, TUESDAY_MORNING)
        raise RuntimeError("rolled back")
    assert _outbox(database_url) == []


def test_recording_the_same_fact_twice_keeps_one_row(tmp_path: Path, database_url: str) -> None:
    _runtime(tmp_path, database_url)
    data = {"order_id": "O-1", "revenue": "12.30", "send_id": 4}
    with transaction(database_url) as session:
        first = record_activity(session, "converted", "C-1", data, TUESDAY_MORNING)
    with transaction(database_url) as session:
        again = record_activity(session, "converted", "C-1", dict(data), TUESDAY_MORNING)
    assert first == again
    assert [row.activity_id for row in _outbox(database_url)] == [first]


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.floats(allow_nan=False)
)
_data = st.dictionaries(st.text(min_size=1, max_size=10), _scalars, max_size=6)


@given(data=_data, other=_data)
def test_a_content_id_depends_on_the_content_not_on_key_order(
    data: dict[str, Any], other: dict[str, Any]
) -> None:
    reordered = dict(reversed(list(data.items())))
    assert activity_id("converted", "C-1", data, TUESDAY_MORNING) == activity_id(
        "converted", "C-1", reordered, TUESDAY_MORNING
    )
    same = json.dumps(data, sort_keys=True) == json.dumps(other, sort_keys=True)
    assert (
        activity_id("converted", "C-1", data, TUESDAY_MORNING)
        == activity_id("converted", "C-1", other, TUESDAY_MORNING)
    ) == same
    assert activity_id("converted", "C-1", data, TUESDAY_MORNING) != activity_id(
        "converted", "C-2", data, TUESDAY_MORNING
    )


@pytest.mark.parametrize(
    ("kind", "data", "error"),
    [
        ("opened", {}, ValueError),
        ("converted", {"items": ["a", "b"]}, TypeError),
        ("converted", {"customer": {"email": "x"}}, TypeError),
    ],
)
def test_unknown_types_and_nested_data_are_refused(
    tmp_path: Path, database_url: str, kind: str, data: dict[str, Any], error: type[Exception]
) -> None:
    _runtime(tmp_path, database_url)
    with pytest.raises(error), transaction(database_url) as session:
        record_activity(session, kind, "C-1", data, TUESDAY_MORNING)


# --- publishing to the real RabbitMQ ------------------------------------------------------


@pytest.fixture
def bound_queue() -> Iterator[tuple[str, Queue]]:
    """An own exchange and a queue bound to it with ``#``, deleted afterwards."""
    url = require_rabbitmq()
    suffix = uuid.uuid4().hex[:8]
    exchange = Exchange(f"crosssell.activity.test.{suffix}", type="topic", durable=True)
    queue = Queue(f"activity.test.{suffix}", exchange=exchange, routing_key="#", durable=True)
    with Connection(url) as connection:
        queue(connection.default_channel).declare()
    yield url, queue
    with Connection(url) as connection:
        channel = connection.default_channel
        queue(channel).delete()
        exchange(channel).delete()


def _drain(url: str, queue: Queue) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Every message in the queue: (routing key, body, properties), acknowledged."""
    got = []
    with Connection(url) as connection:
        bound = queue(connection.default_channel)
        while (message := bound.get(no_ack=True)) is not None:
            got.append(
                (
                    message.delivery_info["routing_key"],
                    json.loads(message.body),
                    dict(message.properties),
                )
            )
    return got


def test_published_after_the_broker_confirms_and_only_once(
    tmp_path: Path, postgres_url: str, bound_queue: tuple[str, Queue]
) -> None:
    from tests.conftest import _truncate

    _truncate(postgres_url)
    url, queue = bound_queue
    assert queue.exchange is not None
    runtime = _runtime(
        tmp_path,
        postgres_url,
        events_url=url,
        activity_publish=True,
        activity_exchange=queue.exchange.name,
    )
    send = _sent(runtime, "C-pub")
    converted_at = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
    with transaction(postgres_url) as session:
        converted = record_activity(
            session,
            "converted",
            send.customer_id,
            {"send_id": send.id, "order_id": "O-9", "revenue": "49.90", "currency": "EUR"},
            converted_at,
        )
    publisher = ActivityPublisher(runtime.settings, batch=1)
    try:
        assert publisher.publish_pending() == 1
        assert publisher.publish_pending() == 1
        assert publisher.publish_pending() == 0
    finally:
        publisher.close()
    messages = _drain(url, queue)
    assert [key for key, _, _ in messages] == ["email_sent", "converted"]
    sent_body = messages[0][1]
    assert sent_body == {
        "id": f"email_sent:send-{send.id}",
        "type": "email_sent",
        "occurred_at": send.sent_at.isoformat() if send.sent_at else None,
        "customer": {"id": send.customer_id},
        "data": sent_body["data"],
    }
    assert datetime.fromisoformat(sent_body["occurred_at"]) == send.sent_at
    assert messages[1][1]["id"] == converted
    assert datetime.fromisoformat(messages[1][1]["occurred_at"]) == converted_at
    assert messages[1][1]["data"]["revenue"] == "49.90"
    assert [props.get("message_id") for _, _, props in messages] == [
        f"email_sent:send-{send.id}",
        converted,
    ]
    assert all(row.published_at is not None for row in _outbox(postgres_url))
    _truncate(postgres_url)


def test_a_failed_mark_is_retried_without_publishing_again(
    tmp_path: Path,
    postgres_url: str,
    bound_queue: tuple[str, Queue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.conftest import _truncate

    _truncate(postgres_url)
    url, queue = bound_queue
    assert queue.exchange is not None
    runtime = _runtime(
        tmp_path,
        postgres_url,
        events_url=url,
        activity_publish=True,
        activity_exchange=queue.exchange.name,
    )
    with transaction(postgres_url) as session:
        for number in range(3):
            record_activity(
                session, "converted", f"C-{number}", {"order_id": f"O-{number}"}, TUESDAY_MORNING
            )
    publisher = ActivityPublisher(runtime.settings)
    original = ActivityPublisher._mark
    calls = {"n": 0}

    def flaky(session: Any, ids: set[int]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("the database went away after the confirms")
        original(session, ids)

    monkeypatch.setattr(ActivityPublisher, "_mark", staticmethod(flaky))
    try:
        with pytest.raises(ConnectionError):
            publisher.publish_pending()
        assert all(row.published_at is None for row in _outbox(postgres_url))
        assert publisher.publish_pending() == 0  # marked now, nothing published again
    finally:
        publisher.close()
    assert all(row.published_at is not None for row in _outbox(postgres_url))
    assert len(_drain(url, queue)) == 3
    _truncate(postgres_url)


def test_pruning_keeps_what_still_waits_for_the_broker(tmp_path: Path, database_url: str) -> None:
    runtime = _runtime(tmp_path, database_url, activity_publish=True, activity_retention="1d")
    with transaction(database_url) as session:
        for number in range(3):
            record_activity(session, "converted", "C-1", {"n": number}, TUESDAY_MORNING)
    old = datetime.now(UTC) - timedelta(days=2)
    with transaction(database_url) as session:
        session.execute(update(ActivityOutbox).values(created_at=old))
        session.execute(
            update(ActivityOutbox)
            .where(ActivityOutbox.data["n"].as_integer() == 0)
            .values(published_at=old)
        )
    now = datetime.now(UTC)
    assert prune_activity(runtime.settings, now) == 1  # only the published one
    assert len(_outbox(database_url)) == 2
    off = runtime.settings.model_copy(update={"activity_publish": False})
    assert prune_activity(off, now) == 2  # publishing off: nothing would publish them
    assert _outbox(database_url) == []


def test_the_dispatch_loop_publishes_what_a_change_recorded(
    tmp_path: Path, postgres_url: str, bound_queue: tuple[str, Queue]
) -> None:
    import threading
    import time

    from tests.conftest import _truncate
    from worker.records.activity import start_activity_publisher

    _truncate(postgres_url)
    url, queue = bound_queue
    assert queue.exchange is not None
    runtime = _runtime(
        tmp_path,
        postgres_url,
        events_url=url,
        activity_publish=True,
        activity_exchange=queue.exchange.name,
        dispatch_interval=0.1,
    )
    stop = threading.Event()
    thread = start_activity_publisher(runtime.settings, stop)
    try:
        with transaction(postgres_url) as session:
            key = record_activity(session, "converted", "C-7", {"order_id": "O-7"}, TUESDAY_MORNING)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(
            row.published_at for row in _outbox(postgres_url)
        ):
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert [body["id"] for _, body, _ in _drain(url, queue)] == [key]
    _truncate(postgres_url)
