"""Mailgun webhooks (the current JSON ones: ``{"signature": …, "event-data": …}``).

Mailgun puts the signature in the body: ``signature.signature`` is the hex
HMAC-SHA256, keyed with the account's HTTP webhook signing key, of
``signature.timestamp + signature.token`` (documentation.mailgun.com/docs/mailgun/
user-manual/webhooks/securing-webhooks). Mailgun also recommends refusing timestamps
too far from the current time, so a captured request cannot be replayed later: we
refuse a skew of more than ``tolerance`` (5 minutes) either way.

``event-data.id`` is documented as unique only within a day, so the de-duplication id
joins it with the event's own timestamp, which stays the same on every retry.
Answering 406 tells Mailgun not to retry a request (help.mailgun.com, Webhooks).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

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
DEFAULT_TOLERANCE = timedelta(minutes=5)

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
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> None:
    """Raise :class:`WebhookRejected` unless Mailgun signed this request recently."""
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
    if signed_at is None or abs(now - signed_at) > tolerance:
        raise WebhookRejected(f"Mailgun signature timestamp {timestamp} is stale")


def parse(
    headers: Mapping[str, str],
    body: bytes,
    *,
    signing_key: str,
    now: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> list[TrackingEvent]:
    """Verify the signature and its age, then turn ``event-data`` into a neutral event."""
    del headers  # Mailgun authenticates in the body; the headers prove nothing.
    payload = load_json(body, WebhookRejected)
    verify(payload, signing_key, now, tolerance)
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise WebhookPayloadError("Mailgun webhook without event-data")
    return [_event(data)]


def _event(data: dict[str, Any]) -> TrackingEvent:
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
        event_id=(
            f"{event_id}@{data.get('timestamp')}"
            if isinstance(event_id, str) and event_id
            else fingerprint(data)
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
