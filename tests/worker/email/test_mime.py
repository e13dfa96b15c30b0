"""The one builder, read back by the standard library's parser over the whole Unicode range.

Expectations are derived independently of the builder: names and subjects from the
documented whitespace rule, addresses from the ``idna`` package (UTS #46) and
``unicodedata``, bodies from the three line ends RFC 5322 knows, every line and
encoded-word length from RFC 5322 section 2.1.1 and RFC 2047 section 2.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from email import message_from_bytes, message_from_string, policy
from email.errors import NonASCIILocalPartDefect, NonPrintableDefect
from email.header import Header, decode_header, make_header
from email.message import EmailMessage

import idna
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from triggers.addresses import InvalidAddress
from worker.email import mime
from worker.email.mime import Envelope, HeaderInjection, build_email, build_message, message_id_for
from worker.email.rendering import RenderedEmail

ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def _parse(raw: bytes) -> EmailMessage:
    # A message with a UTF-8 local part carries UTF-8 headers (RFC 6532): parse it as text.
    parsed = (
        message_from_bytes(raw, policy=policy.default)
        if raw.isascii()
        else message_from_string(raw.decode("utf-8"), policy=policy.default)
    )
    assert isinstance(parsed, EmailMessage)
    return parsed


def _phrase_parser_ignores_space_between_encoded_words() -> bool:
    """RFC 2047 section 6.2: whitespace between adjacent encoded-words is not text. The
    ``policy.default`` address parser before CPython gh-128110 keeps it as a space."""
    probe = message_from_bytes(b"To: =?utf-8?q?a?= =?utf-8?q?b?= <x@example.com>\r\n\r\n")
    parsed = message_from_bytes(probe.as_bytes(), policy=policy.default)
    return bool(parsed["To"].addresses[0].display_name == "ab")


STDLIB_PHRASES_OK = _phrase_parser_ignores_space_between_encoded_words()


def _raw_header(raw: bytes, name: str) -> str:
    """The header's value, unfolded (RFC 5322 section 2.2.3), as it is on the wire."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    match = re.search(rf"(?im)^{name}:[ ]?([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head)
    assert match is not None, name
    return match.group(1).replace("\r\n", "")


def _mailbox(raw: bytes, parsed: EmailMessage, name: str) -> tuple[str, str]:
    """(display name, addr-spec) of the one mailbox in header ``name``.

    The structure and the address come from ``policy.default``; the display name too where
    that parser follows RFC 2047 section 6.2, else from ``email.header.decode_header``,
    which does, applied to the phrase before `` <addr-spec>``.
    """
    header = parsed[name]
    # Notes, not faults: a UTF-8 local part (RFC 6532 allows it) and control characters
    # the name was given (decoded from an encoded-word, as they went in).
    notes = (NonASCIILocalPartDefect, NonPrintableDefect)
    defects = [d for d in header.defects if not isinstance(d, notes)]
    assert not defects, (name, header.defects)
    (mailbox,) = header.addresses
    value = _raw_header(raw, name)
    if STDLIB_PHRASES_OK or "=?" not in value:
        return mailbox.display_name, mailbox.addr_spec
    phrase, _, rest = value.rpartition(" <")
    assert rest == f"{mailbox.addr_spec}>"
    decoded = str(make_header(decode_header(phrase)))
    assert decoded.replace(" ", "") == mailbox.display_name.replace(" ", "")
    return decoded, mailbox.addr_spec


def _replaced(text: str) -> str:
    """Lone surrogates (no UTF-8 form) read back as U+FFFD, one each."""
    return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


def _one_line(value: str) -> str:
    """The documented rule for display names and subjects: every run of Unicode
    whitespace is one space, none at the ends."""
    return re.sub(r"\s+", " ", _replaced(value)).strip()


def _body(text: str) -> str:
    """A body as it must read back: CRLF, CR and LF (only those) as LF, a final LF."""
    lines = re.sub("\r\n|\r", "\n", _replaced(text))
    return lines if lines.endswith("\n") else lines + "\n"


def _content(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    return str(part.get_content()).replace("\r\n", "\n")


def _envelope(**values: object) -> Envelope:
    defaults: dict[str, object] = {
        "send_id": 7,
        "sender_name": "Magazinul Ștefăniță",
        "sender_address": "shop@example.ro",
        "recipient_name": "Ioana Țurcanu",
        "recipient_address": "ioana@example.ro",
        "reply_to": "help@example.ro",
        "date": datetime(2026, 11, 17, 10, 30, tzinfo=UTC),
        "message_id": message_id_for(7, "example.ro", b"k" * 32),
        "unsubscribe_url": "https://shop.example/u/k1.abc.def",
        "unsubscribe_mailto": "unsubscribe@example.ro",
        "feedback_id": "a1b2c3d4e5:cross-sell:crosssell",
    }
    defaults.update(values)
    return Envelope(**defaults)  # type: ignore[arg-type]


def _assert_lines(raw: bytes) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in raw.replace(b"\r\n", b""), "bare CR"
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998, line[:80]
    for line in head.split(b"\r\n"):
        # Over 78 only where there is no whitespace to fold at: one address or URL.
        token = line.split(b": ", 1)[-1] if line[:1] not in b" \t" else line.strip()
        assert len(line) <= 78 or not re.search(rb"\s", token), line
    for line in body.split(b"\r\n"):
        assert len(line) <= 76, line  # quoted-printable, RFC 2045 section 6.7 (5)
    for word in ENCODED_WORD.findall(raw):
        assert len(word) <= 75, word


# --- the examples of the issues -----------------------------------------------------------


def test_a_hundred_emoji_each_fold_and_read_back_exactly() -> None:
    name = "😀" * 100 + " " + "🎉" * 100
    raw = build_message(_envelope(recipient_name=name), RenderedEmail("Salut", "<p>x</p>", "x"))
    _assert_lines(raw)
    assert _mailbox(raw, _parse(raw), "To") == (name, "ioana@example.ro")


def test_line_separators_other_than_cr_and_lf_stay_in_the_text() -> None:
    product = "Sleeve\u2028Edition\x85Limited"
    raw = build_message(_envelope(), RenderedEmail("s", f"<p>{product}</p>", product))
    parsed = _parse(raw)
    assert _content(parsed, "plain") == product + "\n"
    assert _content(parsed, "html") == f"<p>{product}</p>\n"


def test_idn_recipient_goes_out_as_a_labels() -> None:
    email = build_email(
        _envelope(recipient_name="Ana", recipient_address="ana@exämple.ro"),
        RenderedEmail("s", "h", "t"),
    )
    assert email.recipient == "ana@xn--exmple-cua.ro"
    assert _raw_header(email.data, "To") == "Ana <ana@xn--exmple-cua.ro>"
    assert not email.needs_smtputf8


def test_utf8_local_part_is_written_as_utf8_and_needs_smtputf8() -> None:
    email = build_email(
        _envelope(recipient_name="José", recipient_address="josé@example.com"),
        RenderedEmail("s", "h", "t"),
    )
    assert email.needs_smtputf8
    assert email.recipient == "josé@example.com"
    assert _mailbox(email.data, _parse(email.data), "To") == ("José", "josé@example.com")


@pytest.mark.parametrize(
    "address",
    [
        "victim@example.com>",
        "a@example.com>,<evil@example.net",
        "a@example.com, b@example.net",
        "Name <a@example.com>",
        "<a@example.com>",
        "a@example.com\r\nBcc: b@example.net",
        "a@b@example.com",
        "a@[127.0.0.1]",
        '"a b"@example.com',
        "",
    ],
)
def test_only_a_single_mailbox_reaches_to(address: str) -> None:
    with pytest.raises((InvalidAddress, HeaderInjection)):
        build_email(_envelope(recipient_address=address), RenderedEmail("s", "h", "t"))


# --- the kinds, over the whole Unicode range ----------------------------------------------

# Anything but the three characters a header value refuses (CR, LF, NUL: tested above).
single_line = st.text(st.characters(exclude_characters="\r\n\x00"), max_size=160)
any_text = st.text(max_size=600)
LOCAL_CHARS = st.characters(
    categories=["Ll", "Lu", "Lo", "Nd"], include_characters="!#$%&'*+-/=?^_`{|}~"
)
DOMAINS = ["example.ro", "EXÄMPLE.ro", "xn--exmple-cua.ro", "bücher.de", "例え.jp", "Shop.Example"]


@st.composite
def addresses(draw: st.DrawFn) -> tuple[str, str]:
    """(address as typed, its wire form from the idna package and NFC)."""
    local = draw(st.text(LOCAL_CHARS, min_size=1, max_size=24))
    domain = draw(st.sampled_from(DOMAINS))
    typed = f"{local}@{domain}"
    try:  # only addresses email-validator calls valid are inputs here
        validate_email(typed, check_deliverability=False)
    except EmailNotValidError:
        assume(False)
    wire = f"{unicodedata.normalize('NFC', local)}@{idna.encode(domain, uts46=True).decode()}"
    return typed, wire


@settings(max_examples=150, deadline=None)
@given(
    sender=single_line,
    recipient=single_line,
    subject=single_line,
    plain=any_text,
    html=any_text,
    to=addresses(),
    sender_address=addresses(),
)
def test_every_message_reads_back_as_given(
    sender: str,
    recipient: str,
    subject: str,
    plain: str,
    html: str,
    to: tuple[str, str],
    sender_address: tuple[str, str],
) -> None:
    envelope = _envelope(
        sender_name=sender,
        sender_address=sender_address[0],
        recipient_name=recipient,
        recipient_address=to[0],
    )
    email = build_email(envelope, RenderedEmail(subject, html, plain))
    raw = email.data
    _assert_lines(raw)
    parsed = _parse(raw)
    assert _mailbox(raw, parsed, "From") == (_one_line(sender), sender_address[1])
    assert _mailbox(raw, parsed, "To") == (_one_line(recipient), to[1])
    assert (email.sender, email.recipient) == (sender_address[1], to[1])
    assert str(parsed["Subject"]) == _one_line(subject)
    assert email.needs_smtputf8 == (not (sender_address[1] + to[1]).isascii())
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert _content(parsed, "plain") == _body(plain)
    assert _content(parsed, "html") == _body(html)
    # The JSON-API fields say what the bytes say.
    content = email.content
    assert content is not None
    assert (content.sender.name, content.sender.address) == _mailbox(raw, parsed, "From")
    assert (content.recipient.name, content.recipient.address) == _mailbox(raw, parsed, "To")
    assert content.subject == str(parsed["Subject"])
    for name, value in content.headers:
        assert " ".join(str(parsed[name]).split()) == value, name
    assert _body(content.text) == _content(parsed, "plain")
    assert _body(content.html) == _content(parsed, "html")


@settings(max_examples=100, deadline=None)
@given(
    field=st.sampled_from(["sender_name", "recipient_name", "feedback_id", "message_id"]),
    before=single_line,
    brk=st.sampled_from(["\r", "\n", "\r\n", "\x00"]),
    after=single_line,
)
def test_a_line_break_in_any_header_value_is_refused(
    field: str, before: str, brk: str, after: str
) -> None:
    with pytest.raises(HeaderInjection):
        build_email(_envelope(**{field: before + brk + after}), RenderedEmail("s", "h", "t"))
    with pytest.raises(HeaderInjection):
        build_email(_envelope(), RenderedEmail(before + brk + after, "h", "t"))


def test_headers_other_than_the_addressing_ones_are_as_before() -> None:
    raw = build_message(_envelope(), RenderedEmail("Salut", "<p>x</p>", "x"))
    parsed = _parse(raw)
    assert parsed["Message-ID"] == message_id_for(7, "example.ro", b"k" * 32)
    assert parsed["Date"] == "Tue, 17 Nov 2026 10:30:00 +0000"
    assert " ".join(str(parsed["List-Unsubscribe"]).split()) == (
        "<https://shop.example/u/k1.abc.def>, <mailto:unsubscribe@example.ro>"
    )
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Feedback-ID"] == "a1b2c3d4e5:cross-sell:crosssell"
    assert "X-Crosssell-Campaign" not in parsed
    assert parsed["Reply-To"].addresses[0].addr_spec == "help@example.ro"
    assert parsed["MIME-Version"] == "1.0"


printable_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=400)


@settings(max_examples=150, deadline=None)
@given(name=printable_ascii, subject=printable_ascii)
def test_ascii_names_and_subjects_of_any_length_fold_and_read_back(name: str, subject: str) -> None:
    """The path that writes ASCII as it is (atoms or a quoted-string, folded at spaces)
    and its fallback to encoded-words for words too long to fold."""
    raw = build_message(_envelope(recipient_name=name), RenderedEmail(subject, "h", "t"))
    _assert_lines(raw)
    parsed = _parse(raw)
    assert _mailbox(raw, parsed, "To") == (_one_line(name), "ioana@example.ro")
    assert str(parsed["Subject"]) == _one_line(subject)


@pytest.mark.parametrize(
    "subject", ["x" * 500, "Re: " + "a-b," * 200, "=?utf-8?q?not_encoded?= really", '"q" \\ ;,']
)
def test_awkward_ascii_subjects(subject: str) -> None:
    raw = build_message(_envelope(), RenderedEmail(subject, "h", "t"))
    _assert_lines(raw)
    assert str(_parse(raw)["Subject"]) == subject


@pytest.mark.parametrize(
    ("mailto", "expected"),
    [
        ("u@example.ro", "mailto:u@example.ro"),
        (
            "u@exämple.ro?subject=unsubscribe%20k1.abc.def",
            "mailto:u@xn--exmple-cua.ro?subject=unsubscribe%20k1.abc.def",
        ),
        ("désabonner@example.fr", "mailto:d%C3%A9sabonner@example.fr"),  # RFC 6068 section 2
    ],
)
def test_the_unsubscribe_mailto_is_a_uri(mailto: str, expected: str) -> None:
    raw = build_message(_envelope(unsubscribe_mailto=mailto), RenderedEmail("s", "h", "t"))
    assert raw.isascii()
    assert str(_parse(raw)["List-Unsubscribe"]).split(", ")[1] == f"<{expected}>"


@pytest.mark.parametrize(
    "mailto", ["u@example.ro?subject=a b", "u@example.ro?subject=<x>", "u@example.ro>,<evil@x.ro"]
)
def test_an_unsubscribe_mailto_that_is_not_a_uri_is_refused(mailto: str) -> None:
    with pytest.raises((HeaderInjection, InvalidAddress)):
        build_message(_envelope(unsubscribe_mailto=mailto), RenderedEmail("s", "h", "t"))


# Bodies where the builder's shortcuts decide: lone surrogates (replaced only when the text
# has one), CR alone or before LF (line ends rewritten only when the text has a CR), and
# the characters around them, ASCII or not.
awkward_body = st.lists(
    st.sampled_from(["\r", "\n", "\r\n", "\ud800", "\udbff", "\udc00", "\udfff", "a", " "])
    | st.sampled_from(["=", "\t", "é", "\u2028", "\x85", "😀", "\x0b"])
    | st.characters(),
    max_size=200,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(plain=awkward_body, html=awkward_body)
def test_bodies_with_lone_surrogates_and_any_line_ends_read_back_as_given(
    plain: str, html: str
) -> None:
    email = build_email(_envelope(), RenderedEmail("Subject", html, plain))
    parsed = _parse(email.data)
    assert _content(parsed, "plain") == _body(plain)
    assert _content(parsed, "html") == _body(html)
    content = email.content
    assert content is not None
    assert (content.text, content.html) == (_replaced(plain), _replaced(html))


# Lines of any length ending in the characters quoted-printable must encode at a line end
# (space, tab), after any mix of plain, escaped ("=", "é") and multi-byte characters.
line_with_trailing_space = st.tuples(
    st.lists(st.sampled_from(["a", "=", "é", "😀", " ", "\t"]), min_size=60, max_size=160),
    st.sampled_from([" ", "\t", "  ", " \t"]),
).map(lambda parts: "".join(parts[0]) + parts[1])


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(line_with_trailing_space, min_size=1, max_size=4))
def test_quoted_printable_lines_stay_within_76_characters_at_encoded_line_ends(
    lines: list[str],
) -> None:
    """``binascii.b2a_qp`` alone writes 77 or 78 characters when a line's 75th character
    is a space or tab it escapes at the line end (RFC 2045 section 6.7 (5): 76 at most)."""
    body = "\n".join(lines) + "\n"
    email = build_email(_envelope(), RenderedEmail("Subject", body, body))
    _assert_lines(email.data)
    parsed = _parse(email.data)
    assert _content(parsed, "plain") == body
    assert _content(parsed, "html") == body


@pytest.mark.parametrize("length", [73, 74, 75, 76])
@pytest.mark.parametrize("ending", [" ", "\t"])
def test_a_line_of_74_characters_and_a_trailing_space_is_cut_by_a_soft_break(
    length: int, ending: str
) -> None:
    body = "a" * length + ending + "\n"
    email = build_email(_envelope(), RenderedEmail("Subject", body, body))
    _assert_lines(email.data)
    assert _content(_parse(email.data), "plain") == body


def _header_folding(text: str, charset: str, header: str) -> list[str]:
    """The standard library's folding, which the builder's own must equal line for line."""
    folded = Header(text, charset, header_name=header).encode(
        splitchars=" ", maxlinelen=76, linesep="\n"
    )
    return [line.strip(" ") for line in folded.split("\n")]


HEADER_NAMES = st.sampled_from(["From", "To", "Reply-To", "Subject"])


@settings(max_examples=1500, deadline=None)
@given(
    text=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=300),
    header=HEADER_NAMES,
)
def test_encoded_words_are_the_ones_email_header_writes(text: str, header: str) -> None:
    """The linear encoder of names and subjects (docs/performance.md) writes exactly the
    lines of ``email.header.Header``: same "B" or "Q" choice, same split points."""
    assert mime._encoded(text, header) == _header_folding(text, "utf-8", header)


@settings(max_examples=1000, deadline=None)
@given(
    text=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=120),
    header=HEADER_NAMES,
)
def test_printable_ascii_folds_as_email_header_folds_it(text: str, header: str) -> None:
    assert mime._folded_ascii(text, header) == _header_folding(text, "us-ascii", header)
