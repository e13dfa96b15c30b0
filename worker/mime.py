"""Build the RFC 5322 message: multipart/alternative, encoded headers, unsubscribe headers.

Header values are refused if they carry CR or LF, so nothing a customer or marketer
types can add a header; non-ASCII display names and subjects are RFC 2047 encoded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from worker.rendering import RenderedEmail


class HeaderInjection(ValueError):
    """A header value tried to start a new line."""


def _clean(value: str, name: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise HeaderInjection(f"{name} contains a line break")
    return value


def message_id_for(send_id: int, domain: str) -> str:
    """Stable per send: a retry of the same send carries the same Message-ID."""
    tag = hashlib.sha256(f"crosssell-send-{send_id}".encode()).hexdigest()[:12]
    return f"<send-{send_id}.{tag}@{domain}>"


@dataclass(frozen=True, slots=True)
class Envelope:
    send_id: int
    sender_name: str
    sender_address: str
    recipient_name: str
    recipient_address: str
    reply_to: str | None
    date: datetime
    message_id: str
    unsubscribe_url: str
    unsubscribe_mailto: str
    campaign_id: str


def _address(name: str, address: str, header: str) -> Address:
    username, _, domain = _clean(address, header).rpartition("@")
    return Address(display_name=_clean(name, header), username=username, domain=domain)


def build_message(envelope: Envelope, email: RenderedEmail) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = _address(envelope.sender_name, envelope.sender_address, "From")
    message["To"] = _address(envelope.recipient_name, envelope.recipient_address, "To")
    if envelope.reply_to:
        message["Reply-To"] = _clean(envelope.reply_to, "Reply-To")
    message["Subject"] = _clean(email.subject, "Subject")
    message["Date"] = format_datetime(envelope.date)
    message["Message-ID"] = envelope.message_id
    message["List-Unsubscribe"] = (
        f"<{_clean(envelope.unsubscribe_url, 'List-Unsubscribe')}>, "
        f"<mailto:{_clean(envelope.unsubscribe_mailto, 'List-Unsubscribe')}>"
    )
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["X-Crosssell-Campaign"] = _clean(envelope.campaign_id, "campaign")
    message.set_content(email.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(email.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return message.as_bytes()
