"""Where an SMTP send can fail decides whether it may be retried: before the final dot
the server has nothing; after it, only the server knows. Real servers on loopback."""

from __future__ import annotations

import smtplib
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.smtp_sink import SmtpSink, free_port
from worker.providers.base import AmbiguousDeliveryError, OutgoingEmail
from worker.providers.smtp import SMTPProvider, _angle_address, _dot_stuffed


def _email(send_id: int, body: bytes = b"hello\r\n") -> OutgoingEmail:
    data = (
        b"From: shop@example.com\r\nTo: ana@example.ro\r\nSubject: t\r\n"
        + f"Message-ID: <send-{send_id}@test>\r\n\r\n".encode()
        + body
    )
    return OutgoingEmail(
        send_id, f"<send-{send_id}@test>", "shop@example.com", "ana@example.ro", data
    )


def test_hand_over_happens_once_just_before_the_message_is_sent(smtp_sink: SmtpSink) -> None:
    seen: list[int] = []
    provider = SMTPProvider("127.0.0.1", smtp_sink.port)
    try:
        provider.send(_email(1), lambda: seen.append(len(smtp_sink.handler.messages)))
    finally:
        provider.close()
    assert seen == [0], "called once, while the server had not received the message yet"
    assert len(smtp_sink.handler.messages) == 1


def test_a_failing_hand_over_keeps_the_message_from_leaving(smtp_sink: SmtpSink) -> None:
    """The claim could not be committed (database gone): the server must discard it."""
    provider = SMTPProvider("127.0.0.1", smtp_sink.port)

    def database_gone() -> None:
        raise ConnectionError("database gone")

    try:
        with pytest.raises(ConnectionError):
            provider.send(_email(1), database_gone)
        provider.send(_email(2))  # a fresh connection works afterwards
    finally:
        provider.close()
    assert [m["Message-ID"] for m in smtp_sink.handler.parsed()] == ["<send-2@test>"]


def test_lines_starting_with_a_dot_arrive_intact(smtp_sink: SmtpSink) -> None:
    body = b".hidden line\r\n..two dots\r\nlast line without newline"
    provider = SMTPProvider("127.0.0.1", smtp_sink.port)
    try:
        provider.send(_email(1, body))
    finally:
        provider.close()
    received = smtp_sink.handler.parsed()[0].get_content()
    assert received.splitlines() == [".hidden line", "..two dots", "last line without newline"]


@pytest.fixture
def silent_after_data() -> Iterator[int]:
    """A server that takes the whole message, then closes without a reply."""
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    received: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 silent ESMTP\r\n")
            while line := lines.readline():
                command = line[:4].upper()
                if command in (b"EHLO", b"HELO"):
                    connection.sendall(b"250 silent\r\n")
                elif command in (b"MAIL", b"RCPT"):
                    connection.sendall(b"250 OK\r\n")
                elif command == b"DATA":
                    connection.sendall(b"354 go ahead\r\n")
                    while (chunk := lines.readline()) not in (b".\r\n", b""):
                        received.append(chunk)
                    return  # the message is in, the answer never comes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    listener.close()
    thread.join(5)
    assert received, "the server got the message"


def test_no_reply_after_the_final_dot_is_ambiguous_not_transient(silent_after_data: int) -> None:
    provider = SMTPProvider("127.0.0.1", silent_after_data, timeout=5)
    try:
        with pytest.raises(AmbiguousDeliveryError):
            provider.send(_email(1))
    finally:
        provider.close()


def test_the_connection_sends_small_segments_at_once(smtp_sink: SmtpSink) -> None:
    """The final dot travels alone after the hand-over; with Nagle's algorithm on it would
    wait for the server's delayed ACK, capping a connection near 25 messages a second."""
    provider = SMTPProvider("127.0.0.1", smtp_sink.port)
    try:
        provider.send(_email(1))
        connection = provider._idle[0]._connection
        assert connection is not None and connection.sock is not None
        assert connection.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        provider.close()


def _reference_dot_stuffed(data: bytes) -> bytes:
    """RFC 5321 4.5.2 spelled out line by line: the wire form ``_dot_stuffed`` must give."""
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    return body + b"\r\n"


@given(st.binary(max_size=64) | st.lists(st.sampled_from([b".", b"a", b"\r", b"\n"])).map(b"".join))
def test_dot_stuffing_gives_the_rfc_5321_wire_form(data: bytes) -> None:
    assert _dot_stuffed(data) == _reference_dot_stuffed(data)


@pytest.mark.parametrize(
    "address",
    ["ana@example.ro", "josé@exämple.ro", "a.b+tag@sub.example.com", '"odd name"@example.ro'],
)
def test_envelope_addresses_are_bracketed_as_smtplib_would(address: str) -> None:
    assert _angle_address(address) == smtplib.quoteaddr(address)
