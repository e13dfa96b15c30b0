"""Email addresses: the one parsing and normalisation step for every address crosssell
stores, suppresses or sends to.

An address is a single ``local-part@domain`` mailbox (RFC 5322 section 3.4.1 addr-spec,
extended to UTF-8 by RFC 6532 section 3.2), checked by ``email-validator`` without any
DNS lookup. Anything else is refused with :class:`InvalidAddress`: a display name, angle
brackets, a list (``a@x.com>,<evil``), a quoted or obsolete local part, an IP literal, a
domain without a dot, whitespace or a line break inside.

Normalisation (what is stored and compared):

* the domain is mapped with IDNA 2008 and UTS #46 (lowercased, NFC, A-labels decoded), so
  ``ana@EXÄMPLE.ro`` and ``ana@xn--exmple-cua.ro`` are the same ``ana@exämple.ro``;
  :attr:`EmailAddress.ascii_domain` is its ASCII (A-label) form for headers and SMTP;
* the local part keeps its case (RFC 5321 section 2.4: only the receiving host may fold
  it) and is NFC-normalised (RFC 6532 section 3.1);
* the suppression key additionally lowercases the local part: a suppression must not be
  escaped by writing ``Victim@`` instead of ``victim@``, and every mailbox provider in
  practice treats local parts case-insensitively.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import quote
from functools import lru_cache

from email_validator import EmailNotValidError, ValidatedEmail, validate_email
from email_validator.rfc_constants import (
    CASE_INSENSITIVE_MAILBOX_NAMES,
    DOT_ATOM_TEXT,
    LOCAL_PART_MAX_LENGTH,
)

MAX_ADDRESS_LENGTH = 320  # the schema's limit; email-validator enforces RFC 5321's 254 octets
MAX_PATH_OCTETS = 254  # RFC 5321 section 4.5.3.1.3: a path of 256 with its brackets
_CACHE_SIZE = 8192
_PLAIN_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+( [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


class InvalidAddress(ValueError):
    """Not a single usable email address; the message says why, without the address."""


@dataclass(frozen=True, slots=True)
class EmailAddress:
    """A parsed, normalised address. ``local_part`` may hold UTF-8 (then sending it needs
    SMTPUTF8, RFC 6531); ``domain`` is the Unicode form, ``ascii_domain`` its A-labels."""

    local_part: str
    domain: str
    ascii_domain: str

    @property
    def normalized(self) -> str:
        """The canonical text: what crosssell stores, e.g. ``Ana@exämple.ro``."""
        return f"{self.local_part}@{self.domain}"

    @property
    def wire(self) -> str:
        """The form for headers and the SMTP envelope: ASCII domain, local part as is."""
        return f"{self.local_part}@{self.ascii_domain}"

    @property
    def needs_smtputf8(self) -> bool:
        """A non-ASCII local part has no ASCII form: only SMTPUTF8 can carry it."""
        return not self.local_part.isascii()

    @property
    def suppression_key(self) -> str:
        """The suppression list's key: normalised, local part lowercased too."""
        return f"{self.local_part.lower()}@{self.domain}"


@lru_cache(maxsize=_CACHE_SIZE)
def _domain(text: str) -> tuple[str, str]:
    """(Unicode form, A-label form) of a domain, checked by email-validator. Cached apart
    from whole addresses: customers share few domains, and IDNA mapping is the costly
    step (about 0.1 ms for an IDN)."""
    found = _validate(f"postmaster@{text}", "the part after the @-sign")
    if found.ascii_domain is None:  # pragma: no cover - domain literals are refused
        raise InvalidAddress("the domain has no ASCII form")
    return found.domain, found.ascii_domain


def _plain_local_part(local: str) -> str | None:
    """The local part as email-validator would return it, without calling it, when that
    answer is certain: a plain ASCII dot-atom (RFC 5322 section 3.2.3, the library's own
    ``DOT_ATOM_TEXT``) of at most 64 characters that is not one of the role names it
    lowercases (RFC 2142). Such a local part is returned unchanged by
    ``validate_email`` (no quoting, nothing to normalise, no character it refuses), so
    this saves the whole parse of a made-up address per event. None: ask the library."""
    if (
        len(local) > LOCAL_PART_MAX_LENGTH
        or not local.isascii()
        or DOT_ATOM_TEXT.match(local) is None
        or local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES
    ):
        return None
    return local


def _local_part(local: str) -> str:
    """The validated, normalised local part (email-validator's checks)."""
    plain = _plain_local_part(local)
    if plain is not None:
        return plain
    return _validate(f"{local}@example.com", "the part before the @-sign").local_part


def _validate(candidate: str, part: str) -> ValidatedEmail:
    try:
        return validate_email(
            candidate,
            check_deliverability=False,
            allow_smtputf8=True,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
            allow_empty_local=False,
            strict=True,  # RFC 5321 limits too: 64-octet local part
        )
    except EmailNotValidError as exc:
        raise InvalidAddress(f"{part}: {exc}") from None


@lru_cache(maxsize=_CACHE_SIZE)
def parse_address(text: str) -> EmailAddress:
    """Parse one address, surrounding spaces and tabs ignored.

    Raises :class:`InvalidAddress` for anything that is not exactly one mailbox. The error
    message comes from email-validator and names the offending characters, never the
    address as a whole. The local part is checked against a fixed ASCII domain and the
    domain on its own (cached); together they are email-validator's checks, plus RFC 5321
    section 4.5.3.1.3's limit on the whole address (254 octets).
    """
    if not isinstance(text, str):
        raise InvalidAddress("an email address must be a string")
    candidate = text.strip(" \t")
    if len(candidate) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress(f"longer than {MAX_ADDRESS_LENGTH} characters")
    local, at, domain = candidate.rpartition("@")
    if not at or not local or not domain:
        raise InvalidAddress("an email address is local-part@domain")
    local_part = _local_part(local)
    unicode_domain, ascii_domain = _domain(domain)
    if len(f"{local_part}@{ascii_domain}".encode()) > MAX_PATH_OCTETS:
        raise InvalidAddress(f"longer than {MAX_PATH_OCTETS} octets (RFC 5321)")
    return EmailAddress(local_part, unicode_domain, ascii_domain)


def canonical_address(text: str) -> str:
    """The stored form of an address (see the module docstring); InvalidAddress if unusable."""
    return parse_address(text).normalized


def suppression_key(text: str) -> str:
    """The key the suppression list is written and read with; InvalidAddress if unusable."""
    return parse_address(text).suppression_key


def lookup_key(text: str) -> str:
    """The suppression key, or for an address stored before validation existed and no
    longer parseable, its trimmed lowercase text: a lookup must never crash on old data."""
    try:
        return suppression_key(text)
    except InvalidAddress:
        return text.strip().lower()


@lru_cache(maxsize=_CACHE_SIZE)
def parse_mailbox(text: str) -> tuple[str, EmailAddress]:
    """A mailbox that may carry a display name: ``Name <local@domain>``, ``"Doe, J."
    <a@b.ro>`` or a bare address. Returns (display name or "", address); exactly one
    mailbox or :class:`InvalidAddress`, as for :func:`parse_address`."""
    candidate = text.strip(" \t") if isinstance(text, str) else text
    if isinstance(candidate, str) and not candidate.endswith(">"):
        return "", parse_address(candidate)
    try:
        found = validate_email(
            candidate,
            check_deliverability=False,
            allow_smtputf8=True,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=True,
            allow_empty_local=False,
            strict=True,  # RFC 5321 limits too: 64-octet local part
        )
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    address = parse_address(f"{found.local_part}@{found.domain}")
    return found.display_name or "", address


def canonical_mailbox(text: str) -> str:
    """The stored form of a mailbox setting: ``Name <canonical address>`` or the address."""
    name, address = parse_mailbox(text)
    if not name:
        return address.normalized
    # Quoted unless plain words (RFC 5322 section 3.2.5), so a non-ASCII or comma-bearing
    # name parses back the same.
    shown = name if _PLAIN_NAME.fullmatch(name) else f'"{quote(name)}"'
    return f"{shown} <{address.normalized}>"
