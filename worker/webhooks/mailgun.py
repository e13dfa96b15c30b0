"""Mailgun webhooks (the current JSON ones: ``{"signature": …, "event-data": …}``).

Mailgun puts the signature in the body: ``signature.signature`` is the hex
HMAC-SHA256, keyed with the account's HTTP webhook signing key, of
``signature.timestamp + signature.token`` (documentation.mailgun.com/docs/mailgun/
user-manual/webhooks/securing-webhooks).

Freshness follows Mailgun's retry schedule, not a guess. A request that does not get a
200 (or a 406) is retried "during 8 hours" after 5 min, 10 min, 15 min, 1 h, 2 h and
4 h (documentation.mailgun.com/docs/mailgun/user-manual/webhooks/webhook-retries), and
every retry carries the signature made for the first attempt. So a correctly signed
request up to :data:`MAX_SIGNATURE_AGE` old (the 8-hour window plus
:data:`CLOCK_SKEW`) is accepted; older ones, and timestamps more than ``CLOCK_SKEW``
in the future, are refused.

The signature covers the timestamp and the token, not ``event-data``: a signature block
captured from one request (a "delivered" one, say) verifies with any other event data
for those eight hours. Mailgun's answer is to remember tokens and refuse one seen
before (the "securing webhooks" page above). So the de-duplication id recorded in
``webhook_events`` (:mod:`worker.records.webhook_events`, kept longer than the window)
is the signature's token, and the event's own id besides (``event-data.id`` is unique
only within a day, so it is joined with the event's timestamp, which stays the same on
every retry): a retry is a duplicate by either, whether or not it is signed anew; a
reused signature with other event data is the same token, a duplicate too, and changes
nothing. A request that failed (the transaction rolled back) recorded nothing, so its
retry is applied.

Answering 406 tells Mailgun not to retry a request (help.mailgun.com, Webhooks).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import SecretStr

from worker.providers.registry import ProviderSettings, Webhook
from worker.webhooks.events import (
    BounceType,
    EventKind,
    TrackingEvent,
    WebhookPayloadError,
    WebhookRejected,
    enhanced_status,
    fingerprint,
    from_epoch,
    is_policy_status,
    load_json,
    normalize_email,
    normalize_message_id,
    text_or_none,
)

PROVIDER = "mailgun"
# Delays between Mailgun's attempts, from its "Automatic Retries" page (see above).
RETRY_SCHEDULE = (
    timedelta(minutes=5),
    timedelta(minutes=10),
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=2),
    timedelta(hours=4),
)
# "Mailgun will automatically retry ... during 8 hours": longer than the schedule's sum.
RETRY_WINDOW = max(timedelta(hours=8), sum(RETRY_SCHEDULE, timedelta()))
# How far our clock and Mailgun's may disagree, and how long a request may be in flight.
CLOCK_SKEW = timedelta(minutes=5)
MAX_SIGNATURE_AGE = RETRY_WINDOW + CLOCK_SKEW

_KINDS: dict[str, EventKind] = {
    "delivered": "delivered",
    "failed": "bounced",
    "complained": "complained",
    "unsubscribed": "unsubscribed",
    "rejected": "rejected",
}


def verify(
    payload: object,
    signing_key: str,
    now: datetime,
    max_age: timedelta = MAX_SIGNATURE_AGE,
) -> None:
    """Raise :class:`WebhookRejected` unless Mailgun signed this request.

    The signature may be up to ``max_age`` old (Mailgun's retries reuse it) and at most
    :data:`CLOCK_SKEW` in the future.
    """
    if not signing_key:
        raise ValueError("Mailgun webhook signing key is not configured")
    block = payload.get("signature") if isinstance(payload, dict) else None
    if not isinstance(block, dict):
        raise WebhookRejected("no Mailgun signature block")
    timestamp, token, signature = (block.get(k) for k in ("timestamp", "token", "signature"))
    if not isinstance(token, str) or not isinstance(signature, str):
        raise WebhookRejected("incomplete Mailgun signature block")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | str):
        raise WebhookRejected("Mailgun signature timestamp is missing")
    expected = hmac.new(
        signing_key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(signature.strip().lower().encode(), expected.encode()):
        raise WebhookRejected("Mailgun signature does not match")
    signed_at = from_epoch(timestamp)
    if signed_at is None or not (-CLOCK_SKEW <= now - signed_at <= max_age):
        shown = str(timestamp)[:20] + ("…" if len(str(timestamp)) > 20 else "")
        raise WebhookRejected(
            f"Mailgun signature timestamp {shown} is outside Mailgun's retry window"
        )


def parse(
    headers: Mapping[str, str],
    body: bytes,
    *,
    signing_key: str,
    now: datetime,
    max_age: timedelta = MAX_SIGNATURE_AGE,
) -> list[TrackingEvent]:
    """Verify the signature and its age, then turn ``event-data`` into a neutral event."""
    del headers  # Mailgun authenticates in the body; the headers prove nothing.
    payload = load_json(body, WebhookRejected)
    verify(payload, signing_key, now, max_age)
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise WebhookPayloadError("Mailgun webhook without event-data")
    return [_event(data, str(payload["signature"]["token"]))]


def _event(data: dict[str, Any], token: str) -> TrackingEvent:
    name = str(data.get("event", ""))
    kind = _KINDS.get(name, "other")
    bounce_type: BounceType | None = None
    policy = False
    status = data.get("delivery-status")
    delivery = status if isinstance(status, dict) else {}
    reason = str(data.get("reason") or "")
    description = text_or_none(delivery.get("description")) or text_or_none(delivery.get("message"))
    if name == "failed":
        if data.get("severity") == "permanent":
            if reason.startswith("suppress-") and reason != "suppress-bounce":
                # Not sent because the address is on another Mailgun suppression list
                # (unsubscribes, complaints): nothing new was learnt about the address.
                kind = "rejected"
            else:
                bounce_type = "hard"
                code = enhanced_status(
                    delivery.get("enhanced-code"), delivery.get("message"), description
                )
                policy = is_policy_status(code)
        else:
            # severity "temporary": Mailgun keeps retrying the delivery.
            kind = "deferred"
        description = "; ".join(
            part for part in (str(data.get("severity") or ""), reason, description or "") if part
        )[:1000]
    elif name == "rejected":
        reject = data.get("reject")
        if isinstance(reject, dict):
            description = text_or_none(reject.get("reason")) or description
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = normalize_message_id(
        headers.get("message-id") if isinstance(headers, dict) else None
    )
    event_id = data.get("id")
    # Mailgun's send API answers with the Message-ID it set, so it is both ids at once.
    return TrackingEvent(
        provider=PROVIDER,
        # One request, one event, one token (see the module); the event's own id too, in
        # case a retry comes with a token of its own, and for rows recorded before.
        event_id=f"token:{token}",
        also_ids=(
            f"{event_id}@{data.get('timestamp')}"
            if isinstance(event_id, str) and event_id
            else fingerprint(data),
        ),
        kind=kind,
        recipient=normalize_email(data.get("recipient")),
        timestamp=from_epoch(data.get("timestamp")),
        bounce_type=bounce_type,
        message_id=message_id,
        provider_message_id=message_id,
        description=description or None,
        policy=policy,
    )


class MailgunWebhookSettings(ProviderSettings):
    """The account's HTTP webhook signing key."""

    mailgun_webhook_signing_key: SecretStr | None = None


def _receive(
    settings: MailgunWebhookSettings, headers: Mapping[str, str], body: bytes, now: datetime
) -> list[TrackingEvent]:
    key = settings.mailgun_webhook_signing_key
    return parse(headers, body, signing_key=key.get_secret_value() if key else "", now=now)


WEBHOOK = Webhook(
    settings=MailgunWebhookSettings,
    configured=lambda settings: bool(settings.mailgun_webhook_signing_key),
    parse=_receive,
)
