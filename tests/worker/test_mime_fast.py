"""The fast message builder says exactly what the standard library's EmailMessage says."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.mime import Envelope, build_message, build_message_stdlib, message_id_for
from worker.rendering import RenderedEmail

LETTERS = "abcdefghijklmnopqrstuvwxyzăâîșțĂÂÎȘȚàèéìòùÀÈÌÒÙ'\",.;:()!?-&<>😀 "
text = st.text(alphabet=LETTERS, min_size=1, max_size=120).filter(lambda s: s.strip() != "")
body = st.text(alphabet=LETTERS + "\n\t=", min_size=0, max_size=600)


def _parse(raw: bytes) -> EmailMessage:
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _content(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


@settings(max_examples=150, deadline=None)
@given(
    sender=text, recipient=text, subject=text, plain=body, html=body, send_id=st.integers(1, 10**9)
)
def test_fast_and_stdlib_messages_read_the_same(
    sender: str, recipient: str, subject: str, plain: str, html: str, send_id: int
) -> None:
    envelope = Envelope(
        send_id=send_id,
        sender_name=sender.strip(),
        sender_address="shop@example.ro",
        recipient_name=recipient.strip(),
        recipient_address="ana@example.it",
        reply_to="help@example.ro",
        date=datetime(2026, 11, 17, 10, 30, tzinfo=UTC),
        message_id=message_id_for(send_id, "example.ro"),
        unsubscribe_url="https://shop.example/u/k1.abc.def",
        unsubscribe_mailto="u@example.ro",
        campaign_id="laptop-accessories",
    )
    email = RenderedEmail(subject=" ".join(subject.split()), html=html, text=plain)
    fast_raw, slow_raw = build_message(envelope, email), build_message_stdlib(envelope, email)
    assert fast_raw.isascii()
    assert all(len(line) <= 998 for line in fast_raw.split(b"\r\n"))
    fast, slow = _parse(fast_raw), _parse(slow_raw)
    for name in ("Date", "Message-ID", "Reply-To", "List-Unsubscribe-Post", "X-Crosssell-Campaign"):
        assert str(fast[name]) == str(slow[name]), name
    # Names and the subject must read back exactly as given. (The standard library itself
    # sometimes folds a long encoded name with a stray space; the fast path must not.)
    assert str(fast["Subject"]) == email.subject
    for name, display, address in (
        ("From", envelope.sender_name, envelope.sender_address),
        ("To", envelope.recipient_name, envelope.recipient_address),
    ):
        (mailbox,) = fast[name].addresses
        assert (mailbox.display_name, mailbox.addr_spec) == (display, address), name
    assert " ".join(str(fast["List-Unsubscribe"]).split()) == " ".join(
        str(slow["List-Unsubscribe"]).split()
    )
    assert fast.get_content_type() == slow.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in fast.iter_parts()] == ["text/plain", "text/html"]
    for subtype in ("plain", "html"):
        assert _content(fast, subtype) == _content(slow, subtype)
