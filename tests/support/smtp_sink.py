"""A real SMTP server on loopback (aiosmtpd) that records what it accepts.

Faults can be planted per recipient, so tests see exactly what a real server answers.
Like a real server, it closes the connection after any ``421`` reply (RFC 5321 3.8).

aiosmtpd reads commands one line at a time from a buffer, so it already takes pipelined
commands correctly, but its EHLO does not advertise PIPELINING (RFC 2920);
``SmtpSink(pipelining=True)`` adds it, and ``handler.pipelined`` counts the MAIL commands
that arrived with the next command already behind them (the client really pipelined).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(<[^>\r\n]+>)")
#: a DATA reply that makes the sink close the connection without answering the final dot
DROP = "DROP CONNECTION"


@dataclass
class SinkHandler:
    messages: list[bytes] = field(default_factory=list)
    recipient_faults: dict[str, str] = field(default_factory=dict)
    data_faults: dict[str, list[str]] = field(default_factory=dict)
    # recipients whose next message is taken in full, then the connection is dropped
    drop_after_data: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Called with each message's bytes before it is accepted; a reply string refuses it.
    fault: Callable[[bytes], str | None] | None = None
    refused: list[tuple[bytes, str]] = field(default_factory=list)
    accepted_at: list[float] = field(default_factory=list)
    # EHLO offers PIPELINING (RFC 2920)
    pipelining: bool = False
    # connections accepted; MAIL commands that arrived with the next command behind them
    connections: int = 0
    pipelined: int = 0
    # messages whose final dot was received but never answered (a ``DROP`` fault)
    dropped: list[bytes] = field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")  # before the closing "250 HELP"
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        fault = self.recipient_faults.get(address)
        if fault:
            return fault
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for recipient in envelope.rcpt_tos:
            queue = self.data_faults.get(recipient)
            if queue:
                return queue.pop(0)
        content = bytes(envelope.original_content or envelope.content)
        for recipient in envelope.rcpt_tos:
            if recipient in self.drop_after_data:
                self.drop_after_data.discard(recipient)
                with self.lock:
                    self.dropped.append(content)
                return DROP
        if self.fault is not None:
            reply = self.fault(content)
            if reply is not None:
                with self.lock:
                    self.refused.append((content, reply))
                return reply
        with self.lock:
            self.messages.append(content)
            self.accepted_at.append(time.monotonic())
        return "250 Message accepted for delivery"

    def message_ids(self) -> list[str]:
        """The Message-ID of every accepted message, read from its raw header block."""
        with self.lock:
            raw = list(self.messages)
        return [message_id_of(data) for data in raw]

    def parsed(self) -> list[EmailMessage]:
        with self.lock:
            raw = list(self.messages)
        return [message_from_bytes(data, policy=policy.default) for data in raw]  # type: ignore[misc]


def message_id_of(data: bytes) -> str:
    head = data.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    match = _MESSAGE_ID.search(head)
    if match is None:
        raise AssertionError("message without a Message-ID header")
    return match.group(1).decode("ascii")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _SinkSMTP(SMTP):
    """aiosmtpd's server, closing after a 421 and noting pipelined MAIL commands."""

    async def push(self, status: Any) -> None:
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else str(status)
        if text == DROP:
            self._close()  # the message is in; its answer never comes
            return
        await super().push(status)
        if text.startswith("421"):
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def smtp_MAIL(self, arg: str | None) -> None:
        # The next command already read into the buffer: the client sent them together.
        if self._reader._buffer:  # type: ignore[attr-defined]  # asyncio.StreamReader's
            handler = self.event_handler
            with handler.lock:
                handler.pipelined += 1
        await super().smtp_MAIL(arg)


class _SinkController(Controller):
    def factory(self) -> SMTP:
        """One server object per accepted connection: counted here."""
        handler = self.handler
        with handler.lock:
            handler.connections += 1
        return _SinkSMTP(handler, **self.SMTP_kwargs)


class SmtpSink:
    def __init__(self, pipelining: bool = False, **controller_options: Any) -> None:
        self.handler = SinkHandler(pipelining=pipelining)
        self.port = free_port()
        self.options = controller_options
        self.controller = self._controller()

    def _controller(self) -> Controller:
        return _SinkController(self.handler, hostname="127.0.0.1", port=self.port, **self.options)

    def _start(self) -> None:
        self.controller.start()
        with self.handler.lock:
            self.handler.connections = 0  # start() connects once to see the server is up

    def __enter__(self) -> SmtpSink:
        self._start()
        return self

    def __exit__(self, *_: object) -> None:
        self.controller.stop()

    def restart(self) -> None:
        """Stop and start again on the same port: every open connection is dropped."""
        self.controller.stop()
        self.controller = self._controller()
        connections = self.handler.connections
        self._start()
        with self.handler.lock:
            self.handler.connections += connections
