"""Keep customers' addresses out of log lines.

Logs are copied to places the customer database is not (log shippers, tickets, chat),
so a log line names a customer by id or by :func:`address_ref`, never by address or
name. Texts that come from outside — SMTP replies ("452 4.2.2 <ana@example.ro>: mailbox
full"), provider error bodies, webhook descriptions — often quote the address, so they
pass through :func:`redact` before they are logged.

``address_ref`` is a short SHA-256 of the lower-cased address: the same address gives
the same reference in every process and log line, so an operator can still follow one
recipient through the logs (and find it with ``crosssell suppressions``), while the line
itself no longer says who it is.
"""

from __future__ import annotations

import hashlib
import re

# Wide on purpose: anything shaped like local@domain.tld in free text. The local part
# takes every RFC 5322 ``atext`` character and dots (SMTPUTF8 letters too); both parts
# stop at the brackets, quotes and separators that surround addresses in SMTP replies.
_LOCAL = r"""[^\s<>()\[\]\\,;:"@]+"""
_LABELS = r"""[^\s<>()\[\]\\,;:"'`@]+\.[^\s<>()\[\]\\,;:"'`@.]+"""
_ADDRESS = re.compile(f"{_LOCAL}@{_LABELS}")


def address_ref(address: str | None) -> str:
    """``addr:`` and 10 hex digits of SHA-256 of the lower-cased address; ``-`` for none."""
    if not address:
        return "-"
    digest = hashlib.sha256(address.strip().lower().encode("utf-8")).hexdigest()
    return f"addr:{digest[:10]}"


def redact(text: object) -> str:
    """``str(text)`` with every address in it replaced by its :func:`address_ref`."""
    return _ADDRESS.sub(lambda match: address_ref(match.group(0)), str(text))


def error_summary(exc: BaseException) -> str:
    """A delivery error for a log line: its kind and reply codes, not the reply's text.

    SMTP and provider replies quote the recipient's address and sometimes their name
    ("451 4.3.0 Ana Popescu <ana@…> deferred"); a name cannot be recognised in free text,
    so when the error has an SMTP/HTTP ``code`` or RFC 3463 ``enhanced`` code only those
    are logged — the full reply stays in the send's ``detail`` column, next to the rest
    of the customer's data. Errors without a code (timeouts, refused connections) carry
    no reply and are logged in full, addresses redacted.
    """
    code, enhanced = getattr(exc, "code", None), getattr(exc, "enhanced", None)
    if code is None and enhanced is None:
        return redact(exc)
    parts = [type(exc).__name__, str(code) if code is not None else "", enhanced or ""]
    return " ".join(part for part in parts if part) + " (the reply is in the send's detail)"
