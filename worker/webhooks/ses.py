"""Amazon SES bounce, complaint and delivery notifications, delivered by Amazon SNS.

SNS signs what it POSTs (docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-
message.html and http-notification-json.html): ``Signature`` is base64 RSA PKCS#1 v1.5
over the "string to sign" — each of ``Message, MessageId, Subject (if present),
Timestamp, TopicArn, Type`` for a Notification, or ``Message, MessageId, SubscribeURL,
Timestamp, Token, TopicArn, Type`` for a (Un)SubscriptionConfirmation, written as
``name\\nvalue\\n`` in that order — hashed with SHA-1 (``SignatureVersion`` 1) or SHA-256
(2). The key is in the X.509 certificate at ``SigningCertURL``, which we only fetch over
https from ``sns.<region>.amazonaws.com`` (``.com.cn`` in China), as AWS's own
validators do; anyone can host a certificate anywhere else.

A valid signature proves only that *some* SNS topic sent the message; anybody can
point their own topic at our URL. So the topic must also be one we configured (AWS:
"reject any message with an unexpected TopicArn").

The Message of a Notification is the SES notification JSON (docs.aws.amazon.com/ses/
latest/dg/notification-contents.html): ``notificationType`` (``eventType`` for event
publishing) Bounce/Complaint/Delivery, a ``mail`` object and one object per type; one
notification may cover several recipients. SNS keeps ``MessageId`` on retries, so
``MessageId/recipient`` is the de-duplication id.

Freshness: the signed ``Timestamp`` is not compared with our clock. SNS retries an
HTTP/S delivery for at most 3,600 seconds ("a hard limit", docs.aws.amazon.com/sns/
latest/dg/sns-message-delivery-retries.html), always with the message as first signed;
only the signing certificate's validity period is checked, and a retry of a message
already applied is recognised by its id in ``webhook_events``.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from worker.providers.registry import ProviderSettings, Webhook
from worker.webhooks.events import (
    BounceType,
    EventKind,
    TrackingEvent,
    WebhookPayloadError,
    WebhookRejected,
    enhanced_status,
    from_iso,
    header,
    is_policy_status,
    json_text,
    load_json,
    normalize_email,
    normalize_message_id,
    text_or_none,
)

PROVIDER = "ses"
# The longest HTTP/S retry span SNS allows (see above): requests this old must pass.
RETRY_WINDOW = timedelta(seconds=3600)
SNS_HOST = re.compile(r"^sns\.[a-z0-9-]{3,}\.amazonaws\.com(\.cn)?$")
CERT_TIMEOUT = 10.0
MAX_CERT_BYTES = 64 * 1024

_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_OPTIONAL_FIELDS = frozenset({"Subject"})
_BOUNCE_TYPES: dict[str, BounceType] = {"Permanent": "hard", "Transient": "soft"}
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


@dataclass(frozen=True, slots=True)
class SubscriptionConfirmation:
    """An authentic request to confirm our subscription to ``topic_arn``.

    The caller confirms by GETting ``subscribe_url`` (see :func:`confirm_subscription`);
    parsing never does it, so reading a request has no side effect on AWS.
    """

    topic_arn: str
    subscribe_url: str
    message_id: str


def is_trusted_sns_url(url: str) -> bool:
    """An https URL on an SNS regional endpoint, with nothing that could redirect trust."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and parts.username is None
        and parts.password is None
        and port in (None, 443)
        and parts.hostname is not None
        and SNS_HOST.fullmatch(parts.hostname) is not None
        # urlsplit lower-cases hostname; the raw netloc must be exactly that host.
        and parts.netloc.lower() in (parts.hostname, f"{parts.hostname}:443")
    )


@lru_cache(maxsize=16)
def _cached_get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: bytes = response.read(MAX_CERT_BYTES + 1)
    if len(data) > MAX_CERT_BYTES:
        raise OSError(f"certificate at {url} is larger than {MAX_CERT_BYTES} bytes")
    return data


def fetch_certificate(url: str) -> bytes:
    """The production fetcher: a GET with a timeout, cached in memory per process.

    SNS signing certificates change rarely, so the cache saves a round trip per
    request; failures are not cached. A network error is an ``OSError`` — not the
    sender's fault — so the caller answers 5xx and SNS retries later.
    """
    if not is_trusted_sns_url(url):
        raise WebhookRejected(f"untrusted certificate URL {url!r}")
    return _cached_get(url, CERT_TIMEOUT)


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    """The canonical text SNS signed, built from the documented fields in their order."""
    fields = _SIGNED_FIELDS.get(str(message.get("Type")))
    if fields is None:
        raise WebhookRejected(f"unknown SNS message type {message.get('Type')!r}")
    lines: list[str] = []
    for name in fields:
        value = message.get(name)
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            raise WebhookRejected(f"SNS message lacks {name}")
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode("utf-8")


def verify(
    message: Mapping[str, Any],
    fetch: Callable[[str], bytes],
    now: datetime | None = None,
) -> None:
    """Raise :class:`WebhookRejected` unless SNS signed this message with its certificate."""
    version = message.get("SignatureVersion")
    algorithm = _HASHES.get(str(version)) if isinstance(version, str | int) else None
    if algorithm is None:
        raise WebhookRejected(f"unsupported SNS SignatureVersion {version!r}")
    cert_url = message.get("SigningCertURL")
    if not isinstance(cert_url, str) or not is_trusted_sns_url(cert_url):
        raise WebhookRejected(f"untrusted SigningCertURL {cert_url!r}")
    if not cert_url.lower().split("?", 1)[0].endswith(".pem"):
        raise WebhookRejected("SigningCertURL is not a .pem certificate")
    signature_b64 = message.get("Signature")
    if not isinstance(signature_b64, str):
        raise WebhookRejected("SNS message is not signed")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookRejected("SNS Signature is not valid base64") from exc
    canonical = string_to_sign(message)
    try:
        certificate = x509.load_pem_x509_certificate(fetch(cert_url))
    except ValueError as exc:
        raise WebhookRejected("SigningCertURL did not return a PEM certificate") from exc
    if now is not None and not (
        certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc
    ):
        raise WebhookRejected("SNS signing certificate is expired or not yet valid")
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise WebhookRejected("SNS signing certificate does not hold an RSA key")
    try:
        public_key.verify(signature, canonical, padding.PKCS1v15(), algorithm())
    except InvalidSignature as exc:
        raise WebhookRejected("SNS signature does not match") from exc


def parse(
    headers: Mapping[str, str],
    body: bytes,
    *,
    allowed_topic_arns: Collection[str],
    now: datetime,
    fetch_certificate: Callable[[str], bytes] = fetch_certificate,
) -> list[TrackingEvent] | SubscriptionConfirmation:
    """Authenticate the SNS message, then read the SES notification it carries.

    Returns a :class:`SubscriptionConfirmation` for an authentic confirmation request
    of an allowed topic, ``[]`` for an UnsubscribeConfirmation or SES's test message.
    ``now`` checks the certificate's validity period; tests pass a local
    ``fetch_certificate`` because they cannot reach AWS.
    """
    if not allowed_topic_arns:
        raise ValueError("no SNS topic ARN is configured for SES webhooks")
    message = load_json(body, WebhookRejected)
    if not isinstance(message, dict):
        raise WebhookRejected("an SNS body is one JSON object")
    sns_type = message.get("Type")
    declared = header(headers, "x-amz-sns-message-type")
    if declared is not None and declared != sns_type:
        raise WebhookRejected("x-amz-sns-message-type does not match the body's Type")
    topic = message.get("TopicArn")
    if not isinstance(topic, str) or topic not in allowed_topic_arns:
        raise WebhookRejected(f"unexpected SNS topic {topic!r}")
    verify(message, fetch_certificate, now)
    if sns_type == "SubscriptionConfirmation":
        url = message.get("SubscribeURL")
        if not isinstance(url, str) or not is_trusted_sns_url(url):
            raise WebhookRejected(f"untrusted SubscribeURL {url!r}")
        return SubscriptionConfirmation(
            topic_arn=topic,
            subscribe_url=url,
            message_id=str(message["MessageId"]),
        )
    if sns_type != "Notification":
        return []
    text = message["Message"]
    if text.startswith("Successfully validated SNS topic"):
        return []  # SES's check that it may publish to the topic.
    notification = load_json(text.encode("utf-8"))
    if not isinstance(notification, dict):
        raise WebhookPayloadError("the SNS Message is not an SES notification object")
    return _events(notification, str(message["MessageId"]), from_iso(message.get("Timestamp")))


def confirm_subscription(
    confirmation: SubscriptionConfirmation,
    get: Callable[[str], bytes] | None = None,
) -> None:
    """Visit the SubscribeURL, which is how SNS documents confirming an HTTP endpoint."""
    if not is_trusted_sns_url(confirmation.subscribe_url):
        raise WebhookRejected("untrusted SubscribeURL")
    if get is None:
        with urllib.request.urlopen(confirmation.subscribe_url, timeout=CERT_TIMEOUT) as response:
            response.read(MAX_CERT_BYTES)
        return
    get(confirmation.subscribe_url)


def _events(
    notification: dict[str, Any], sns_message_id: str, sns_time: datetime | None
) -> list[TrackingEvent]:
    kind_name = str(notification.get("notificationType") or notification.get("eventType") or "")
    mail = notification.get("mail")
    mail = mail if isinstance(mail, dict) else {}
    common = mail.get("commonHeaders")
    message_id = normalize_message_id(common.get("messageId") if isinstance(common, dict) else None)
    provider_message_id = json_text(mail, "messageId")

    def event(
        recipient: object,
        kind: EventKind,
        when: object,
        bounce_type: BounceType | None = None,
        description: str | None = None,
        policy: bool = False,
    ) -> TrackingEvent:
        address = normalize_email(recipient)
        return TrackingEvent(
            provider=PROVIDER,
            event_id=f"{sns_message_id}/{address or '-'}",
            kind=kind,
            recipient=address,
            timestamp=from_iso(when) or sns_time,
            bounce_type=bounce_type,
            message_id=message_id,
            provider_message_id=provider_message_id,
            description=description,
            policy=policy,
        )

    def items(obj: dict[str, Any], key: str) -> list[Any]:
        found = obj.get(key)
        return found if isinstance(found, list) else []

    if kind_name == "Bounce":
        bounce = notification.get("bounce")
        bounce = bounce if isinstance(bounce, dict) else {}
        kind_of = str(bounce.get("bounceType", ""))
        # Permanent: remove the address; Transient: may succeed later; Undetermined:
        # SES could not tell, so do not act on it.
        bounce_type = _BOUNCE_TYPES.get(kind_of)
        events: list[TrackingEvent] = []
        for rcpt in items(bounce, "bouncedRecipients"):
            rcpt = rcpt if isinstance(rcpt, dict) else {}
            status = enhanced_status(rcpt.get("status"), rcpt.get("diagnosticCode"))
            detail = text_or_none(rcpt.get("diagnosticCode"))
            description = f"{kind_of}/{bounce.get('bounceSubType', '')}" + (
                f": {detail}" if detail else ""
            )
            events.append(
                event(
                    rcpt.get("emailAddress"),
                    "bounced",
                    bounce.get("timestamp"),
                    bounce_type,
                    description[:1000],
                    policy=bounce_type == "hard" and is_policy_status(status),
                )
            )
        return events
    if kind_name == "Complaint":
        complaint = notification.get("complaint")
        complaint = complaint if isinstance(complaint, dict) else {}
        feedback = text_or_none(complaint.get("complaintFeedbackType"))
        return [
            event(
                rcpt.get("emailAddress"), "complained", complaint.get("timestamp"), None, feedback
            )
            for rcpt in items(complaint, "complainedRecipients")
            if isinstance(rcpt, dict)
        ]
    if kind_name == "Delivery":
        delivery = notification.get("delivery")
        delivery = delivery if isinstance(delivery, dict) else {}
        response = text_or_none(delivery.get("smtpResponse"))
        return [
            event(address, "delivered", delivery.get("timestamp"), None, response)
            for address in items(delivery, "recipients")
        ]
    if kind_name == "DeliveryDelay":
        delay = notification.get("deliveryDelay")
        delay = delay if isinstance(delay, dict) else {}
        reason = text_or_none(delay.get("delayType"))
        return [
            event(rcpt.get("emailAddress"), "deferred", delay.get("timestamp"), None, reason)
            for rcpt in items(delay, "delayedRecipients")
            if isinstance(rcpt, dict)
        ]
    kind: EventKind = "rejected" if kind_name == "Reject" else "other"
    return [
        event(address, kind, mail.get("timestamp"), None, kind_name or None)
        for address in items(mail, "destination")
    ]


class SESWebhookSettings(ProviderSettings):
    """The SNS topics (comma-separated ARNs) allowed to post SES events."""

    ses_sns_topic_arns: str | None = None

    @property
    def topics(self) -> list[str]:
        return [arn.strip() for arn in (self.ses_sns_topic_arns or "").split(",") if arn.strip()]


def _receive(
    settings: SESWebhookSettings, headers: Mapping[str, str], body: bytes, now: datetime
) -> list[TrackingEvent] | SubscriptionConfirmation:
    return parse(headers, body, allowed_topic_arns=settings.topics, now=now)


WEBHOOK = Webhook(
    settings=SESWebhookSettings,
    configured=lambda settings: bool(settings.ses_sns_topic_arns),
    parse=_receive,
)
