"""Amazon SES webhooks through SNS: RSA signature, certificate only from sns.<region>."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.worker.webhooks.signed import (
    CERT_URL,
    NOW,
    SUBSCRIPTION_CONFIRMATION,
    TOPIC,
    SnsSigner,
    self_signed_certificate,
    ses_bounce,
    ses_parse,
    sns_notification,
)
from worker.webhooks import ses
from worker.webhooks.events import WebhookRejected


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_subscription_confirmation_is_verified_and_handed_back(
    sns: SnsSigner, version: str
) -> None:
    result = ses_parse(sns.sign(SUBSCRIPTION_CONFIRMATION, version), sns)
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
    message = ses_bounce(
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
    events = ses_parse(sns.sign(sns_notification(message), version), sns)
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
        (ses_bounce("Transient", [{"emailAddress": "john@example.com"}]), "bounced", "soft"),
        (ses_bounce("Undetermined", [{"emailAddress": "john@example.com"}]), "bounced", None),
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
    events = ses_parse(sns.sign(sns_notification(message)), sns)
    assert isinstance(events, list)
    assert [(e.kind, e.bounce_type, e.recipient) for e in events] == [
        (kind, bounce_type, "john@example.com")
    ]


def test_ses_rejects_a_bad_signature(sns: SnsSigner, sns_key: rsa.RSAPrivateKey) -> None:
    signed = sns.sign(sns_notification(ses_bounce("Permanent", [{"emailAddress": "a@b.c"}])))
    altered = {**signed, "Message": signed["Message"].replace("a@b.c", "victim@b.c")}
    other = SnsSigner(sns_key, self_signed_certificate(rsa.generate_private_key(65537, 2048)))
    for body, signer in ((altered, sns), (signed, other)):
        with pytest.raises(WebhookRejected):
            ses_parse(body, signer)


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
        ses_parse(signed, sns)
    assert sns.fetched == []


def test_ses_rejects_other_topics_and_mismatched_types(sns: SnsSigner) -> None:
    foreign = sns.sign({**SUBSCRIPTION_CONFIRMATION, "TopicArn": TOPIC + "-attacker"})
    with pytest.raises(WebhookRejected, match="topic"):
        ses_parse(foreign, sns)
    with pytest.raises(WebhookRejected, match="message-type"):
        ses_parse(
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
