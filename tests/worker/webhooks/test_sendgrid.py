"""SendGrid webhooks: ECDSA P-256 / SHA-256 over timestamp + raw body."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.worker.webhooks.signed import SENDGRID_BATCH, SendGridSigner
from worker.webhooks import sendgrid
from worker.webhooks.events import WebhookRejected


def test_sendgrid_accepts_a_signed_batch() -> None:
    signer = SendGridSigner()
    body = json.dumps(SENDGRID_BATCH).encode()
    events = sendgrid.parse(signer.headers(body), body, public_key=signer.verification_key)
    assert [(e.kind, e.bounce_type) for e in events] == [
        ("other", None),
        ("delivered", None),
        ("deferred", None),
        ("bounced", "hard"),
        ("bounced", "soft"),
        ("rejected", None),
        ("complained", None),
        ("unsubscribed", None),
    ]
    hard = events[3]
    assert hard.event_id == "sg-bounce-bounce"
    assert hard.message_id == "<send-7.0123456789ab@crosssell.local>"
    assert hard.provider_message_id == "14c5d75ce93"
    assert hard.timestamp == datetime.fromtimestamp(1795516140, tz=UTC)


@pytest.mark.parametrize(
    "tamper",
    [
        "other-key",
        "body-changed",
        "timestamp-changed",
        "no-headers",
        "signature-not-base64",
    ],
)
def test_sendgrid_rejects_what_it_did_not_sign(tamper: str) -> None:
    signer = SendGridSigner()
    body = json.dumps(SENDGRID_BATCH).encode()
    headers = signer.headers(body)
    if tamper == "other-key":
        headers = SendGridSigner().headers(body)
    elif tamper == "body-changed":
        body = body.replace(b'"bounce"', b'"delivered"', 1)
    elif tamper == "timestamp-changed":
        headers["X-Twilio-Email-Event-Webhook-Timestamp"] = "1795516201"
    elif tamper == "no-headers":
        headers = {}
    else:
        headers["X-Twilio-Email-Event-Webhook-Signature"] = "!!!"
    with pytest.raises(WebhookRejected):
        sendgrid.parse(headers, body, public_key=signer.verification_key)


def test_sendgrid_verification_key_must_be_p256() -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="P-256"):
        sendgrid.load_public_key(base64.b64encode(der).decode())


def test_sendgrid_headers_are_found_whatever_their_case() -> None:
    signer = SendGridSigner()
    body = json.dumps(SENDGRID_BATCH[:1]).encode()
    headers = {name.lower(): value for name, value in signer.headers(body).items()}
    assert len(sendgrid.parse(headers, body, public_key=signer.verification_key)) == 1
