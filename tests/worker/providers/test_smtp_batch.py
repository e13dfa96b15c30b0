"""``SMTPProvider.send_many``: a batch over one connection, pipelined (RFC 2920) where the
server offers it, each message keeping its own hand-over and its own classification.
Every test runs against a real aiosmtpd server on loopback, with and without PIPELINING.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import BinaryIO

import pytest

from tests.support.smtp_sink import SmtpSink, free_port, message_id_of
from worker.providers.base import (
    AmbiguousDeliveryError,
    DeliveryResult,
    OutgoingEmail,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnsupportedAddress,
)
from worker.providers.smtp import SMTPProvider


def _email(send_id: int, recipient: str = "", body: bytes = b"hello\r\n") -> OutgoingEmail:
    recipient = recipient or f"r{send_id}@example.ro"
    data = (
        f"From: shop@example.com\r\nTo: {recipient}\r\nSubject: t {send_id}\r\n"
        f"Message-ID: <send-{send_id}@test>\r\n\r\n"
    ).encode() + body
    return OutgoingEmail(send_id, f"<send-{send_id}@test>", "shop@example.com", recipient, data)


@pytest.fixture(params=[True, False], ids=["pipelining", "step-by-step"])
def sink(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    with SmtpSink(pipelining=request.param) as server:
        yield server


@pytest.fixture
def provider(sink: SmtpSink) -> Iterator[SMTPProvider]:
    smtp = SMTPProvider("127.0.0.1", sink.port, timeout=10)
    yield smtp
    smtp.close()


def _received(sink: SmtpSink) -> list[str]:
    return sink.handler.message_ids()


def test_a_batch_goes_over_one_connection_each_message_handed_over_just_before_it_leaves(
    sink: SmtpSink, provider: SMTPProvider
) -> None:
    emails = [_email(n) for n in range(20)]
    seen: list[tuple[int, int]] = []
    results = provider.send_many(emails, lambda i: seen.append((i, len(sink.handler.messages))))
    assert [r.provider_message_id for r in results if isinstance(r, DeliveryResult)] == [
        e.message_id for e in emails
    ]
    assert seen == [(i, i) for i in range(20)], "once each, before the server had it"
    assert _received(sink) == [e.message_id for e in emails]
    assert sink.handler.connections == 1 and provider.connections_opened == 1
    pipelined = sink.handler.pipelining
    assert sink.handler.pipelined == (20 if pipelined else 0)


def test_the_connection_goes_back_to_the_pool_for_the_next_batch(
    sink: SmtpSink, provider: SMTPProvider
) -> None:
    provider.send_many([_email(1), _email(2)], lambda i: None)
    provider.send(_email(3))
    provider.send_many([_email(4)], lambda i: None)
    assert sink.handler.connections == 1
    sink.restart()  # the pooled connection is now dead: the batch reconnects once
    results = provider.send_many([_email(5), _email(6)], lambda i: None)
    assert all(isinstance(r, DeliveryResult) for r in results)
    assert _received(sink) == [f"<send-{n}@test>" for n in range(1, 7)]
    assert provider.connections_opened == 2


@pytest.mark.parametrize("failing", [0, 2, 4])
def test_a_failing_hand_over_keeps_that_message_from_leaving_and_the_rest_go(
    sink: SmtpSink, provider: SMTPProvider, failing: int
) -> None:
    emails = [_email(n) for n in range(5)]
    claim_lost = ConnectionError("database gone")

    def hand_over(index: int) -> None:
        if index == failing:
            raise claim_lost

    results = provider.send_many(emails, hand_over)
    assert results[failing] is claim_lost
    assert all(isinstance(r, DeliveryResult) for i, r in enumerate(results) if i != failing)
    assert _received(sink) == [e.message_id for i, e in enumerate(emails) if i != failing]
    # Its final dot never reached the server: neither answered nor refused nor dropped.
    everything = [c for c, _ in sink.handler.refused] + sink.handler.dropped
    assert emails[failing].message_id not in [message_id_of(c) for c in everything]
    # The transaction was abandoned with its connection; the rest went on a new one.
    assert sink.handler.connections == (1 if failing == 4 else 2)


def test_a_refused_recipient_fails_only_its_message_and_keeps_the_connection(
    sink: SmtpSink, provider: SMTPProvider
) -> None:
    sink.handler.recipient_faults["gone@example.ro"] = "550 5.1.1 User unknown"
    emails = [_email(1), _email(2, "gone@example.ro"), _email(3)]
    handed: list[int] = []
    results = provider.send_many(emails, handed.append)
    refused = results[1]
    assert isinstance(refused, PermanentDeliveryError)
    assert (refused.code, refused.enhanced, refused.hard_bounce) == (550, "5.1.1", True)
    assert isinstance(results[0], DeliveryResult) and isinstance(results[2], DeliveryResult)
    assert handed == [0, 2], "no hand-over for a message refused before its content"
    assert _received(sink) == ["<send-1@test>", "<send-3@test>"]
    assert sink.handler.connections == 1, "RSET, not a new connection"


@pytest.mark.parametrize("stage", ["rcpt", "final dot"])
def test_a_421_mid_batch_is_transient_for_that_message_and_the_rest_reconnect(
    sink: SmtpSink, provider: SMTPProvider, stage: str
) -> None:
    closing = "421 4.3.2 Service shutting down"
    if stage == "rcpt":
        sink.handler.recipient_faults["busy@example.ro"] = closing
    else:
        sink.handler.data_faults["busy@example.ro"] = [closing]
    emails = [_email(1), _email(2, "busy@example.ro"), _email(3), _email(4)]
    results = provider.send_many(emails, lambda i: None)
    busy = results[1]
    assert isinstance(busy, TransientDeliveryError) and busy.code == 421
    assert all(isinstance(results[i], DeliveryResult) for i in (0, 2, 3))
    assert _received(sink) == ["<send-1@test>", "<send-3@test>", "<send-4@test>"]
    assert sink.handler.connections == 2


def test_a_connection_lost_after_a_final_dot_is_ambiguous_for_that_message_only(
    sink: SmtpSink, provider: SMTPProvider
) -> None:
    """The server has message 2 but its answer never came: it may deliver it, so it is
    ambiguous (never retried); the messages after it go on a new connection."""
    sink.handler.drop_after_data.add("lost@example.ro")
    emails = [_email(1), _email(2, "lost@example.ro"), _email(3), _email(4)]
    results = provider.send_many(emails, lambda i: None)
    assert isinstance(results[1], AmbiguousDeliveryError)
    assert all(isinstance(results[i], DeliveryResult) for i in (0, 2, 3))
    assert [message_id_of(c) for c in sink.handler.dropped] == ["<send-2@test>"]
    assert _received(sink) == ["<send-1@test>", "<send-3@test>", "<send-4@test>"]
    assert sink.handler.connections == 2


def test_an_unreachable_server_fails_the_batch_once_without_trying_each_message() -> None:
    provider = SMTPProvider("127.0.0.1", free_port(), timeout=2)
    handed: list[int] = []
    try:
        results = provider.send_many([_email(n) for n in range(4)], handed.append)
    finally:
        provider.close()
    assert len(results) == 4
    assert all(isinstance(r, TransientDeliveryError) for r in results)
    assert handed == []


def test_lines_starting_with_a_dot_arrive_intact_in_a_batch(
    sink: SmtpSink, provider: SMTPProvider
) -> None:
    bodies = [b".hidden\r\n..two dots\r\n", b".\r\nlone dot above\r\n", b"plain\r\n.end"]
    results = provider.send_many([_email(n, body=b) for n, b in enumerate(bodies)], lambda i: None)
    assert all(isinstance(r, DeliveryResult) for r in results)
    received = [m.get_content().splitlines() for m in sink.handler.parsed()]
    assert received == [[".hidden", "..two dots"], [".", "lone dot above"], ["plain", ".end"]]


def test_a_utf8_local_part_goes_with_smtputf8_in_a_batch(
    sink: SmtpSink, provider: SMTPProvider
) -> None:
    emails = [_email(1), _email(2, "josé@exämple.ro"), _email(3)]
    results = provider.send_many(emails, lambda i: None)
    assert all(isinstance(r, DeliveryResult) for r in results)
    assert _received(sink) == ["<send-1@test>", "<send-2@test>", "<send-3@test>"]
    assert "To: josé@exämple.ro" in sink.handler.messages[1].decode()


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "step-by-step"])
def test_a_utf8_local_part_is_refused_alone_where_the_server_lacks_smtputf8(
    pipelining: bool,
) -> None:
    with SmtpSink(pipelining=pipelining, enable_SMTPUTF8=False) as sink:
        provider = SMTPProvider("127.0.0.1", sink.port, timeout=10)
        handed: list[int] = []
        try:
            results = provider.send_many(
                [_email(1), _email(2, "josé@example.ro"), _email(3)], handed.append
            )
        finally:
            provider.close()
        assert isinstance(results[1], UnsupportedAddress)
        assert handed == [0, 2]
        assert _received(sink) == ["<send-1@test>", "<send-3@test>"]
        assert sink.handler.connections == 1


class ScriptedServer:
    """A pipelining SMTP server on a raw socket that misbehaves as RFC 2920 section 1
    warns some do: it answers DATA with 354 even when the recipient was refused. It
    refuses recipients containing ``gone`` and senders containing ``blocked``, and keeps
    every line each connection sent, commands and content."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.sessions: list[list[bytes]] = []
        self.delivered: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        self._thread.join(5)
        assert not self._thread.is_alive()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed by __exit__
            lines: list[bytes] = []
            self.sessions.append(lines)
            with connection, connection.makefile("rb") as reader:
                self._session(connection, reader, lines)

    def _session(self, connection: socket.socket, reader: BinaryIO, lines: list[bytes]) -> None:
        connection.sendall(b"220 scripted ESMTP\r\n")
        while line := reader.readline():
            lines.append(line)
            command = line[:4].upper()
            if command == b"EHLO":
                connection.sendall(b"250-scripted\r\n250 PIPELINING\r\n")
            elif command == b"MAIL":
                refused = b"blocked" in line
                connection.sendall(b"550 5.7.1 Sender blocked\r\n" if refused else b"250 OK\r\n")
            elif command == b"RCPT":
                refused = b"gone" in line
                connection.sendall(b"550 5.1.1 No such user\r\n" if refused else b"250 OK\r\n")
            elif command == b"RSET":
                connection.sendall(b"250 OK\r\n")
            elif command == b"DATA":
                connection.sendall(b"354 go ahead\r\n")  # whatever MAIL and RCPT got
                content: list[bytes] = []
                while (data := reader.readline()) not in (b".\r\n", b""):
                    content.append(data)
                    lines.append(data)
                if data == b"":
                    return  # abandoned before the final dot: nothing is kept
                lines.append(data)
                self.delivered.append(b"".join(content))
                connection.sendall(b"250 OK queued\r\n")
            elif command == b"QUIT":
                connection.sendall(b"221 bye\r\n")
                return
            else:
                connection.sendall(b"500 unknown\r\n")


def test_a_354_after_a_refused_recipient_abandons_the_transaction_without_content() -> None:
    """RFC 2920 3.1: the client checks every reply. The server is waiting for content it
    must not get; the connection is dropped without the final dot, so nothing is kept."""
    with ScriptedServer() as server:
        provider = SMTPProvider("127.0.0.1", server.port, timeout=10)
        handed: list[int] = []
        try:
            results = provider.send_many(
                [_email(1), _email(2, "gone@example.ro"), _email(3)], handed.append
            )
        finally:
            provider.close()
    refused = results[1]
    assert isinstance(refused, PermanentDeliveryError) and refused.hard_bounce
    assert isinstance(results[0], DeliveryResult) and isinstance(results[2], DeliveryResult)
    assert handed == [0, 2]
    assert [message_id_of(m) for m in server.delivered] == ["<send-1@test>", "<send-3@test>"]
    assert len(server.sessions) == 2, "the abandoned connection, then a new one"
    first = server.sessions[0]
    assert first[-1].startswith(b"DATA"), "nothing after DATA: no content, no RSET, no dot"
    assert [line[:4] for line in first[-3:]] == [b"MAIL", b"RCPT", b"DATA"]


def test_a_refused_sender_in_a_pipelined_group_is_that_messages_error() -> None:
    with ScriptedServer() as server:
        provider = SMTPProvider("127.0.0.1", server.port, timeout=10)
        blocked = OutgoingEmail(
            2, "<send-2@test>", "blocked@example.com", "r2@example.ro", _email(2).data
        )
        try:
            results = provider.send_many([_email(1), blocked, _email(3)], lambda i: None)
        finally:
            provider.close()
    refused = results[1]
    assert isinstance(refused, PermanentDeliveryError) and refused.policy
    assert (refused.code, refused.enhanced) == (550, "5.7.1")
    assert [message_id_of(m) for m in server.delivered] == ["<send-1@test>", "<send-3@test>"]
    assert len(server.sessions) == 2, "the 354 it was given anyway cost the connection"
    assert server.sessions[0][-1].startswith(b"DATA"), "nothing after DATA, not even RSET"
