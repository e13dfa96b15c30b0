"""Mailgun webhooks: HMAC-SHA256(signing key, timestamp + token), fresh timestamps only."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.worker.webhooks.signed import MAILGUN_KEY, MAILGUN_PERMANENT_FAILURE, NOW, mailgun_body
from worker.webhooks import mailgun
from worker.webhooks.events import WebhookRejected


def test_mailgun_accepts_a_fresh_signature() -> None:
    token = "e0b5477167110d68991efc6b9f89f0a11066af27834600e123"
    body = mailgun_body(MAILGUN_PERMANENT_FAILURE, NOW - timedelta(minutes=4), token=token)
    [event] = mailgun.parse({}, body, signing_key=MAILGUN_KEY, now=NOW)
    assert event.kind == "bounced" and event.bounce_type == "hard" and not event.policy
    assert event.recipient == "john@example.com"
    assert event.message_id == "<20261117102900.1.5D6D5D6D5D6D5D6D@mg.shop.example>"
    # The de-duplication id is the signature's token: the only part of a request that the
    # signature binds and that no other request carries.
    assert event.event_id == f"token:{token}"
    assert event.also_ids == ("G9Bn5sl1TC6nu79C8C0bwg@1795516140.108236",)


@pytest.mark.parametrize(
    ("signed_at", "key"),
    [
        (NOW, "key-wrong"),
        (NOW - timedelta(hours=9, minutes=1), MAILGUN_KEY),
        (NOW - timedelta(days=3), MAILGUN_KEY),
        (NOW + timedelta(minutes=10), MAILGUN_KEY),
    ],
    ids=["wrong-key", "past-mailguns-retry-window", "days-old", "from-the-future"],
)
def test_mailgun_rejects_bad_or_stale_signatures(signed_at: datetime, key: str) -> None:
    body = mailgun_body(MAILGUN_PERMANENT_FAILURE, signed_at=signed_at, key=key)
    with pytest.raises(WebhookRejected):
        mailgun.parse({}, body, signing_key=MAILGUN_KEY, now=NOW)


@settings(max_examples=60, deadline=None)
@given(age=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=8)))
def test_mailgun_accepts_any_signature_age_inside_its_retry_window(age: timedelta) -> None:
    """Mailgun retries "during 8 hours" with the first attempt's signature."""
    body = mailgun_body(MAILGUN_PERMANENT_FAILURE, signed_at=NOW - age)
    assert len(mailgun.parse({}, body, signing_key=MAILGUN_KEY, now=NOW)) == 1


@settings(max_examples=30, deadline=None)
@given(age=st.timedeltas(min_value=timedelta(hours=9), max_value=timedelta(days=3650)))
def test_mailgun_refuses_signatures_older_than_any_retry(age: timedelta) -> None:
    body = mailgun_body(MAILGUN_PERMANENT_FAILURE, signed_at=NOW - age)
    with pytest.raises(WebhookRejected):
        mailgun.parse({}, body, signing_key=MAILGUN_KEY, now=NOW)


def test_mailgun_rejects_a_tampered_body_and_unsigned_requests() -> None:
    body = mailgun_body(MAILGUN_PERMANENT_FAILURE)
    tampered = json.loads(body)
    tampered["signature"]["token"] = "x" * 50
    for candidate in (json.dumps(tampered).encode(), b"not json", b'{"event-data": {}}'):
        with pytest.raises(WebhookRejected):
            mailgun.parse({}, candidate, signing_key=MAILGUN_KEY, now=NOW)


@pytest.mark.parametrize(
    ("changes", "kind", "bounce_type", "policy"),
    [
        ({"severity": "temporary", "reason": "generic"}, "deferred", None, False),
        ({"reason": "suppress-unsubscribe"}, "rejected", None, False),
        (
            {"delivery-status": {"code": 550, "message": "5.7.26 Unauthenticated email"}},
            "bounced",
            "hard",
            True,
        ),
        ({"event": "complained"}, "complained", None, False),
        ({"event": "unsubscribed"}, "unsubscribed", None, False),
        ({"event": "delivered"}, "delivered", None, False),
    ],
    ids=["temporary", "suppressed-elsewhere", "policy", "complained", "unsubscribed", "delivered"],
)
def test_mailgun_event_kinds(
    changes: dict[str, Any], kind: str, bounce_type: str | None, policy: bool
) -> None:
    body = mailgun_body({**MAILGUN_PERMANENT_FAILURE, **changes})
    [event] = mailgun.parse({}, body, signing_key=MAILGUN_KEY, now=NOW)
    assert (event.kind, event.bounce_type, event.policy) == (kind, bounce_type, policy)
