"""Every provider's own retries of a webhook must get through our freshness checks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from tests.worker.webhooks.signed import (
    MAILGUN_KEY,
    MAILGUN_PERMANENT_FAILURE,
    NOW,
    POSTMARK_HARD_BOUNCE,
    SendGridSigner,
    SnsSigner,
    basic_auth,
    mailgun_body,
    sendgrid_event,
    ses_bounce,
    ses_parse,
    sns_notification,
)
from worker.webhooks import mailgun, postmark, sendgrid
from worker.webhooks.events import TrackingEvent

# How long each provider keeps retrying a webhook that got no 2xx, from its own
# documentation (stated independently of the modules' constants):
#   Mailgun   "during 8 hours" (5, 10, 15 min, 1, 2, 4 h)  mailgun webhook-retries page
#   Postmark  10 retries "over roughly 10.5 hours"         Postmark support: webhook retries
#   SendGrid  "up to 24 hours after the event occurs"      SendGrid Event Webhook troubleshooting
#   SNS       total HTTP/S retry time at most 3,600 s       AWS SNS message delivery retries
DOCUMENTED_RETRY_WINDOW = {
    "mailgun": timedelta(hours=8),
    "postmark": timedelta(hours=10, minutes=30),
    "sendgrid": timedelta(hours=24),
    "ses": timedelta(seconds=3600),
}


AGES = [timedelta(0), timedelta(minutes=10), timedelta(hours=1), timedelta(hours=8)]


# Every provider and every age it still retries at, plus the last moment of its window.
FRESHNESS_TABLE = [
    (provider, age)
    for provider, window in sorted(DOCUMENTED_RETRY_WINDOW.items())
    for age in sorted({*(age for age in AGES if age <= window), window})
]


def _signed_at(provider: str, sent_at: datetime, sns: SnsSigner) -> list[TrackingEvent]:
    """One correctly authenticated request of ``provider`` first signed at ``sent_at``,
    parsed at ``NOW``."""
    iso = sent_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    if provider == "mailgun":
        body = mailgun_body(MAILGUN_PERMANENT_FAILURE, signed_at=sent_at)
        return mailgun.parse({}, body, signing_key=MAILGUN_KEY, now=NOW)
    if provider == "postmark":
        body = json.dumps({**POSTMARK_HARD_BOUNCE, "BouncedAt": iso}).encode()
        return postmark.parse(basic_auth("hooks", "pw"), body, username="hooks", password="pw")
    if provider == "sendgrid":
        signer = SendGridSigner()
        stamp = str(int(sent_at.timestamp()))
        body = json.dumps([sendgrid_event("bounce", type="bounce", timestamp=int(stamp))]).encode()
        headers = signer.headers(body, timestamp=stamp)
        return sendgrid.parse(headers, body, public_key=signer.verification_key)
    message = ses_bounce("Permanent", [{"emailAddress": "john@example.com", "status": "5.1.1"}])
    result = ses_parse(sns.sign({**sns_notification(message), "Timestamp": iso}), sns)
    assert isinstance(result, list)
    return result


@pytest.mark.parametrize(
    ("provider", "age"),
    FRESHNESS_TABLE,
    ids=[f"{provider}-{age.total_seconds() / 60:g}min" for provider, age in FRESHNESS_TABLE],
)
def test_signed_requests_are_accepted_for_as_long_as_the_provider_retries(
    provider: str, age: timedelta, sns: SnsSigner
) -> None:
    """Before: Mailgun refused any signature older than 5 minutes, so a request retried
    after 10 minutes — or after our own outage — was lost."""
    assert len(_signed_at(provider, NOW - age, sns)) == 1
