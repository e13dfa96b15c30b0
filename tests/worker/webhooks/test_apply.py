"""Applying webhook events: suppression, sends, consent — each exactly once.

``worker.webhooks.apply`` and ``store`` are imported inside the database tests only:
importing them registers the ``webhook_events`` table with ``Base.metadata``, and until
its migration exists that would make ``alembic check`` (test_migrations) and the
PostgreSQL truncation in ``conftest.database_url`` see a table the database lacks. The
database tests create the table themselves with ``__table__.create(checkfirst=True)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import pytest
from sqlalchemy import Table, select

from worker.core.db import engine_for, transaction
from worker.core.models import Customer, Send, Suppression
from worker.email.mime import message_id_for
from worker.webhooks import sendgrid
from worker.webhooks.events import TrackingEvent

if TYPE_CHECKING:
    from worker.webhooks.apply import ApplyReport
from tests.worker.webhooks.signed import (
    NOW,
    SendGridSigner,
    SnsSigner,
    sendgrid_event,
    ses_bounce,
    ses_parse,
    sns_notification,
)


@dataclass(frozen=True)
class Seeded:
    url: str
    send_id: int
    message_id: str


def _webhook_table() -> Table:
    from worker.records.webhook_events import WebhookEvent

    return cast(Table, WebhookEvent.__table__)


@pytest.fixture
def webhook_table(request: pytest.FixtureRequest) -> None:
    """Create ``webhook_events`` on the session's PostgreSQL *before* ``database_url``
    truncates every table of ``Base.metadata`` (which now includes it). Needed only
    until the table has its migration."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("database_url") == "postgresql":
        url = str(request.getfixturevalue("postgres_url"))
        _webhook_table().create(engine_for(url), checkfirst=True)


@pytest.fixture
def db(webhook_table: None, database_url: str) -> Seeded:
    """A customer with consent and one ``sent`` send; the webhook table created here
    because its migration does not exist yet."""
    _webhook_table().create(engine_for(database_url), checkfirst=True)
    with transaction(database_url) as session:
        session.add(
            Customer(
                id="C-1",
                email="John@Example.com",
                email_marketing=True,
                attributes={},
                created_at=NOW - timedelta(days=30),
                updated_at=NOW - timedelta(days=30),
            )
        )
        session.flush()
        send = Send(
            campaign_id="tent-accessories",
            kind="cross_sell",
            customer_id="C-1",
            event_id="evt-1",
            status="sent",
            dedupe_key="tent-accessories:C-1:2026-11",
            created_at=NOW - timedelta(hours=1),
            updated_at=NOW - timedelta(hours=1),
            sent_at=NOW - timedelta(hours=1),
            provider="sendgrid",
            provider_message_id="14c5d75ce93",
        )
        session.add(send)
        session.flush()
        send.message_id = message_id_for(send.id, "shop.example", b"k" * 32)
        return Seeded(database_url, send.id, send.message_id)


def _apply(url: str, events: list[TrackingEvent]) -> ApplyReport:
    from worker.webhooks.apply import apply_events

    with transaction(url) as session:
        return apply_events(session, events, NOW)


def _state(url: str) -> dict[str, Any]:
    from worker.records.webhook_events import WebhookEvent

    with transaction(url) as session:
        send = session.scalars(select(Send)).one()
        customer = session.get(Customer, "C-1")
        assert customer is not None
        return {
            "send": (send.status, send.reason, send.detail, send.updated_at),
            "consent": (customer.email_marketing, customer.updated_at),
            "suppressions": [
                (s.email, s.reason, s.source) for s in session.scalars(select(Suppression))
            ],
            "recorded": sorted(
                (e.provider, e.event_id, e.kind) for e in session.scalars(select(WebhookEvent))
            ),
        }


def _event(seeded: Seeded, **fields: Any) -> TrackingEvent:
    base = TrackingEvent(
        provider="postmark",
        event_id="Bounce:1",
        kind="bounced",
        recipient="john@example.com",
        timestamp=NOW - timedelta(minutes=1),
        bounce_type="hard",
        message_id=seeded.message_id,
        description="550 5.1.1 no such user",
    )
    return replace(base, **fields)


def test_hard_bounce_suppresses_and_fails_the_send_once(db: Seeded) -> None:
    event = _event(db)
    first = _apply(db.url, [event])
    assert (first.applied, first.duplicates) == (1, 0)
    assert first.suppressed == ["john@example.com"] and first.failed_sends == [db.send_id]
    after_first = _state(db.url)
    assert after_first["send"][:2] == ("failed", "hard_bounce")
    assert after_first["suppressions"] == [("john@example.com", "hard_bounce", "webhook:postmark")]
    assert after_first["consent"][0] is True

    again = _apply(db.url, [event])
    assert (again.applied, again.duplicates) == (0, 1)
    assert _state(db.url) == after_first


def test_complaint_suppresses_and_withdraws_consent(db: Seeded) -> None:
    report = _apply(db.url, [_event(db, kind="complained", bounce_type=None, event_id="c-1")])
    state = _state(db.url)
    assert state["suppressions"] == [("john@example.com", "complaint", "webhook:postmark")]
    assert state["consent"] == (False, NOW)
    assert state["send"][0] == "sent"  # it was delivered; the complaint came after
    assert report.consent_withdrawn == ["C-1"]


def test_complaint_about_an_unknown_message_finds_the_customer_by_address(db: Seeded) -> None:
    _apply(db.url, [_event(db, kind="complained", bounce_type=None, message_id=None)])
    assert _state(db.url)["consent"][0] is False


@pytest.mark.parametrize("kind", ["bounced", "deferred", "delivered", "rejected"])
def test_soft_failures_and_deliveries_are_recorded_only(db: Seeded, kind: str) -> None:
    event = _event(db, kind=kind, bounce_type="soft" if kind == "bounced" else None)
    report = _apply(db.url, [event])
    state = _state(db.url)
    assert state["suppressions"] == []
    assert state["send"][0] == "sent"
    assert state["recorded"] == [("postmark", "Bounce:1", kind)]
    assert report.kinds == {kind: 1}


def test_unsubscribe_suppresses(db: Seeded) -> None:
    _apply(db.url, [_event(db, kind="unsubscribed", bounce_type=None)])
    state = _state(db.url)
    assert state["suppressions"] == [("john@example.com", "unsubscribe", "webhook:postmark")]
    assert state["send"][0] == "sent"


def test_policy_refusal_alerts_instead_of_suppressing(
    db: Seeded, caplog: pytest.LogCaptureFixture
) -> None:
    report = _apply(db.url, [_event(db, policy=True, description="550 5.7.26 DMARC")])
    state = _state(db.url)
    assert state["suppressions"] == []
    assert state["send"][:2] == ("failed", "policy_rejected")
    assert report.policy_alerts == ["Bounce:1"]
    assert "OPERATOR" in caplog.text


def test_the_same_event_twice_in_one_batch_is_applied_once(db: Seeded) -> None:
    event = _event(db)
    report = _apply(db.url, [event, event])
    assert (report.received, report.applied, report.duplicates) == (2, 1, 1)
    assert len(_state(db.url)["recorded"]) == 1


def test_a_second_bounce_for_a_suppressed_address_changes_nothing_more(db: Seeded) -> None:
    _apply(db.url, [_event(db)])
    before = _state(db.url)
    report = _apply(db.url, [_event(db, provider="ses", event_id="sns-9/john@example.com")])
    after = _state(db.url)
    assert report.suppressed == [] and report.failed_sends == []
    assert after["suppressions"] == before["suppressions"]
    assert after["send"] == before["send"]


def test_long_provider_ids_are_stored_hashed(db: Seeded) -> None:
    from worker.webhooks.apply import storage_id

    long_id = "sns-1/" + "x" * 300 + "@example.com"
    assert storage_id(long_id).startswith("sha256:") and storage_id("short") == "short"
    for _ in range(2):
        _apply(db.url, [_event(db, kind="delivered", bounce_type=None, event_id=long_id)])
    assert len(_state(db.url)["recorded"]) == 1


def test_signed_sendgrid_retry_is_applied_once(db: Seeded) -> None:
    """End to end: a signed request parsed and applied, then SendGrid's retry of it."""
    signer = SendGridSigner()
    body = json.dumps(
        [sendgrid_event("bounce", type="bounce", status="5.1.1", **{"smtp-id": db.message_id})]
    ).encode()
    headers = signer.headers(body)
    reports = [
        _apply(db.url, sendgrid.parse(headers, body, public_key=signer.verification_key))
        for _ in range(2)
    ]
    assert [(r.applied, r.duplicates) for r in reports] == [(1, 0), (0, 1)]
    state = _state(db.url)
    assert state["send"][:2] == ("failed", "hard_bounce")
    assert state["suppressions"] == [("john@example.com", "hard_bounce", "webhook:sendgrid")]


def test_signed_ses_bounce_matches_the_send_by_provider_id(db: Seeded, sns: SnsSigner) -> None:
    message = ses_bounce("Permanent", [{"emailAddress": "john@example.com", "status": "5.1.1"}])
    message["mail"]["messageId"] = "14c5d75ce93"
    events = ses_parse(sns.sign(sns_notification(message)), sns)
    assert isinstance(events, list)
    report = _apply(db.url, events)
    assert report.failed_sends == [db.send_id]
