"""SendGrid Event Webhook with the Signed Event Webhook turned on.

SendGrid signs ``timestamp + raw body`` with ECDSA on P-256 over SHA-256 and sends the
base64 DER signature in ``X-Twilio-Email-Event-Webhook-Signature`` and the timestamp in
``X-Twilio-Email-Event-Webhook-Timestamp``; the verification key shown under Mail
Settings is a base64 DER SubjectPublicKeyInfo (twilio.com/docs/sendgrid/for-developers/
tracking-events/getting-started-event-webhook-security-features; the same scheme as
``EventWebhook.verify_signature`` in sendgrid-python). The body must be verified exactly
as received, before any JSON parsing. One request carries a JSON array of events.

SendGrid documents no replay window for the timestamp, and retries a batch that did not
get a 2xx "for up to 24 hours after the event occurs" (docs.sendgrid.com/for-developers/
tracking-events/troubleshooting), so the timestamp's age is deliberately not checked: a
limit shorter than that would drop real retries. A replayed batch only repeats events
whose ``sg_event_id`` is already recorded, which :mod:`worker.webhooks.apply` ignores.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

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
    header,
    is_policy_status,
    json_text,
    load_json,
    normalize_email,
    normalize_message_id,
    text_or_none,
)

PROVIDER = "sendgrid"
# SendGrid's documented retry span (see above); requests this old must still be accepted.
RETRY_WINDOW = timedelta(hours=24)
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

_KINDS: dict[str, EventKind] = {
    "delivered": "delivered",
    "bounce": "bounced",
    "deferred": "deferred",
    "dropped": "rejected",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
}


def load_public_key(verification_key: str) -> ec.EllipticCurvePublicKey:
    """The P-256 key from SendGrid's base64 verification key (PEM armour is tolerated)."""
    text = verification_key.strip()
    if not text:
        raise ValueError("SendGrid webhook verification key is not configured")
    for marker in ("-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----"):
        text = text.replace(marker, "")
    try:
        key = serialization.load_der_public_key(base64.b64decode("".join(text.split())))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"SendGrid verification key is not a base64 DER key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("SendGrid verification key is not an ECDSA P-256 public key")
    return key


def verify(headers: Mapping[str, str], body: bytes, public_key: ec.EllipticCurvePublicKey) -> None:
    """Raise :class:`WebhookRejected` unless SendGrid signed exactly this body."""
    signature = header(headers, SIGNATURE_HEADER)
    timestamp = header(headers, TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise WebhookRejected("SendGrid signature headers are missing")
    try:
        der = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookRejected("signature is not valid base64") from exc
    try:
        public_key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise WebhookRejected("SendGrid signature does not match") from exc


def parse(
    headers: Mapping[str, str],
    body: bytes,
    *,
    public_key: str | ec.EllipticCurvePublicKey,
) -> list[TrackingEvent]:
    """Verify the signature, then turn every event of the batch into a neutral one."""
    key = load_public_key(public_key) if isinstance(public_key, str) else public_key
    verify(headers, body, key)
    batch = load_json(body)
    if not isinstance(batch, list) or not all(isinstance(item, dict) for item in batch):
        raise WebhookPayloadError("a SendGrid webhook body is a JSON array of objects")
    return [_event(item) for item in batch]


def _event(item: dict[str, Any]) -> TrackingEvent:
    name = str(item.get("event", ""))
    kind = _KINDS.get(name, "other")
    bounce_type: BounceType | None = None
    policy = False
    reason = text_or_none(item.get("reason"))
    if kind == "bounced":
        # type=bounce: the receiver refused the address for good; type=blocked: it
        # refused the message for now (a block, SendGrid's soft bounce).
        bounce_type = "soft" if item.get("type") == "blocked" else "hard"
        status = enhanced_status(item.get("status"), reason)
        policy = bounce_type == "hard" and is_policy_status(status)
    description = reason or text_or_none(item.get("response"))
    if kind == "bounced" or kind == "rejected":
        description = "; ".join(
            part for part in (name, str(item.get("type") or ""), description or "") if part
        )[:1000]
    event_id = json_text(item, "sg_event_id")
    sg_message_id = json_text(item, "sg_message_id")
    # sg_message_id is the X-Message-Id that SendGrid's send API returns, followed by
    # ".<filter and server suffix>"; keep the part that our provider would have stored.
    provider_message_id = sg_message_id.split(".", 1)[0] if sg_message_id else None
    return TrackingEvent(
        provider=PROVIDER,
        event_id=event_id or fingerprint(item),
        kind=kind,
        recipient=normalize_email(item.get("email")),
        timestamp=from_epoch(item.get("timestamp")),
        bounce_type=bounce_type,
        message_id=normalize_message_id(item.get("smtp-id")),
        provider_message_id=provider_message_id,
        description=description or None,
        policy=policy,
    )


class SendGridWebhookSettings(ProviderSettings):
    """The signed event webhook's verification key (base64 P-256 public key)."""

    sendgrid_webhook_verification_key: str | None = None


def _receive(
    settings: SendGridWebhookSettings, headers: Mapping[str, str], body: bytes, now: datetime
) -> list[TrackingEvent]:
    del now  # SendGrid documents no replay window (docs/delivery.md)
    return parse(headers, body, public_key=settings.sendgrid_webhook_verification_key or "")


WEBHOOK = Webhook(
    settings=SendGridWebhookSettings,
    configured=lambda settings: bool(settings.sendgrid_webhook_verification_key),
    parse=_receive,
)
