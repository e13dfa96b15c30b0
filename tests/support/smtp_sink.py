"""A real SMTP server on loopback (aiosmtpd) that records what it accepts.

Faults can be planted per recipient, so tests see exactly what a real server answers.
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

_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*(<[^>\r\n]+>)")


@dataclass
class SinkHandler:
    messages: list[bytes] = field(default_factory=list)
    recipient_faults: dict[str, str] = field(default_factory=dict)
    data_faults: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Called with each message's bytes before it is accepted; a reply string refuses it.
    fault: Callable[[bytes], str | None] | None = None
    refused: list[tuple[bytes, str]] = field(default_factory=list)
    accepted_at: list[float] = field(default_factory=list)

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


class SmtpSink:
    def __init__(self, **controller_options: Any) -> None:
        self.handler = SinkHandler()
        self.port = free_port()
        self.options = controller_options
        self.controller = self._controller()

    def _controller(self) -> Controller:
        return Controller(self.handler, hostname="127.0.0.1", port=self.port, **self.options)

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.controller.stop()

    def restart(self) -> None:
        """Stop and start again on the same port: every open connection is dropped."""
        self.controller.stop()
        self.controller = self._controller()
        self.controller.start()
