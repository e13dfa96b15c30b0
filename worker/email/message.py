"""The message a provider is handed: envelope, RFC 5322 bytes and, for APIs that build the
MIME themselves, the same message as fields.

Built by :mod:`worker.email.mime`; taken by every provider (:mod:`worker.providers.base`
re-exports these types). They live here, below the providers, so that building a message
never imports a provider and a provider can format a mailbox as the builder does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mailbox:
    """An address with an optional display name, as JSON email APIs take them."""

    address: str
    name: str = ""

    def formatted(self) -> str:
        """``Name <address>`` exactly as our MIME's From/To says it, unfolded (a non-ASCII
        name as RFC 2047 encoded-words), for APIs that take a formatted mailbox."""
        from worker.email.mime import mailbox_header_value  # mime imports this module

        return mailbox_header_value(self.name, self.address)


@dataclass(frozen=True, slots=True)
class MessageContent:
    """The message as fields, for APIs that build the MIME themselves (Postmark, SendGrid).

    Made by :func:`worker.email.mime.message_content` from the same inputs as the MIME bytes,
    so both say the same thing. ``headers`` are the ones we add beyond the addressing
    fields: ``Message-ID``, ``List-Unsubscribe``, ``List-Unsubscribe-Post``, ``X-…``.
    """

    sender: Mailbox
    recipient: Mailbox
    reply_to: Mailbox | None
    subject: str
    html: str
    text: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """A fully built message: the envelope addresses and the RFC 5322 bytes.

    ``content`` is the same message as fields; providers that send raw MIME (file, SMTP,
    Mailgun, SES) never read it, so it may be absent where only bytes exist.
    """

    send_id: int
    message_id: str
    sender: str
    recipient: str
    data: bytes
    content: MessageContent | None = None

    @property
    def needs_smtputf8(self) -> bool:
        """A UTF-8 local part in the envelope or headers (RFC 6531/6532): only a server
        offering SMTPUTF8, or an API documented to accept it, can take the message."""
        return not (self.sender.isascii() and self.recipient.isascii() and self.data.isascii())
