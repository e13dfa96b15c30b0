"""Postmark webhooks: HTTP Basic auth configured in the webhook URL, record types."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.worker.webhooks.signed import POSTMARK_HARD_BOUNCE, basic_auth
from worker.webhooks import postmark
from worker.webhooks.events import WebhookRejected


def test_postmark_accepts_the_configured_credentials() -> None:
    body = json.dumps(POSTMARK_HARD_BOUNCE).encode()
    [event] = postmark.parse(
        basic_auth("hooks", "s3cret:with-colon"),
        body,
        username="hooks",
        password="s3cret:with-colon",
    )
    assert event.kind == "bounced" and event.bounce_type == "hard" and not event.policy
    assert event.recipient == "john@example.com"
    assert event.provider_message_id == "883953f4-6105-42a2-a16a-77a8eac79483"
    assert event.event_id == "Bounce:42"
    assert event.timestamp == datetime(2026, 11, 17, 10, 29, 54, 907025, tzinfo=UTC)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic_auth("hooks", "wrong"),
        basic_auth("other", "s3cret"),
        {"Authorization": "Bearer s3cret"},
        {"Authorization": "Basic not*base64"},
    ],
    ids=["missing", "wrong-password", "wrong-user", "not-basic", "garbage"],
)
def test_postmark_rejects_wrong_or_missing_credentials(headers: dict[str, str]) -> None:
    with pytest.raises(WebhookRejected):
        postmark.parse(
            headers, json.dumps(POSTMARK_HARD_BOUNCE).encode(), username="hooks", password="s3cret"
        )


def test_postmark_without_configured_credentials_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="not configured"):
        postmark.parse(basic_auth("", ""), b"{}", username="", password="")


@pytest.mark.parametrize(
    ("record", "kind", "bounce_type", "policy"),
    [
        (
            {**POSTMARK_HARD_BOUNCE, "Type": "SoftBounce", "TypeCode": 4096},
            "bounced",
            "soft",
            False,
        ),
        ({**POSTMARK_HARD_BOUNCE, "Type": "Transient", "TypeCode": 2}, "deferred", None, False),
        ({**POSTMARK_HARD_BOUNCE, "Type": "Blocked", "TypeCode": 100006}, "rejected", None, True),
        (
            {**POSTMARK_HARD_BOUNCE, "RecordType": "SpamComplaint", "Type": "SpamComplaint"},
            "complained",
            None,
            False,
        ),
        (
            {
                "RecordType": "Delivery",
                "ServerID": 23,
                "MessageStream": "outbound",
                "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
                "Recipient": "john@example.com",
                "DeliveredAt": "2026-11-17T10:29:00Z",
                "Details": "Test delivery webhook details",
            },
            "delivered",
            None,
            False,
        ),
        (
            {
                "RecordType": "SubscriptionChange",
                "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
                "ServerID": 23,
                "MessageStream": "outbound",
                "ChangedAt": "2026-11-17T10:29:00.416071Z",
                "Recipient": "john@example.com",
                "Origin": "Recipient",
                "SuppressSending": True,
                "SuppressionReason": "ManualSuppression",
            },
            "unsubscribed",
            None,
            False,
        ),
        (
            {
                "RecordType": "SubscriptionChange",
                "ServerID": 23,
                "ChangedAt": "2026-11-17T10:29:00Z",
                "Recipient": "john@example.com",
                "Origin": "Customer",
                "SuppressSending": False,
                "SuppressionReason": None,
            },
            "other",
            None,
            False,
        ),
    ],
    ids=["soft", "transient", "blocked", "complaint", "delivery", "unsubscribe", "reactivated"],
)
def test_postmark_record_types(
    record: dict[str, Any], kind: str, bounce_type: str | None, policy: bool
) -> None:
    body = json.dumps(record).encode()
    headers = basic_auth("hooks", "s3cret")
    [event] = postmark.parse(headers, body, username="hooks", password="s3cret")
    assert (event.kind, event.bounce_type, event.policy) == (kind, bounce_type, policy)
    assert event.recipient == "john@example.com"
    # Records without an ID are identified by their content: a retry has the same id.
    [again] = postmark.parse(headers, body, username="hooks", password="s3cret")
    assert again.event_id == event.event_id
