"""Any authenticated payload gives events or a webhook error, never anything else."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.worker.webhooks.signed import (
    MAILGUN_KEY,
    NOW,
    SendGridSigner,
    SnsSigner,
    mailgun_body,
    ses_parse,
    sns_notification,
)
from worker.webhooks import mailgun, sendgrid
from worker.webhooks.events import TrackingEvent, WebhookError

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)


MAILGUN_FIELDS = [
    "event",
    "id",
    "timestamp",
    "severity",
    "reason",
    "recipient",
    "message",
    "delivery-status",
    "reject",
]


SENDGRID_FIELDS = [
    "event",
    "email",
    "timestamp",
    "type",
    "status",
    "reason",
    "response",
    "sg_event_id",
    "sg_message_id",
    "smtp-id",
]


SENDGRID_SIGNER = SendGridSigner()


SES_FIELDS = [
    "notificationType",
    "eventType",
    "mail",
    "bounce",
    "complaint",
    "delivery",
    "deliveryDelay",
]


@settings(max_examples=150, deadline=None)
@given(data=st.dictionaries(st.sampled_from(MAILGUN_FIELDS), JSON_VALUES, max_size=9))
def test_any_signed_mailgun_event_data_is_read_or_refused_cleanly(data: dict[str, Any]) -> None:
    try:
        events = mailgun.parse({}, mailgun_body(data), signing_key=MAILGUN_KEY, now=NOW)
    except WebhookError:
        return
    assert all(isinstance(event, TrackingEvent) for event in events)


@settings(max_examples=150, deadline=None)
@given(
    batch=st.lists(
        st.dictionaries(st.sampled_from(SENDGRID_FIELDS), JSON_VALUES, max_size=10), max_size=3
    )
    | JSON_VALUES
)
def test_any_signed_sendgrid_batch_is_read_or_refused_cleanly(batch: Any) -> None:
    signer = SENDGRID_SIGNER  # one key for all examples: key generation is the slow part
    body = json.dumps(batch).encode()
    try:
        events = sendgrid.parse(signer.headers(body), body, public_key=signer.verification_key)
    except WebhookError:
        return
    assert all(isinstance(event, TrackingEvent) for event in events)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(notification=st.dictionaries(st.sampled_from(SES_FIELDS), JSON_VALUES, max_size=7))
def test_any_signed_ses_notification_is_read_or_refused_cleanly(
    sns: SnsSigner, notification: dict[str, Any]
) -> None:
    try:
        result = ses_parse(sns.sign(sns_notification(notification)), sns)
    except WebhookError:
        return
    assert isinstance(result, list) and all(isinstance(e, TrackingEvent) for e in result)
