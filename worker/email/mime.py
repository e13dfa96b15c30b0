"""The one message builder: RFC 5322 bytes, the SMTP envelope and the JSON-API fields,
all from the same normalised inputs. Every provider and ``crosssell preview`` use it.

What it guarantees (docs/emails.md, "What the builder guarantees"):

* **Addresses.** Every address goes through :mod:`triggers.addresses` (Reply-To may
  carry a display name, as ``Name <address>``):
  exactly one mailbox or :class:`~triggers.addresses.InvalidAddress`, so nothing but a
  single mailbox reaches ``To:`` or ``RCPT TO``. Domains go out as IDNA A-labels
  (``ana@xn--exmple-cua.ro``). A UTF-8 local part goes out as UTF-8 (RFC 6532 section 3.2)
  and marks the message as needing SMTPUTF8 (:attr:`OutgoingEmail.needs_smtputf8`); a
  provider that cannot carry it refuses with ``UnsupportedAddress``.
* **Headers.** A value with CR, LF or NUL is refused (:class:`HeaderInjection`). Display
  names and the subject have runs of whitespace collapsed to one space and are then
  written either as they are (printable ASCII that fits on a line) or as RFC 2047
  encoded-words made by the standard library's ``email.header.Header``: each
  encoded-word at most 75 characters (RFC 2047 section 2), every header line at most 76
  octets (under RFC 5322's 78), except a line holding nothing but one address or URL,
  which has no whitespace to fold at (still under RFC 5322's 998: an address is at
  most 254 octets).
* **Bodies.** Only CR, LF and CRLF end a line (RFC 5322 section 2.1; Python's
  ``str.splitlines`` also splits on U+2028, U+0085, VT, FF, FS, GS, RS, which would corrupt
  them). Each part is UTF-8, quoted-printable by ``binascii.b2a_qp`` (RFC 2045 section
  6.7: lines of at most 76 characters, every control character but TAB encoded), with CRLF
  line ends and a final line end.
* **Text.** A lone surrogate (possible in JSON input) becomes U+FFFD; nothing is refused
  for its characters.

The structure (``multipart/alternative`` of ``text/plain`` then ``text/html``) is written
directly rather than through ``email.generator``: the pieces it joins come from the
standard library, and tests parse the result with ``email.parser`` (``policy.default``)
over generated names, addresses, subjects and bodies across the whole Unicode range.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime
from email import base64mime, quoprimime
from email.header import Header
from email.utils import format_datetime, quote
from functools import lru_cache
from urllib.parse import quote as url_quote

from triggers.addresses import EmailAddress, InvalidAddress, parse_address, parse_mailbox
from worker.email.message import Mailbox, MessageContent, OutgoingEmail
from worker.email.rendering import RenderedEmail

__all__ = [
    "Envelope",
    "HeaderInjection",
    "InvalidAddress",
    "build_email",
    "build_message",
    "clear_caches",
    "feedback_id_for",
    "format_mailbox",
    "message_content",
    "message_id_for",
]

MAX_LINE = 76  # every header line; encoded-words thus fit RFC 2047's 75
CRLF = "\r\n"
_LINE_ENDS = re.compile(r"\r\n|\r|\n")
_SURROGATE = re.compile("[\ud800-\udfff]")
# An ASCII phrase or subject is written as it is only if printable and free of anything
# an RFC 2047 decoder would read as an encoded-word (see _foldable).
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
# RFC 5322 section 3.2.3 atext plus the space between words: such a name needs no quotes.
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*")
# RFC 6068 section 2: what may stay unescaped in a mailto: local part.
_MAILTO_SAFE = "!$'()*+,;=-._~"
# URI characters (RFC 3986 section 2) but for "<" ">" and space, which end the header's <…>.
_URI_TEXT = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")


class HeaderInjection(ValueError):
    """A header value tried to start a new line."""


def message_id_for(send_id: int, domain: str, key: bytes) -> str:
    """``<26 base32 characters@domain>``: an HMAC-SHA256 of the send id under ``key``.

    Unique per send (RFC 5322 §3.6.4) and stable for a given key, yet it shows no
    sequence a recipient could read send volumes from. The worker stores it with the
    claim and reuses the stored one on every retry, so a key rotation never changes the
    Message-ID of a send already tried; webhooks find the send by the stored value.
    ``domain`` should be the sender's (A-label form), which is what receivers expect.
    """
    mac = hmac.new(key, f"message-id:{send_id}".encode(), hashlib.sha256).digest()
    token = base64.b32encode(mac[:16]).decode("ascii").rstrip("=").lower()
    return f"<{token}@{domain}>"


def feedback_id_for(campaign_id: str, campaign_kind: str, sender_id: str) -> str:
    """The ``Feedback-ID`` value Gmail's feedback loop aggregates complaints by:
    ``campaign:kind:SenderId`` (Google's format ``a:b:c:SenderId``, SenderId 5-15
    characters, identifiers grouping mail, never one message or person).

    The campaign is an opaque 10-hex tag (SHA-256 of its id), so recipients do not see
    internal campaign names; ``crosssell explain`` prints a campaign's tag.
    """
    tag = hashlib.sha256(f"crosssell-campaign:{campaign_id}".encode()).hexdigest()[:10]
    return f"{tag}:{campaign_kind.replace('_', '-')}:{sender_id}"


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
    feedback_id: str


def _clean(value: str, name: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise HeaderInjection(f"{name} contains a line break")
    return value


def _unpaired(text: str) -> str:
    """Lone surrogates (JSON's ``"\\ud800"`` decodes to one) have no UTF-8 form: each
    becomes U+FFFD REPLACEMENT CHARACTER instead of failing the send.

    Surrogates are the only code points UTF-8 cannot encode, so a text that encodes has
    none: the encoder, a C loop, tells that in a tenth of the time the regular
    expression takes to scan a 5 kB HTML part (measured, docs/performance.md)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def single_line(value: str, name: str) -> str:
    """A display name or subject as it will read back: CR, LF, NUL refused; every run of
    whitespace (Unicode's, as ``str.split`` sees it: also U+2028, U+0085, VT, FF, FS…)
    one space, none at either end. Line and paragraph separators mean nothing in a
    one-line field, and readers (the standard library's among them) strip them anyway."""
    return " ".join(_clean(_unpaired(value), name).split())


class AddressInjection(InvalidAddress, HeaderInjection):
    """An address with a line break: both unusable and an attempt to add a header."""


def _address(value: str, header: str) -> EmailAddress:
    try:
        _clean(value, header)
    except HeaderInjection as exc:
        raise AddressInjection(str(exc)) from None
    try:
        return parse_address(value)
    except InvalidAddress as exc:
        raise InvalidAddress(f"{header}: {exc}") from None


def _plain(text: str) -> bool:
    return _PRINTABLE.fullmatch(text) is not None and "=?" not in text


def _header_lines(text: str, charset: str, header: str) -> list[str]:
    """``email.header.Header``'s folding of ``text``: the header's lines, unindented."""
    folded = Header(text, charset, header_name=header).encode(
        splitchars=" ", maxlinelen=MAX_LINE, linesep="\n"
    )
    return [line.strip(" ") for line in folded.split("\n")]


_CHROME = len("=?utf-8?q??=")
"""Characters of an encoded-word that are not its payload (``email.charset``: the charset
name plus RFC2047_CHROME_LEN)."""
_Q_LITERAL = bytes(octet for octet in range(256) if quoprimime.header_length(bytes([octet])) == 1)
"""Octets the RFC 2047 "Q" encoding writes as one character; every other takes three."""
_Q_LENGTH = tuple(quoprimime.header_length(bytes([octet])) for octet in range(128))


def _encoded(text: str, header: str) -> list[str]:
    """``text`` as RFC 2047 encoded-words (UTF-8), folded: the header's lines, unindented.

    Exactly what ``Header(text, "utf-8", header_name=header).encode(...)`` writes (a
    property test compares the two over arbitrary text): the shorter of "B" and "Q" for
    the whole text (``email.charset``'s SHORTEST), then as many characters per line as
    fit, never splitting one, the header name counted on the first line; so with lines of
    at most 76 octets each encoded-word is at most 75. ``Header`` measures every prefix
    of the text anew (quadratic: 72 µs for a 70-character Romanian subject, measured);
    here each character is counted once. Text the fast path does not cover (empty, or
    with a line boundary, which the callers never pass) goes to ``Header`` itself.
    """
    room = MAX_LINE - len(header) - 2 - _CHROME
    if not text or room < 12 or text.splitlines() != [text]:
        return _header_lines(text, "utf-8", header)
    data = text.encode("utf-8")
    q_length = len(data) + 2 * len(data.translate(None, _Q_LITERAL))
    b_length = (len(data) + 2) // 3 * 4
    base64 = b_length < q_length
    encode = base64mime.header_encode if base64 else quoprimime.header_encode
    if (b_length if base64 else q_length) <= room:
        return [encode(data, "utf-8")]
    # One character takes at most 4 octets: 12 characters in Q, 8 in B, so the first
    # always fits a line (room >= 12), as Header's own loop then never yields None.
    lines: list[str] = []
    start = 0
    used = 0  # B: octets on the line; Q: encoded characters on the line
    for index, char in enumerate(text):
        code = ord(char)
        octets = 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
        cost = octets if base64 else _Q_LENGTH[code] if code < 0x80 else 3 * octets
        total = used + cost
        if ((total + 2) // 3 * 4 if base64 else total) > room:
            lines.append(encode(text[start:index].encode("utf-8"), "utf-8"))
            start, total = index, cost
            room = MAX_LINE - 1 - _CHROME  # a continuation line: one space, no name
        used = total
    lines.append(encode(text[start:].encode("utf-8"), "utf-8"))
    return lines


def _folded_ascii(text: str, header: str) -> list[str]:
    """Printable ASCII folded at its spaces (each fold keeps the space it is made at).

    A text that fits on the header's first line is that line as it is (what ``Header``
    writes then; a property test compares the two), without ``Header``'s 6-12 µs."""
    if len(header) + 2 + len(text) <= MAX_LINE and text.isascii() and text.isprintable():
        return [text.strip(" ")]
    return _header_lines(text, "us-ascii", header)


def _foldable(text: str, header: str) -> bool:
    """Written as it is: printable ASCII, nothing a decoder would take for an encoded-word,
    and no word too long to fit on a line of its own."""
    room = MAX_LINE - len(header) - 4
    return _plain(text) and all(len(word) <= room for word in text.split(" "))


@lru_cache(maxsize=4096)
def _phrase(name: str, header: str) -> tuple[str, ...]:
    """A display name (RFC 5322 section 3.2.5 phrase) as header lines, name already clean:
    atoms, else a quoted-string, else (non-ASCII) RFC 2047 encoded-words.

    Cached apart from the address: a name shared by many recipients (first names, the
    sender's) is folded or encoded by ``email.header.Header`` once, not once per address."""
    if _foldable(name, header):
        text = name if _ATOM_PHRASE.fullmatch(name) else f'"{quote(name)}"'
        return tuple(_folded_ascii(text, header))
    return tuple(_encoded(name, header))


@lru_cache(maxsize=4096)
def format_mailbox(name: str, wire: str, header: str) -> tuple[str, ...]:
    """``Name <local@a-label>`` (or the bare address without a name) as header lines;
    ``wire`` is an address :mod:`triggers.addresses` has parsed (``EmailAddress.wire``)."""
    if not name:
        return (wire,)
    lines = list(_phrase(name, header))
    last = len(lines[-1]) + (len(header) + 2 if len(lines) == 1 else 1)
    if last + 3 + len(wire.encode("utf-8")) <= MAX_LINE:
        lines[-1] = f"{lines[-1]} <{wire}>"
    else:
        lines.append(f"<{wire}>")
    return tuple(lines)


@lru_cache(maxsize=4096)
def _unstructured(value: str, header: str) -> tuple[str, ...]:
    """An unstructured value (the subject), already single-line."""
    if _foldable(value, header):
        return tuple(_folded_ascii(value, header)) if value else ("",)
    return tuple(_encoded(value, header))


def _header(name: str, lines: tuple[str, ...]) -> str:
    return f"{name}: " + (CRLF + " ").join(lines) + CRLF


def _mailto(value: str) -> str:
    """``mailto:`` + the address (local part percent-encoded, A-label domain, RFC 6068
    section 2) + any ``?hfields`` as given, which must already be a URI's ASCII."""
    target, mark, query = _clean(value, "List-Unsubscribe").partition("?")
    address = _address(target, "List-Unsubscribe")
    if not _URI_TEXT.fullmatch(query):
        raise HeaderInjection("the List-Unsubscribe mailto query must be percent-encoded ASCII")
    local = url_quote(address.local_part, safe=_MAILTO_SAFE)
    return f"mailto:{local}@{address.ascii_domain}{mark}{query}"


def body_lines(text: str) -> str:
    """The text with CRLF, CR and LF as the only line ends, turned into LF, and a final
    line end (RFC 5322 section 2.3 wants the body as lines)."""
    return _lf_lines(_unpaired(text))


def _lf_lines(text: str) -> str:
    """:func:`body_lines` of a text already free of lone surrogates. Without a CR the
    line ends are LF already: the substitution, which rebuilds the whole text even when
    it replaces LF by LF, is skipped."""
    normal = _LINE_ENDS.sub("\n", text) if "\r" in text else text
    return normal if normal.endswith("\n") else normal + "\n"


_LINE_ENDS_UTF8 = re.compile(rb"\r\n|\r|\n")


def _utf8(text: str) -> tuple[str, bytes]:
    """The text with lone surrogates replaced (:func:`_unpaired`) and its UTF-8 bytes:
    one encoding serves both the check and the quoted-printable body."""
    try:
        return text, text.encode("utf-8")
    except UnicodeEncodeError:
        clean = _SURROGATE.sub("\ufffd", text)
        return clean, clean.encode("utf-8")


def _qp(data: bytes) -> bytes:
    """A body's UTF-8 bytes as quoted-printable with CRLF line ends (:func:`body_lines`'
    line ends first: CR or LF never occur inside a UTF-8 sequence, so the bytes split
    where the text does).

    The encoder is the standard library's C one, ``binascii.b2a_qp``, which ``quopri``
    also calls; ``email.quoprimime.body_encode`` writes the same encoding in Python.
    Bytes throughout: no decoding of the encoded body and no encoding of it again."""
    if b"\r" in data:
        data = _LINE_ENDS_UTF8.sub(b"\n", data)
    if not data.endswith(b"\n"):
        data += b"\n"
    encoded = binascii.b2a_qp(data, istext=True)
    if b"=09\n" in encoded or b"=20\n" in encoded:
        lines = encoded.decode("ascii").split("\n")
        encoded = "\n".join(_within_76(line) for line in lines).encode("ascii")
    return encoded.replace(b"\n", b"\r\n")


_QP_TOKEN = re.compile(r"=[0-9A-F]{2}|.", re.DOTALL)


def _within_76(line: str) -> str:
    """``line`` cut with soft line breaks (``=`` at the end) into lines of at most 76
    characters, never inside an ``=XX`` escape (RFC 2045 section 6.7, rule 5).

    ``b2a_qp`` leaves a line of 77 or 78 characters when it ends in a space or tab that it
    encodes (``=20``/``=09``) after 74 characters: it counts the character, not its
    three-character escape."""
    if len(line) <= 76:
        return line
    pieces: list[str] = []
    current = ""
    tokens = _QP_TOKEN.findall(line)
    for index, token in enumerate(tokens):
        last = index == len(tokens) - 1
        # A line that goes on needs room for its soft break "=": 75 characters of text.
        if len(current) + len(token) > (76 if last else 75):
            pieces.append(current + "=")
            current = ""
        current += token
    pieces.append(current)
    return "\n".join(pieces)


def _boundary(message_id: str) -> str:
    # "=_" never occurs in quoted-printable output ("=" is always "=3D" there).
    return "=_cs_" + hashlib.sha256(message_id.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class _Normalised:
    """The inputs after every check: what both the bytes and the fields are made from."""

    sender_name: str
    sender: EmailAddress
    recipient_name: str
    recipient: EmailAddress
    reply_to: EmailAddress | None
    reply_to_name: str
    subject: str
    unsubscribe: str
    message_id: str
    feedback_id: str


def _normalise(envelope: Envelope, email: RenderedEmail) -> _Normalised:
    reply_name, reply_to = "", None
    if envelope.reply_to:
        try:
            reply_name, reply_to = parse_mailbox(_clean(envelope.reply_to, "Reply-To"))
        except HeaderInjection as exc:
            raise AddressInjection(str(exc)) from None
        except InvalidAddress as exc:
            raise InvalidAddress(f"Reply-To: {exc}") from None
    url = _clean(envelope.unsubscribe_url, "List-Unsubscribe")
    if not _URI_TEXT.fullmatch(url):
        raise HeaderInjection("the List-Unsubscribe URL must be a URI (ASCII, no spaces or <>)")
    return _Normalised(
        sender_name=single_line(envelope.sender_name, "From"),
        sender=_address(envelope.sender_address, "From"),
        recipient_name=single_line(envelope.recipient_name, "To"),
        recipient=_address(envelope.recipient_address, "To"),
        reply_to=reply_to,
        reply_to_name=single_line(reply_name, "Reply-To"),
        subject=single_line(email.subject, "Subject"),
        unsubscribe=f"<{url}>, <{_mailto(envelope.unsubscribe_mailto)}>",
        message_id=_clean(envelope.message_id, "Message-ID"),
        feedback_id=_clean(envelope.feedback_id, "Feedback-ID"),
    )


def _extra_headers(normal: _Normalised) -> tuple[tuple[str, str], ...]:
    return (
        ("Message-ID", normal.message_id),
        ("List-Unsubscribe", normal.unsubscribe),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("Feedback-ID", normal.feedback_id),
    )


def _bytes(normal: _Normalised, envelope: Envelope, text: bytes, html: bytes) -> bytes:
    """The message; ``text`` and ``html`` are the bodies' UTF-8 (see :func:`_utf8`)."""
    boundary = _boundary(normal.message_id)
    boundary_bytes = boundary.encode("ascii")
    url, _, mailto = normal.unsubscribe.partition(", ")
    parts = [
        _header("From", format_mailbox(normal.sender_name, normal.sender.wire, "From")),
        _header("To", format_mailbox(normal.recipient_name, normal.recipient.wire, "To")),
    ]
    if normal.reply_to is not None:
        reply_to = format_mailbox(normal.reply_to_name, normal.reply_to.wire, "Reply-To")
        parts.append(_header("Reply-To", reply_to))
    parts += [
        _header("Subject", _unstructured(normal.subject, "Subject")),
        f"Date: {format_datetime(envelope.date)}\r\n",
        f"Message-ID: {normal.message_id}\r\n",
        f"List-Unsubscribe: {url},\r\n {mailto}\r\n",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
        f"Feedback-ID: {normal.feedback_id}\r\n",
        "MIME-Version: 1.0\r\n",
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n',
        "\r\n",
    ]
    # ASCII but for a UTF-8 local part, which RFC 6532 writes as it is.
    message = ["".join(parts).encode("utf-8")]
    for subtype, body in ((b"plain", text), (b"html", html)):
        message += [
            b'--%s\r\nContent-Type: text/%s; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" % (boundary_bytes, subtype),
            _qp(body),
            b"\r\n",
        ]
    message.append(b"--%s--\r\n" % boundary_bytes)
    return b"".join(message)


def build_email(envelope: Envelope, email: RenderedEmail) -> OutgoingEmail:
    """The message as bytes, as the SMTP envelope and as JSON-API fields, ready to send.

    Raises :class:`HeaderInjection` for a line break in any header value and
    :class:`~triggers.addresses.InvalidAddress` for an address that is not one mailbox.
    """
    normal = _normalise(envelope, email)
    (text, text_utf8), (html, html_utf8) = _utf8(email.text), _utf8(email.html)
    content = MessageContent(
        sender=Mailbox(normal.sender.wire, normal.sender_name),
        recipient=Mailbox(normal.recipient.wire, normal.recipient_name),
        reply_to=(
            Mailbox(normal.reply_to.wire, normal.reply_to_name)
            if normal.reply_to is not None
            else None
        ),
        subject=normal.subject,
        html=html,
        text=text,
        headers=_extra_headers(normal),
    )
    return OutgoingEmail(
        envelope.send_id,
        normal.message_id,
        normal.sender.wire,
        normal.recipient.wire,
        _bytes(normal, envelope, text_utf8, html_utf8),
        content,
    )


def build_message(envelope: Envelope, email: RenderedEmail) -> bytes:
    """Only the RFC 5322 bytes of :func:`build_email` (previews, tests)."""
    return build_email(envelope, email).data


def message_content(envelope: Envelope, email: RenderedEmail) -> MessageContent:
    """Only the fields of :func:`build_email`, for JSON email APIs."""
    content = build_email(envelope, email).content
    assert content is not None
    return content


def clear_caches() -> None:
    """Forget every cached address and header line (benchmarks measure cold messages)."""
    parse_address.cache_clear()
    parse_mailbox.cache_clear()
    format_mailbox.cache_clear()
    _phrase.cache_clear()
    _unstructured.cache_clear()


def mailbox_header_value(name: str, address: str) -> str:
    """``Name <address>`` as our From/To header says it, unfolded: for JSON APIs that take
    a formatted mailbox (Postmark). ``address`` is the wire form the builder produced."""
    return " ".join(format_mailbox(single_line(name, "From"), _clean(address, "From"), "From"))
