"""Ingest → plan → dispatch → deliver on a real database, with a real SMTP sink.

The deliver step calls the task's function directly (no Celery eager mode); the Celery
path itself is covered by the end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from tests.support.smtp_sink import SmtpSink
from triggers.events import validate_event
from worker.commands.demo import seed_catalog
from worker.core.clock import ShiftedClock
from worker.core.db import transaction
from worker.core.models import Customer, Event, Order, Send, Suppression
from worker.intake.ingest import ingest_event
from worker.outbox.delivery import deliver_send
from worker.outbox.dispatcher import dispatch_once
from worker.process.runtime import Runtime

_opened: list[Runtime] = []


@pytest.fixture(autouse=True)
def _close_runtimes() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def _runtime(tmp_path: Path, database_url: str, **overrides: object) -> Runtime:
    settings = make_settings(tmp_path, database_url=database_url, **overrides)
    runtime = Runtime(settings, clock=ShiftedClock(TUESDAY_MORNING))
    seed_catalog(settings, TUESDAY_MORNING)
    _opened.append(runtime)
    return runtime


def _ingest(runtime: Runtime, document: dict[str, object]) -> bool:
    with transaction(runtime.settings.resolved_database_url) as session:
        result = ingest_event(
            session,
            validate_event(document),
            runtime.rules.current(),
            runtime.policy,
            runtime.clock.now(),
        )
    return result.duplicate


def _dispatch(runtime: Runtime) -> list[int]:
    queued: list[int] = []

    def collect(ids: Sequence[int]) -> None:
        queued.extend(ids)

    dispatch_once(runtime, collect)
    return queued


def test_purchase_is_stored_once_and_planned_once(tmp_path: Path, database_url: str) -> None:
    runtime = _runtime(tmp_path, database_url)
    event = purchase()
    assert _ingest(runtime, event) is False
    assert _ingest(runtime, event) is True  # the same event id again: a no-op
    with transaction(database_url) as session:
        assert session.scalar(select(func.count()).select_from(Event)) >= 1
        stored = session.scalars(select(Event).where(Event.event_id == event["id"])).one()
        sends = session.scalars(select(Send).where(Send.event_id == event["id"])).all()
        customer = session.get(Customer, "C-1001")
        order = session.get(Order, f"O-{event['id']}")
    assert customer is not None and customer.first_name == "Ștefan"
    assert customer.orders_count == 1 and customer.lifetime_spend == Decimal("999.00")
    assert order is not None and order.total == Decimal("999.00")
    assert len(sends) == 1
    assert sends[0].campaign_id == "laptop-accessories"
    # Every active purchase campaign is accounted for: fired, or why not.
    active = runtime.rules.current().active_for("purchase")
    assert set(stored.outcome) == {compiled.id for compiled in active}


def test_upsert_keeps_fields_the_event_does_not_give(tmp_path: Path, database_url: str) -> None:
    runtime = _runtime(tmp_path, database_url)
    _ingest(runtime, purchase(customer=customer_block("C-7")))
    _ingest(runtime, purchase(customer={"id": "C-7", "first_name": "Ana"}))
    with transaction(database_url) as session:
        customer = session.get(Customer, "C-7")
    assert customer is not None
    assert customer.first_name == "Ana"
    assert customer.email == "c-7@example.ro"
    assert customer.orders_count == 2


def test_no_consent_is_recorded_as_a_skip(tmp_path: Path, database_url: str) -> None:
    runtime = _runtime(tmp_path, database_url)
    event = purchase(customer=customer_block("C-9", consent={"email_marketing": False}))
    _ingest(runtime, event)
    with transaction(database_url) as session:
        send = session.scalars(select(Send).where(Send.event_id == event["id"])).one()
    assert (send.status, send.reason) == ("skipped", "no_consent")


def _planned_send(runtime: Runtime, customer_id: str) -> int:
    # C-1 is held out of laptop-accessories by its hash; pick customers that are not.
    for suffix in range(50):
        event = purchase(customer=customer_block(f"{customer_id}-{suffix}"))
        _ingest(runtime, event)
        with transaction(runtime.settings.resolved_database_url) as session:
            send = session.scalars(select(Send).where(Send.event_id == event["id"])).one()
        if send.status == "planned":
            return send.id
    raise AssertionError("no customer outside the holdout in 50 tries")


def test_due_send_is_delivered_once_over_smtp(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=smtp_sink.port)
    send_id = _planned_send(runtime, "C-smtp")
    assert _dispatch(runtime) == []  # delay 2h from the event: not due yet at 10:30
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    queued = _dispatch(runtime)
    assert queued == [send_id]
    assert deliver_send(runtime, send_id) == "sent"
    assert deliver_send(runtime, send_id) == "not_claimed"  # a redelivered task does nothing
    messages = smtp_sink.handler.parsed()
    assert len(messages) == 1
    message = messages[0]
    assert message.get_content_type() == "multipart/alternative"
    assert str(message["To"]).startswith("Ștefan Rădulescu")
    assert "Ștefan" in str(message["Subject"])
    text = message.get_body(("plain",))
    # The customer is ro-RO: the product's Romanian name from the catalog (name.ro).
    assert text is not None and 'Husă pentru laptop de 14"' in text.get_content()
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    with transaction(database_url) as session:
        send = session.get(Send, send_id)
    assert send is not None and send.status == "sent"
    assert send.message_id == message["Message-ID"]
    # The Message-ID is on the sender's domain and shows no send id; internal campaign
    # ids stay out of the headers (an opaque Feedback-ID instead).
    sender_domain = runtime.settings.sender_address.rpartition("@")[2]
    assert message["Message-ID"].endswith(f"@{sender_domain}>")
    assert str(send_id) not in message["Message-ID"].partition("@")[0]
    assert "X-Crosssell-Campaign" not in message
    assert "laptop-accessories" not in str(message["Feedback-ID"])
    assert str(message["Feedback-ID"]).endswith(f":{runtime.settings.feedback_sender_id}")


def test_hard_bounce_fails_and_suppresses_without_retry(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=smtp_sink.port)
    send_id = _planned_send(runtime, "C-bounce")
    with transaction(database_url) as session:
        send = session.get(Send, send_id)
        assert send is not None
        address = session.get(Customer, send.customer_id).email  # type: ignore[union-attr]
    smtp_sink.handler.recipient_faults[address] = "550 5.1.1 No such user"
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    _dispatch(runtime)
    assert deliver_send(runtime, send_id) == "failed"
    with transaction(database_url) as session:
        send = session.get(Send, send_id)
        suppressed = session.get(Suppression, address.lower())
    assert send is not None and (send.status, send.reason) == ("failed", "hard_bounce")
    assert suppressed is not None and suppressed.reason == "hard_bounce"
    assert _dispatch(runtime) == []  # failed for good: never queued again


def test_transient_failure_is_rescheduled_with_backoff(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=smtp_sink.port)
    send_id = _planned_send(runtime, "C-retry")
    with transaction(database_url) as session:
        send = session.get(Send, send_id)
        assert send is not None
        address = session.get(Customer, send.customer_id).email  # type: ignore[union-attr]
    smtp_sink.handler.data_faults[address] = ["451 4.3.0 Try again later"]
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    _dispatch(runtime)
    before = runtime.clock.now()
    assert deliver_send(runtime, send_id) == "retry"
    with transaction(database_url) as session:
        send = session.get(Send, send_id)
    assert send is not None and send.status == "planned" and send.attempts == 1
    assert send.send_at is not None and send.send_at > before
    runtime.clock = ShiftedClock(send.send_at + timedelta(seconds=1))
    assert _dispatch(runtime) == [send_id]
    assert deliver_send(runtime, send_id) == "sent"
    assert len(smtp_sink.handler.messages) == 1


@pytest.mark.parametrize("status", ["queued"])
def test_lost_task_is_requeued_by_the_sweeper(
    tmp_path: Path, database_url: str, status: str
) -> None:
    runtime = _runtime(tmp_path, database_url)
    send_id = _planned_send(runtime, "C-lost")
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    assert _dispatch(runtime) == [send_id]  # ...and the broker loses the message
    with transaction(database_url) as session:
        assert session.get(Send, send_id).status == status  # type: ignore[union-attr]
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3, minutes=11))
    assert _dispatch(runtime) == [send_id]
    assert deliver_send(runtime, send_id) == "sent"
    assert list((runtime.settings.resolved_outbox_dir).glob("*.eml"))


def test_custom_attributes_keep_their_json_types(tmp_path: Path, database_url: str) -> None:
    runtime = _runtime(tmp_path, database_url)
    event = purchase(
        customer=customer_block(
            "C-attr", attributes={"score": Decimal("4.5"), "visits": 12, "tags": ["a"]}
        )
    )
    _ingest(runtime, event)
    with transaction(database_url) as session:
        customer = session.get(Customer, "C-attr")
    assert customer is not None
    assert customer.attributes["score"] == Decimal("4.5")
    assert customer.attributes["visits"] == 12
    assert customer.attributes["tags"] == ["a"]
