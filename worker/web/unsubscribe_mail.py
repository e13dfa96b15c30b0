"""``crosssell unsubscribe-mail``: the mail receiver behind the List-Unsubscribe mailto.

Every email's ``List-Unsubscribe`` header carries, next to the https link, a mailto URI
(RFC 2369 §3.2, RFC 6068) whose subject holds the customer's signed token::

    <mailto:unsubscribe@shop.example?subject=unsubscribe%20k1.QzEwMDEfYWxs.Xx…>

The token is in the subject, not in a ``+tag`` of the local part: a token names a
customer id of up to 128 characters, so it can be far longer than the 64 octets a local
part may have (RFC 5321 §4.5.3.1.1); and base64url is case-sensitive while many MTAs
fold the case of local parts or need configuration before they deliver ``+tag``
addresses at all. A mail client sends the subject as given (RFC 6068 §2).

The receiver is a small SMTP (or LMTP, RFC 2033) server, built on aiosmtpd, that an MX
or a transport map on the shop's mail server forwards the unsubscribe address to. For
each message it finds the first genuine token in the ``Subject`` (signed with a
configured key, :func:`worker.email.tokens.verify`), withdraws that customer's consent with
source ``mailto`` (the consent history, :mod:`worker.records.customers`) and suppresses the
address, exactly as the one-click POST does. A message without a genuine token — forged,
tampered, signed with an unknown key, or none at all — changes nothing and gets the same
``250`` answer as a genuine one, so the answers say nothing about which tokens exist.
Only the unsubscribe address is accepted as a recipient (``550`` otherwise): this is not
a relay or a mailbox.
"""

from __future__ import annotations

import asyncio
import logging
import re
from email import message_from_bytes, policy
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from worker.core.log_format import fields
from worker.email.tokens import verify
from worker.process.runtime import Runtime
from worker.web.web import unsubscribe_customer

if TYPE_CHECKING:
    from aiosmtpd.controller import Controller

log = logging.getLogger(__name__)

# What a mailto unsubscribe request may weigh: a client-made message is a few KiB; the
# server answers 552 above this (RFC 5321 §4.5.3.1.10 lets a server set its limit).
MAX_MESSAGE_BYTES = 256 * 1024
# ``<key id>.<payload>.<signature>``, each part base64url (worker.email.tokens).
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
ACCEPTED = "250 2.0.0 OK: request received"


def customer_in(keys: dict[str, bytes], content: bytes) -> str | None:
    """The customer id of the first genuine token in the message's Subject; None if
    there is none (the message is parsed as RFC 5322, encoded words decoded)."""
    message = message_from_bytes(content, policy=policy.default)
    subject = str(message.get("Subject", ""))
    for candidate in _TOKEN.findall(subject):
        found = verify(keys, candidate)
        if found is not None:
            return found[0]
    return None


class UnsubscribeHandler:
    """aiosmtpd handler: accept mail for the unsubscribe address and act on its token."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.address = runtime.settings.unsubscribe_mailto.partition("?")[0].strip().lower()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if address.strip().lower() != self.address:
            return "550 5.1.1 No such mailbox: this server only takes unsubscribe requests"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        status = await self._act_on(envelope)
        if getattr(server, "speaks_lmtp", False):
            # LMTP answers the final dot once per accepted recipient, in their order
            # (RFC 2033 section 4.2); one answer for two RCPTs leaves the client waiting.
            # aiosmtpd writes the status as given: one line per recipient.
            return "\r\n".join([status] * max(len(envelope.rcpt_tos), 1))
        return status

    async def _act_on(self, envelope: Any) -> str:
        content = bytes(envelope.original_content or envelope.content or b"")
        customer_id = customer_in(self.runtime.unsubscribe_keys, content)
        if customer_id is None:
            log.info("mailto unsubscribe without a genuine token: nothing changed")
            return ACCEPTED
        try:
            known = await asyncio.to_thread(
                unsubscribe_customer, self.runtime, customer_id, "mailto"
            )
        except SQLAlchemyError:
            log.exception("mailto unsubscribe could not be stored; the sender will retry")
            return "451 4.3.0 Temporarily unable to process the request, try again later"
        log.info(
            "mailto unsubscribe of customer %s: %s",
            customer_id,
            "consent withdrawn, address suppressed" if known else "unknown customer, nothing",
            extra=fields(customer_id=customer_id, outcome="unsubscribed" if known else "unknown"),
        )
        return ACCEPTED


def receiver(runtime: Runtime, host: str, port: int, *, lmtp: bool = False) -> Controller:
    """The receiver as an aiosmtpd controller (not started): ``start()`` serves it on its
    own thread and event loop, ``stop()`` ends it."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.lmtp import LMTP
    from aiosmtpd.smtp import SMTP

    class CrosssellLMTP(LMTP):
        speaks_lmtp = True

    class LMTPController(Controller):
        def factory(self) -> SMTP:
            return CrosssellLMTP(self.handler, **self.SMTP_kwargs)

    # aiosmtpd logs every SMTP command and the sender's address at INFO ("mail.log"): the
    # address is personal data, and nothing there is needed to run the receiver.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    controller_class = LMTPController if lmtp else Controller
    return controller_class(
        UnsubscribeHandler(runtime),
        hostname=host,
        port=port,
        data_size_limit=MAX_MESSAGE_BYTES,
        ident="crosssell unsubscribe receiver",
    )


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:2525`` for IPv6) as (host, port); ValueError otherwise."""
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)
