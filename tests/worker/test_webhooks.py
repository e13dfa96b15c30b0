"""Provider webhooks: real signatures in, neutral events out, each applied exactly once.

Keys and certificates are generated here and payloads are signed the way each provider
documents it, so these tests fail if verification is too lax *or* too strict.

``worker.webhooks.apply`` and ``store`` are imported inside the database tests only:
importing them registers the ``webhook_events`` table with ``Base.metadata``, and until
its migration exists that would make ``alembic check`` (test_migrations) and the
PostgreSQL truncation in ``conftest.database_url`` see a table the database lacks. The
database tests create the table themselves with ``__table__.create(checkfirst=True)``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Table, select

from worker.db import engine_for, transaction
from worker.mime import message_id_for
from worker.models import Customer, Send, Suppression
from worker.webhooks import mailgun, postmark, sendgrid, ses
from worker.webhooks.events import TrackingEvent, WebhookError, WebhookRejected

if TYPE_CHECKING:
    from worker.webhooks.apply import ApplyReport

NOW = datetime(2026, 11, 17, 10, 30, tzinfo=UTC)
TOPIC = "arn:aws:sns:eu-west-1:123456789012:crosssell-ses"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000000000000000.pem"


# --- Postmark: HTTP Basic auth configured in the webhook URL ------------------------


def _basic(user: str, password: str) -> dict[str, str]:
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


def test_postmark_accepts_the_configured_credentials() -> None:
    body = json.dumps(POSTMARK_HARD_BOUNCE).encode()
    [event] = postmark.parse(
        _basic("hooks", "s3cret:with-colon"), body, username="hooks", password="s3cret:with-colon"
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
        _basic("hooks", "wrong"),
        _basic("other", "s3cret"),
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
        postmark.parse(_basic("", ""), b"{}", username="", password="")


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
    headers = _basic("hooks", "s3cret")
    [event] = postmark.parse(headers, body, username="hooks", password="s3cret")
    assert (event.kind, event.bounce_type, event.policy) == (kind, bounce_type, policy)
    assert event.recipient == "john@example.com"
    # Records without an ID are identified by their content: a retry has the same id.
    [again] = postmark.parse(headers, body, username="hooks", password="s3cret")
    assert again.event_id == event.event_id


# --- SendGrid: ECDSA P-256 / SHA-256 over timestamp + raw body ----------------------


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


def _sendgrid_event(event: str, **fields: Any) -> dict[str, Any]:
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
    _sendgrid_event("processed"),
    _sendgrid_event("delivered", response="250 OK"),
    _sendgrid_event("deferred", response="400 try again later", attempt="5"),
    _sendgrid_event(
        "bounce", type="bounce", status="5.1.1", reason="550 5.1.1 The email account does not exist"
    ),
    _sendgrid_event("bounce", type="blocked", status="4.0.0", reason="421 try again"),
    _sendgrid_event("dropped", reason="Bounced Address", status="5.0.0"),
    _sendgrid_event("spamreport"),
    _sendgrid_event("unsubscribe"),
]


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


# --- Mailgun: HMAC-SHA256(signing key, timestamp + token), fresh timestamps only ------

MAILGUN_KEY = "key-0123456789abcdef"


def _mailgun_body(
    event_data: dict[str, Any], signed_at: datetime = NOW, key: str = MAILGUN_KEY
) -> bytes:
    timestamp = str(int(signed_at.timestamp()))
    token = "e0b5477167110d68991efc6b9f89f0a11066af27834600e123"
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


def test_mailgun_accepts_a_fresh_signature() -> None:
    body = _mailgun_body(MAILGUN_PERMANENT_FAILURE, signed_at=NOW - timedelta(minutes=4))
    [event] = mailgun.parse({}, body, signing_key=MAILGUN_KEY, now=NOW)
    assert event.kind == "bounced" and event.bounce_type == "hard" and not event.policy
    assert event.recipient == "john@example.com"
    assert event.message_id == "<20261117102900.1.5D6D5D6D5D6D5D6D@mg.shop.example>"
    assert event.event_id == "G9Bn5sl1TC6nu79C8C0bwg@1795516140.108236"


@pytest.mark.parametrize(
    ("signed_at", "key"),
    [
        (NOW, "key-wrong"),
        (NOW - timedelta(hours=9, minutes=1), MAILGUN_KEY),
        (NOW - timedelta(days=3), MAILGUN_KEY),
        (NOW + timedelta(minutes=10), MAILGUN_KEY),
    ],
    ids=["wrong-key", "past-mailguns-retry-window", "days-old", "from-the-future"],
)
def test_mailgun_rejects_bad_or_stale_signatures(signed_at: datetime, key: str) -> None:
    body = _mailgun_body(MAILGUN_PERMANENT_FAILURE, signed_at=signed_at, key=key)
    with pytest.raises(WebhookRejected):
        mailgun.parse({}, body, signing_key=MAILGUN_KEY, now=NOW)


@settings(max_examples=60, deadline=None)
@given(age=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=8)))
def test_mailgun_accepts_any_signature_age_inside_its_retry_window(age: timedelta) -> None:
    """Mailgun retries "during 8 hours" with the first attempt's signature."""
    body = _mailgun_body(MAILGUN_PERMANENT_FAILURE, signed_at=NOW - age)
    assert len(mailgun.parse({}, body, signing_key=MAILGUN_KEY, now=NOW)) == 1


@settings(max_examples=30, deadline=None)
@given(age=st.timedeltas(min_value=timedelta(hours=9), max_value=timedelta(days=3650)))
def test_mailgun_refuses_signatures_older_than_any_retry(age: timedelta) -> None:
    body = _mailgun_body(MAILGUN_PERMANENT_FAILURE, signed_at=NOW - age)
    with pytest.raises(WebhookRejected):
        mailgun.parse({}, body, signing_key=MAILGUN_KEY, now=NOW)


def test_mailgun_rejects_a_tampered_body_and_unsigned_requests() -> None:
    body = _mailgun_body(MAILGUN_PERMANENT_FAILURE)
    tampered = json.loads(body)
    tampered["signature"]["token"] = "x" * 50
    for candidate in (json.dumps(tampered).encode(), b"not json", b'{"event-data": {}}'):
        with pytest.raises(WebhookRejected):
            mailgun.parse({}, candidate, signing_key=MAILGUN_KEY, now=NOW)


@pytest.mark.parametrize(
    ("changes", "kind", "bounce_type", "policy"),
    [
        ({"severity": "temporary", "reason": "generic"}, "deferred", None, False),
        ({"reason": "suppress-unsubscribe"}, "rejected", None, False),
        (
            {"delivery-status": {"code": 550, "message": "5.7.26 Unauthenticated email"}},
            "bounced",
            "hard",
            True,
        ),
        ({"event": "complained"}, "complained", None, False),
        ({"event": "unsubscribed"}, "unsubscribed", None, False),
        ({"event": "delivered"}, "delivered", None, False),
    ],
    ids=["temporary", "suppressed-elsewhere", "policy", "complained", "unsubscribed", "delivered"],
)
def test_mailgun_event_kinds(
    changes: dict[str, Any], kind: str, bounce_type: str | None, policy: bool
) -> None:
    body = _mailgun_body({**MAILGUN_PERMANENT_FAILURE, **changes})
    [event] = mailgun.parse({}, body, signing_key=MAILGUN_KEY, now=NOW)
    assert (event.kind, event.bounce_type, event.policy) == (kind, bounce_type, policy)


# --- Amazon SES through SNS: RSA signature, certificate only from sns.<region> ---------


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
        signature = self.key.sign(_sns_string_to_sign(signed), padding.PKCS1v15(), algorithm)
        signed["Signature"] = base64.b64encode(signature).decode()
        return signed


def _certificate(key: rsa.RSAPrivateKey) -> bytes:
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


@pytest.fixture(scope="module")
def sns_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def sns(sns_key: rsa.RSAPrivateKey) -> SnsSigner:
    return SnsSigner(sns_key, _certificate(sns_key))


def _sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    """Written from the AWS page, independently of the code under test."""
    if message["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()


def _notification(ses_message: dict[str, Any], message_id: str = "sns-1") -> dict[str, Any]:
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


def _ses_bounce(
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


def _ses_parse(
    body: dict[str, Any], signer: SnsSigner, headers: Mapping[str, str] | None = None
) -> list[TrackingEvent] | ses.SubscriptionConfirmation:
    return ses.parse(
        headers or {"x-amz-sns-message-type": str(body["Type"])},
        json.dumps(body).encode(),
        allowed_topic_arns={TOPIC},
        now=NOW,
        fetch_certificate=signer.fetch,
    )


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_subscription_confirmation_is_verified_and_handed_back(
    sns: SnsSigner, version: str
) -> None:
    result = _ses_parse(sns.sign(SUBSCRIPTION_CONFIRMATION, version), sns)
    assert isinstance(result, ses.SubscriptionConfirmation)
    assert result.subscribe_url == SUBSCRIPTION_CONFIRMATION["SubscribeURL"]
    assert result.topic_arn == TOPIC
    assert sns.fetched == [CERT_URL]
    visited: list[str] = []

    def visit(url: str) -> bytes:
        visited.append(url)
        return b"<ConfirmSubscriptionResponse/>"

    ses.confirm_subscription(result, get=visit)
    assert visited == [SUBSCRIPTION_CONFIRMATION["SubscribeURL"]]


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_bounce_notification(sns: SnsSigner, version: str) -> None:
    message = _ses_bounce(
        "Permanent",
        [
            {"emailAddress": "John@example.com", "status": "5.1.1", "action": "failed"},
            {
                "emailAddress": "jane@example.com",
                "status": "5.7.1",
                "diagnosticCode": "smtp; 550 5.7.1 rejected by DMARC policy",
            },
        ],
        message_id="<send-7.0123456789ab@crosssell.local>",
    )
    events = _ses_parse(sns.sign(_notification(message), version), sns)
    assert isinstance(events, list)
    assert [(e.recipient, e.kind, e.bounce_type, e.policy) for e in events] == [
        ("john@example.com", "bounced", "hard", False),
        ("jane@example.com", "bounced", "hard", True),
    ]
    assert events[0].event_id == "sns-1/john@example.com"
    assert events[0].message_id == "<send-7.0123456789ab@crosssell.local>"
    assert events[0].provider_message_id == message["mail"]["messageId"]


@pytest.mark.parametrize(
    ("message", "kind", "bounce_type"),
    [
        (_ses_bounce("Transient", [{"emailAddress": "john@example.com"}]), "bounced", "soft"),
        (_ses_bounce("Undetermined", [{"emailAddress": "john@example.com"}]), "bounced", None),
        (
            {
                "notificationType": "Complaint",
                "complaint": {
                    "complainedRecipients": [{"emailAddress": "john@example.com"}],
                    "timestamp": "2026-11-17T10:29:38.237Z",
                    "feedbackId": "0000013786031775-163e3910-53eb-4c8e-a04a-f29debf88a84-000000",
                    "complaintFeedbackType": "abuse",
                },
                "mail": {"messageId": "ses-1", "destination": ["john@example.com"]},
            },
            "complained",
            None,
        ),
        (
            {
                "notificationType": "Delivery",
                "delivery": {
                    "timestamp": "2026-11-17T10:29:38.237Z",
                    "recipients": ["john@example.com"],
                    "smtpResponse": "250 ok",
                },
                "mail": {"messageId": "ses-1", "destination": ["john@example.com"]},
            },
            "delivered",
            None,
        ),
    ],
    ids=["transient", "undetermined", "complaint", "delivery"],
)
def test_ses_notification_kinds(
    sns: SnsSigner, message: dict[str, Any], kind: str, bounce_type: str | None
) -> None:
    events = _ses_parse(sns.sign(_notification(message)), sns)
    assert isinstance(events, list)
    assert [(e.kind, e.bounce_type, e.recipient) for e in events] == [
        (kind, bounce_type, "john@example.com")
    ]


def test_ses_rejects_a_bad_signature(sns: SnsSigner, sns_key: rsa.RSAPrivateKey) -> None:
    signed = sns.sign(_notification(_ses_bounce("Permanent", [{"emailAddress": "a@b.c"}])))
    altered = {**signed, "Message": signed["Message"].replace("a@b.c", "victim@b.c")}
    other = SnsSigner(sns_key, _certificate(rsa.generate_private_key(65537, 2048)))
    for body, signer in ((altered, sns), (signed, other)):
        with pytest.raises(WebhookRejected):
            _ses_parse(body, signer)


@pytest.mark.parametrize(
    "cert_url",
    [
        "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns.eu-west-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
        "https://evil.example/sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem",
        "https://my-bucket.s3.amazonaws.com/SimpleNotificationService-1.pem",
        "https://sns.eu-west-1.amazonaws.com@evil.example/SimpleNotificationService-1.pem",
        "https://sns.eu-west-1.amazonaws.com:8443/SimpleNotificationService-1.pem",
        "https://sns.eu-west-1.amazonaws.com/not-a-certificate.txt",
    ],
    ids=["http", "suffix", "path", "s3", "userinfo", "port", "not-pem"],
)
def test_ses_never_fetches_an_untrusted_certificate(sns: SnsSigner, cert_url: str) -> None:
    signed = sns.sign(SUBSCRIPTION_CONFIRMATION)
    signed["SigningCertURL"] = cert_url
    with pytest.raises(WebhookRejected):
        _ses_parse(signed, sns)
    assert sns.fetched == []


def test_ses_rejects_other_topics_and_mismatched_types(sns: SnsSigner) -> None:
    foreign = sns.sign({**SUBSCRIPTION_CONFIRMATION, "TopicArn": TOPIC + "-attacker"})
    with pytest.raises(WebhookRejected, match="topic"):
        _ses_parse(foreign, sns)
    with pytest.raises(WebhookRejected, match="message-type"):
        _ses_parse(
            sns.sign(SUBSCRIPTION_CONFIRMATION), sns, {"x-amz-sns-message-type": "Notification"}
        )
    assert sns.fetched == []


def test_ses_rejects_an_expired_certificate(sns: SnsSigner) -> None:
    signed = sns.sign(SUBSCRIPTION_CONFIRMATION)
    with pytest.raises(WebhookRejected, match="expired"):
        ses.parse(
            {},
            json.dumps(signed).encode(),
            allowed_topic_arns={TOPIC},
            now=NOW + timedelta(days=400),
            fetch_certificate=sns.fetch,
        )


def test_production_fetcher_refuses_untrusted_urls_before_any_network() -> None:
    with pytest.raises(WebhookRejected):
        ses.fetch_certificate("https://evil.example/cert.pem")


# --- Applying events: suppression, sends, consent — exactly once -----------------------


@dataclass(frozen=True)
class Seeded:
    url: str
    send_id: int
    message_id: str


def _webhook_table() -> Table:
    from worker.webhooks.store import WebhookEvent

    return cast(Table, WebhookEvent.__table__)


@pytest.fixture
def webhook_table(request: pytest.FixtureRequest) -> None:
    """Create ``webhook_events`` on the session's PostgreSQL *before* ``database_url``
    truncates every table of ``Base.metadata`` (which now includes it). Needed only
    until the table has its migration."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("database_url") == "postgresql":
        url = str(request.getfixturevalue("postgres_url"))
        _webhook_table().create(engine_for(url), checkfirst=True)


@pytest.fixture
def db(webhook_table: None, database_url: str) -> Seeded:
    """A customer with consent and one ``sent`` send; the webhook table created here
    because its migration does not exist yet."""
    _webhook_table().create(engine_for(database_url), checkfirst=True)
    with transaction(database_url) as session:
        session.add(
            Customer(
                id="C-1",
                email="John@Example.com",
                email_marketing=True,
                attributes={},
                created_at=NOW - timedelta(days=30),
                updated_at=NOW - timedelta(days=30),
            )
        )
        session.flush()
        send = Send(
            campaign_id="tent-accessories",
            kind="cross_sell",
            customer_id="C-1",
            event_id="evt-1",
            status="sent",
            dedupe_key="tent-accessories:C-1:2026-11",
            created_at=NOW - timedelta(hours=1),
            updated_at=NOW - timedelta(hours=1),
            sent_at=NOW - timedelta(hours=1),
            provider="sendgrid",
            provider_message_id="14c5d75ce93",
        )
        session.add(send)
        session.flush()
        send.message_id = message_id_for(send.id, "shop.example", b"k" * 32)
        return Seeded(database_url, send.id, send.message_id)


def _apply(url: str, events: list[TrackingEvent]) -> ApplyReport:
    from worker.webhooks.apply import apply_events

    with transaction(url) as session:
        return apply_events(session, events, NOW)


def _state(url: str) -> dict[str, Any]:
    from worker.webhooks.store import WebhookEvent

    with transaction(url) as session:
        send = session.scalars(select(Send)).one()
        customer = session.get(Customer, "C-1")
        assert customer is not None
        return {
            "send": (send.status, send.reason, send.detail, send.updated_at),
            "consent": (customer.email_marketing, customer.updated_at),
            "suppressions": [
                (s.email, s.reason, s.source) for s in session.scalars(select(Suppression))
            ],
            "recorded": sorted(
                (e.provider, e.event_id, e.kind) for e in session.scalars(select(WebhookEvent))
            ),
        }


def _event(seeded: Seeded, **fields: Any) -> TrackingEvent:
    base = TrackingEvent(
        provider="postmark",
        event_id="Bounce:1",
        kind="bounced",
        recipient="john@example.com",
        timestamp=NOW - timedelta(minutes=1),
        bounce_type="hard",
        message_id=seeded.message_id,
        description="550 5.1.1 no such user",
    )
    return replace(base, **fields)


def test_hard_bounce_suppresses_and_fails_the_send_once(db: Seeded) -> None:
    event = _event(db)
    first = _apply(db.url, [event])
    assert (first.applied, first.duplicates) == (1, 0)
    assert first.suppressed == ["john@example.com"] and first.failed_sends == [db.send_id]
    after_first = _state(db.url)
    assert after_first["send"][:2] == ("failed", "hard_bounce")
    assert after_first["suppressions"] == [("john@example.com", "hard_bounce", "webhook:postmark")]
    assert after_first["consent"][0] is True

    again = _apply(db.url, [event])
    assert (again.applied, again.duplicates) == (0, 1)
    assert _state(db.url) == after_first


def test_complaint_suppresses_and_withdraws_consent(db: Seeded) -> None:
    report = _apply(db.url, [_event(db, kind="complained", bounce_type=None, event_id="c-1")])
    state = _state(db.url)
    assert state["suppressions"] == [("john@example.com", "complaint", "webhook:postmark")]
    assert state["consent"] == (False, NOW)
    assert state["send"][0] == "sent"  # it was delivered; the complaint came after
    assert report.consent_withdrawn == ["C-1"]


def test_complaint_about_an_unknown_message_finds_the_customer_by_address(db: Seeded) -> None:
    _apply(db.url, [_event(db, kind="complained", bounce_type=None, message_id=None)])
    assert _state(db.url)["consent"][0] is False


@pytest.mark.parametrize("kind", ["bounced", "deferred", "delivered", "rejected"])
def test_soft_failures_and_deliveries_are_recorded_only(db: Seeded, kind: str) -> None:
    event = _event(db, kind=kind, bounce_type="soft" if kind == "bounced" else None)
    report = _apply(db.url, [event])
    state = _state(db.url)
    assert state["suppressions"] == []
    assert state["send"][0] == "sent"
    assert state["recorded"] == [("postmark", "Bounce:1", kind)]
    assert report.kinds == {kind: 1}


def test_unsubscribe_suppresses(db: Seeded) -> None:
    _apply(db.url, [_event(db, kind="unsubscribed", bounce_type=None)])
    state = _state(db.url)
    assert state["suppressions"] == [("john@example.com", "unsubscribe", "webhook:postmark")]
    assert state["send"][0] == "sent"


def test_policy_refusal_alerts_instead_of_suppressing(
    db: Seeded, caplog: pytest.LogCaptureFixture
) -> None:
    report = _apply(db.url, [_event(db, policy=True, description="550 5.7.26 DMARC")])
    state = _state(db.url)
    assert state["suppressions"] == []
    assert state["send"][:2] == ("failed", "policy_rejected")
    assert report.policy_alerts == ["Bounce:1"]
    assert "OPERATOR" in caplog.text


def test_the_same_event_twice_in_one_batch_is_applied_once(db: Seeded) -> None:
    event = _event(db)
    report = _apply(db.url, [event, event])
    assert (report.received, report.applied, report.duplicates) == (2, 1, 1)
    assert len(_state(db.url)["recorded"]) == 1


def test_a_second_bounce_for_a_suppressed_address_changes_nothing_more(db: Seeded) -> None:
    _apply(db.url, [_event(db)])
    before = _state(db.url)
    report = _apply(db.url, [_event(db, provider="ses", event_id="sns-9/john@example.com")])
    after = _state(db.url)
    assert report.suppressed == [] and report.failed_sends == []
    assert after["suppressions"] == before["suppressions"]
    assert after["send"] == before["send"]


def test_long_provider_ids_are_stored_hashed(db: Seeded) -> None:
    from worker.webhooks.apply import storage_id

    long_id = "sns-1/" + "x" * 300 + "@example.com"
    assert storage_id(long_id).startswith("sha256:") and storage_id("short") == "short"
    for _ in range(2):
        _apply(db.url, [_event(db, kind="delivered", bounce_type=None, event_id=long_id)])
    assert len(_state(db.url)["recorded"]) == 1


def test_signed_sendgrid_retry_is_applied_once(db: Seeded) -> None:
    """End to end: a signed request parsed and applied, then SendGrid's retry of it."""
    signer = SendGridSigner()
    body = json.dumps(
        [_sendgrid_event("bounce", type="bounce", status="5.1.1", **{"smtp-id": db.message_id})]
    ).encode()
    headers = signer.headers(body)
    reports = [
        _apply(db.url, sendgrid.parse(headers, body, public_key=signer.verification_key))
        for _ in range(2)
    ]
    assert [(r.applied, r.duplicates) for r in reports] == [(1, 0), (0, 1)]
    state = _state(db.url)
    assert state["send"][:2] == ("failed", "hard_bounce")
    assert state["suppressions"] == [("john@example.com", "hard_bounce", "webhook:sendgrid")]


def test_signed_ses_bounce_matches_the_send_by_provider_id(db: Seeded, sns: SnsSigner) -> None:
    message = _ses_bounce("Permanent", [{"emailAddress": "john@example.com", "status": "5.1.1"}])
    message["mail"]["messageId"] = "14c5d75ce93"
    events = _ses_parse(sns.sign(_notification(message)), sns)
    assert isinstance(events, list)
    report = _apply(db.url, events)
    assert report.failed_sends == [db.send_id]


# --- Freshness: every provider's own retries must get through --------------------------

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
        body = _mailgun_body(MAILGUN_PERMANENT_FAILURE, signed_at=sent_at)
        return mailgun.parse({}, body, signing_key=MAILGUN_KEY, now=NOW)
    if provider == "postmark":
        body = json.dumps({**POSTMARK_HARD_BOUNCE, "BouncedAt": iso}).encode()
        return postmark.parse(_basic("hooks", "pw"), body, username="hooks", password="pw")
    if provider == "sendgrid":
        signer = SendGridSigner()
        stamp = str(int(sent_at.timestamp()))
        body = json.dumps([_sendgrid_event("bounce", type="bounce", timestamp=int(stamp))]).encode()
        headers = signer.headers(body, timestamp=stamp)
        return sendgrid.parse(headers, body, public_key=signer.verification_key)
    message = _ses_bounce("Permanent", [{"emailAddress": "john@example.com", "status": "5.1.1"}])
    result = _ses_parse(sns.sign({**_notification(message), "Timestamp": iso}), sns)
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


# --- Any authenticated payload: events or a webhook error, never anything else -----------

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
        events = mailgun.parse({}, _mailgun_body(data), signing_key=MAILGUN_KEY, now=NOW)
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
        result = _ses_parse(sns.sign(_notification(notification)), sns)
    except WebhookError:
        return
    assert isinstance(result, list) and all(isinstance(e, TrackingEvent) for e in result)
