"""What the HTTP provider tests share: a message in Romanian with every header we add,
and each provider opened against the local API server (tests/support/email_api.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from tests.support.email_api import EmailApiServer
from worker.email.mime import Envelope, build_email, message_id_for
from worker.email.rendering import RenderedEmail
from worker.providers.base import OutgoingEmail
from worker.providers.http import HTTPProvider
from worker.providers.mailgun import MailgunProvider
from worker.providers.postmark import PostmarkProvider
from worker.providers.sendgrid import SendGridProvider
from worker.providers.ses import SESProvider

PROVIDERS = ["postmark", "sendgrid", "mailgun", "ses"]
SENDER = ("Magazinul Ștefăniță", "offers@shop.example")


def sample_email(send_id: int = 1, recipient: str = "ioana@example.ro") -> OutgoingEmail:
    envelope = Envelope(
        send_id=send_id,
        sender_name=SENDER[0],
        sender_address=SENDER[1],
        recipient_name="Ioana Țurcanu",
        recipient_address=recipient,
        reply_to="Ajutor <help@shop.example>",
        date=datetime(2026, 11, 17, 10, 30, tzinfo=UTC),
        message_id=message_id_for(send_id, "shop.example", b"k" * 32),
        unsubscribe_url=f"https://shop.example/u/token-{send_id}",
        unsubscribe_mailto="unsubscribe@shop.example",
        feedback_id="a1b2c3d4e5:cross-sell:crosssell",
    )
    rendered = RenderedEmail(
        "Ioana, ți-am pregătit: șnur, țintă, câștig",
        "<p>Bună, <b>Ioana</b>: à è ì ò ù</p>",
        "Bună, Ioana: à è ì ò ù",
    )
    return build_email(envelope, rendered)


def unchecked_recipient(email: OutgoingEmail, recipient: str) -> OutgoingEmail:
    """The message with a recipient our builder would refuse: for the server's own checks."""
    assert email.content is not None
    content = replace(email.content, recipient=replace(email.content.recipient, address=recipient))
    return replace(email, recipient=recipient, content=content)


def provider_for(kind: str, api: EmailApiServer, **overrides: Any) -> HTTPProvider:
    options: dict[str, Any] = {"base_url": api.url, "timeout": 5.0, "connect_timeout": 2.0}
    options.update(overrides)
    if kind == "postmark":
        token = options.pop("token", api.postmark_token)
        return PostmarkProvider(token, **options)
    if kind == "sendgrid":
        return SendGridProvider(options.pop("key", api.sendgrid_key), **options)
    if kind == "mailgun":
        key = options.pop("key", api.mailgun_key)
        return MailgunProvider(key, options.pop("domain", api.mailgun_domain), **options)
    return SESProvider(
        api.aws_region,
        api.aws_access_key_id,
        options.pop("secret", api.aws_secret_access_key),
        **options,
    )
