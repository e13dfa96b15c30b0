"""Postmark webhooks: Bounce, SpamComplaint, Delivery and SubscriptionChange records.

Postmark does not sign its webhooks. Its documented protection is HTTP Basic auth put in
the webhook URL (``https://<user>:<password>@host/path``), so Postmark sends an
``Authorization: Basic …`` header that we compare, in constant time, with the configured
pair (postmarkapp.com/developer/webhooks/webhooks-overview, "Protecting your webhook").
Each request carries one record; its ``RecordType`` says which. Use URL-safe characters
(letters, digits, ``-_.~``) in both, so no percent-encoding stands between the URL
configured in Postmark and the pair configured here. Serve the route over HTTPS only:
Basic auth is a shared secret in every request.

Freshness: nothing in a Postmark request is signed with a time, so no age limit is
applied. Postmark retries a webhook that did not get a 200 for about 10.5 hours (ten
retries from 1 minute to 6 hours apart: postmarkapp.com/support/article/understanding-
inbound-webhook-retries-in-postmark), and a retry of a record already applied is
recognised by its id in ``webhook_events``.
"""

from __future__ import annotations

import base64
import binascii
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
    fingerprint,
    from_iso,
    header,
    json_text,
    load_json,
    normalize_email,
    text_or_none,
)

PROVIDER = "postmark"
# Postmark's documented retry span (see above); requests this old must still be accepted.
RETRY_WINDOW = timedelta(hours=10, minutes=30)

# Bounce "Type" (postmarkapp.com/developer/api/bounce-api, bounce types) → neutral kind.
# Transient ("Message delayed") and DnsError ("temporary DNS error") will be retried by
# Postmark, so they are deferrals; SoftBounce is a soft bounce; HardBounce and
# BadEmailAddress mean the address can never receive mail. Blocked and DMARCPolicy are
# refusals of *our* mail, not of the address: they go to the operator (policy).
_BOUNCE_TYPES: dict[str, tuple[EventKind, BounceType | None]] = {
    "HardBounce": ("bounced", "hard"),
    "BadEmailAddress": ("bounced", "hard"),
    "SoftBounce": ("bounced", "soft"),
    "VirusNotification": ("bounced", "soft"),
    "Transient": ("deferred", None),
    "DnsError": ("deferred", None),
    "Unsubscribe": ("unsubscribed", None),
    "SpamNotification": ("complained", None),
    "SpamComplaint": ("complained", None),
    "Blocked": ("rejected", None),
    "DMARCPolicy": ("rejected", None),
    "ManuallyDeactivated": ("rejected", None),
    "Unconfirmed": ("rejected", None),
}
_POLICY_TYPES = frozenset({"Blocked", "DMARCPolicy"})

# SubscriptionChange "SuppressionReason": an unsubscribe arrives as ManualSuppression.
_SUPPRESSION_REASONS: dict[str, tuple[EventKind, BounceType | None]] = {
    "HardBounce": ("bounced", "hard"),
    "SpamComplaint": ("complained", None),
    "ManualSuppression": ("unsubscribed", None),
}


def authenticate(headers: Mapping[str, str], username: str, password: str) -> None:
    """Raise :class:`WebhookRejected` unless the request carries the configured Basic auth."""
    if not username or not password:
        raise ValueError("Postmark webhook username and password are not configured")
    value = header(headers, "Authorization")
    if value is None:
        raise WebhookRejected("no Authorization header")
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        raise WebhookRejected("Authorization is not Basic")
    try:
        presented = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookRejected("Authorization is not valid base64") from exc
    expected = f"{username}:{password}".encode()
    # One comparison over "user:password": a timing difference cannot tell which part
    # was wrong, nor how much of it matched.
    if not hmac.compare_digest(presented, expected):
        raise WebhookRejected("wrong webhook credentials")


def parse(
    headers: Mapping[str, str], body: bytes, *, username: str, password: str
) -> list[TrackingEvent]:
    """Authenticate, then turn Postmark's single record into neutral events."""
    authenticate(headers, username, password)
    record = load_json(body)
    if not isinstance(record, dict):
        raise WebhookPayloadError("a Postmark webhook body is one JSON object")
    _check_types(record)
    return [_event(record)]


# The fields read from a record and the JSON types Postmark sends them as (its webhook
# documentation's examples); anything else is not Postmark's and is refused with a 400
# instead of being stored as a meaningless event.
_TEXT_FIELDS = (
    "RecordType", "MessageID", "Email", "Recipient", "Type", "Description", "Details",
    "BouncedAt", "DeliveredAt", "ChangedAt", "SuppressionReason", "MessageStream",
)  # fmt: skip


def _check_types(record: dict[str, Any]) -> None:
    if not isinstance(record.get("RecordType"), str):
        raise WebhookPayloadError("RecordType: must be a string")
    for name in _TEXT_FIELDS:
        if record.get(name) is not None and not isinstance(record[name], str):
            raise WebhookPayloadError(f"{name}: must be a string")
    if record.get("ID") is not None and not isinstance(record["ID"], int | str):
        raise WebhookPayloadError("ID: must be a number or a string")
    if "SuppressSending" in record and not isinstance(record["SuppressSending"], bool):
        raise WebhookPayloadError("SuppressSending: must be true or false")


def _event(record: dict[str, Any]) -> TrackingEvent:
    record_type = record.get("RecordType")
    kind: EventKind = "other"
    bounce_type: BounceType | None = None
    policy = False
    recipient = normalize_email(record.get("Email") or record.get("Recipient"))
    timestamp = from_iso(
        record.get("BouncedAt") or record.get("DeliveredAt") or record.get("ChangedAt")
    )
    description = text_or_none(record.get("Description")) or text_or_none(record.get("Details"))
    if record_type == "Delivery":
        kind = "delivered"
        description = text_or_none(record.get("Details"))
    elif record_type in ("Bounce", "SpamComplaint"):
        bounce_kind = str(record.get("Type", ""))
        kind, bounce_type = _BOUNCE_TYPES.get(bounce_kind, ("other", None))
        if record_type == "SpamComplaint":
            kind, bounce_type = "complained", None
        policy = bounce_kind in _POLICY_TYPES
        parts = (bounce_kind, record.get("Description"), record.get("Details"))
        description = "; ".join(part for part in map(text_or_none, parts) if part)[:1000]
    elif record_type == "SubscriptionChange":
        if record.get("SuppressSending") is True:
            reason = str(record.get("SuppressionReason", ""))
            kind, bounce_type = _SUPPRESSION_REASONS.get(reason, ("other", None))
            description = f"suppressed by Postmark: {reason or 'unknown reason'}"
        else:
            description = "reactivated in Postmark"
    # Bounce and SpamComplaint records carry Postmark's bounce ID; Delivery and
    # SubscriptionChange records carry no event id, so their content is the id.
    record_id = record.get("ID")
    event_id = (
        f"{record_type}:{record_id}"
        if isinstance(record_id, int | str) and str(record_id)
        else f"{record_type}:{fingerprint(record)}"
    )
    message_id = json_text(record, "MessageID")
    return TrackingEvent(
        provider=PROVIDER,
        event_id=event_id,
        kind=kind,
        recipient=recipient,
        timestamp=timestamp,
        bounce_type=bounce_type,
        provider_message_id=message_id,
        description=description or None,
        policy=policy,
    )


class PostmarkWebhookSettings(ProviderSettings):
    """The HTTP Basic credentials put in the webhook URL; the username turns it on."""

    postmark_webhook_username: str | None = None
    postmark_webhook_password: SecretStr | None = None


def _receive(
    settings: PostmarkWebhookSettings, headers: Mapping[str, str], body: bytes, now: datetime
) -> list[TrackingEvent]:
    del now  # nothing Postmark sends is signed with a time
    password = settings.postmark_webhook_password
    return parse(
        headers,
        body,
        username=settings.postmark_webhook_username or "",
        password=password.get_secret_value() if password is not None else "",
    )


WEBHOOK = Webhook(
    settings=PostmarkWebhookSettings,
    configured=lambda settings: bool(settings.postmark_webhook_username),
    parse=_receive,
)
