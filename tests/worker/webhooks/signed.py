"""Webhook requests signed the way each provider documents it, for the tests of every
provider's webhook.

Keys and certificates are generated here and payloads are signed as each provider
documents it, so the tests fail if verification is too lax *or* too strict.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from worker.webhooks import ses
from worker.webhooks.events import TrackingEvent

NOW = datetime(2026, 11, 17, 10, 30, tzinfo=UTC)


TOPIC = "arn:aws:sns:eu-west-1:123456789012:crosssell-ses"


CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000000000000000.pem"


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


POSTMARK_HARD_BOUNCE: dict[str, Any] = {
    "RecordType": "Bounce",
    "MessageStream": "outbound",
    "ID": 42,
    "Type": "HardBounce",
    "TypeCode": 1,
    "Name": "Hard bounce",
    "Tag": "cross_sell",
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "ServerID": 23,
    "Description": "The server was unable to deliver your message (ex: unknown user).",
    "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist",
    "Email": "John@Example.com",
    "From": "offers@shop.example",
    "BouncedAt": "2026-11-17T10:29:54.9070259Z",
    "DumpAvailable": True,
    "Inactive": True,
    "CanActivate": True,
    "Subject": "Goes with your new tent",
}


@dataclass
class SendGridSigner:
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    @property
    def verification_key(self) -> str:
        """What SendGrid shows under Mail Settings: base64 DER SubjectPublicKeyInfo."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: str = "1795516200") -> dict[str, str]:
        signature = self.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }


def sendgrid_event(event: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "email": "john@example.com",
        "timestamp": 1795516140,
        "smtp-id": "<send-7.0123456789ab@crosssell.local>",
        "event": event,
        "category": ["cross_sell"],
        "sg_event_id": f"sg-{event}-{fields.get('type', 'x')}",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
    }
    base.update(fields)
    return base


SENDGRID_BATCH = [
    sendgrid_event("processed"),
    sendgrid_event("delivered", response="250 OK"),
    sendgrid_event("deferred", response="400 try again later", attempt="5"),
    sendgrid_event(
        "bounce", type="bounce", status="5.1.1", reason="550 5.1.1 The email account does not exist"
    ),
    sendgrid_event("bounce", type="blocked", status="4.0.0", reason="421 try again"),
    sendgrid_event("dropped", reason="Bounced Address", status="5.0.0"),
    sendgrid_event("spamreport"),
    sendgrid_event("unsubscribe"),
]


MAILGUN_KEY = "key-0123456789abcdef"


def mailgun_body(
    event_data: dict[str, Any],
    signed_at: datetime = NOW,
    key: str = MAILGUN_KEY,
    token: str | None = None,
) -> bytes:
    timestamp = str(int(signed_at.timestamp()))
    token = token or secrets.token_hex(25)  # Mailgun's: 50 characters, new per request
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {
            "signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": event_data,
        }
    ).encode()


MAILGUN_PERMANENT_FAILURE: dict[str, Any] = {
    "event": "failed",
    "id": "G9Bn5sl1TC6nu79C8C0bwg",
    "timestamp": 1795516140.108236,
    "log-level": "error",
    "severity": "permanent",
    "reason": "bounce",
    "recipient": "John@example.com",
    "message": {
        "headers": {
            "to": "john@example.com",
            "message-id": "20261117102900.1.5D6D5D6D5D6D5D6D@mg.shop.example",
            "from": "offers@shop.example",
            "subject": "Goes with your new tent",
        },
        "size": 111,
    },
    "delivery-status": {
        "attempt-no": 1,
        "message": "5.1.1 The email account that you tried to reach does not exist",
        "code": 550,
        "description": "",
        "session-seconds": 0.1,
    },
}


@dataclass
class SnsSigner:
    """An RSA key and a self-signed certificate standing in for SNS's."""

    key: rsa.RSAPrivateKey
    pem: bytes
    fetched: list[str] = field(default_factory=list)

    def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        return self.pem

    def sign(self, message: dict[str, Any], version: str = "2") -> dict[str, Any]:
        signed = {**message, "SignatureVersion": version, "SigningCertURL": CERT_URL}
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(sns_string_to_sign(signed), padding.PKCS1v15(), algorithm)
        signed["Signature"] = base64.b64encode(signature).decode()
        return signed


def self_signed_certificate(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    """Written from the AWS page, independently of the code under test."""
    if message["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()


def sns_notification(ses_message: dict[str, Any], message_id: str = "sns-1") -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": json.dumps(ses_message),
        "Timestamp": "2026-11-17T10:29:59.000Z",
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&x=1",
    }


SUBSCRIPTION_CONFIRMATION = {
    "Type": "SubscriptionConfirmation",
    "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
    "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a7477",
    "TopicArn": TOPIC,
    "Message": f"You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the "
    "subscription, visit the SubscribeURL included in this message.",
    "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription"
    f"&TopicArn={TOPIC}&Token=2336412f37fb",
    "Timestamp": "2026-11-17T10:29:00.000Z",
}


def ses_bounce(
    bounce_type: str, recipients: list[dict[str, Any]], message_id: str = "<m@x>"
) -> dict[str, Any]:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": recipients,
            "timestamp": "2026-11-17T10:29:38.237Z",
            "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
            "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
        },
        "mail": {
            "timestamp": "2026-11-17T10:29:37.000Z",
            "source": "offers@shop.example",
            "sourceArn": "arn:aws:ses:eu-west-1:123456789012:identity/shop.example",
            "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
            "destination": [r["emailAddress"] for r in recipients],
            "commonHeaders": {"from": ["offers@shop.example"], "messageId": message_id},
        },
    }


def ses_parse(
    body: dict[str, Any], signer: SnsSigner, headers: Mapping[str, str] | None = None
) -> list[TrackingEvent] | ses.SubscriptionConfirmation:
    return ses.parse(
        headers or {"x-amz-sns-message-type": str(body["Type"])},
        json.dumps(body).encode(),
        allowed_topic_arns={TOPIC},
        now=NOW,
        fetch_certificate=signer.fetch,
    )
