"""Push events onto the configured transport, exactly as a CRM would.

``crosssell publish`` reads JSON Lines, validates each line with the consumer's own
rules (:func:`triggers.events.parse_event`: the same size, depth, number and string
limits, the same schema) and publishes the valid ones unchanged (bytes in, bytes out)
with ``content_type: application/json`` and the event type as routing key. An invalid
line is reported with its line number and reason and not published; the rest go on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from kombu.connection import Connection
from kombu.messaging import Producer

from triggers.events import MAX_EVENT_BYTES, InvalidEvent, parse_event, parse_forget
from worker.core.settings import Settings
from worker.core.topology import events_exchange, events_queue, transport_options


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """A line not published: 1-based ``line`` number, error ``code`` and PII-free reason."""

    line: int
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class PublishReport:
    published: int
    rejected: tuple[RejectedLine, ...] = field(default=())


def bounded_lines(stream: BinaryIO, limit: int = MAX_EVENT_BYTES) -> Iterator[bytes]:
    """The lines of ``stream``, each cut after ``limit + 1`` bytes (the rest of an
    over-long line is read and dropped), so one giant line cannot fill the memory; the
    cut line is still over the limit and is reported as ``oversize``."""
    while True:
        line = stream.readline(limit + 2)
        if not line:
            return
        if not line.endswith(b"\n") and len(line) > limit + 1:
            while (rest := stream.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
        yield line


def _routing_key(line: bytes, now: datetime) -> str:
    """The type of a valid line: a marketing event, or a ``forget`` request (which the
    consumer handles apart); InvalidEvent otherwise, as the consumer would refuse it."""
    try:
        return parse_event(line, received_at=now).type
    except InvalidEvent as bad:
        if bad.code == "unknown_type":
            forget = parse_forget(line)  # InvalidEvent when it is a malformed forget
            if forget is not None:
                return forget.type
        raise


def publish_unchecked(settings: Settings, bodies: Iterable[bytes], routing_key: str) -> int:
    """Publish bodies as they are, unchecked, as any CRM's own AMQP client can: for the
    demo, which shows that what ``crosssell publish`` refuses is dead-lettered by the
    consumer too, never lost and never processed. Returns how many were published."""
    url = settings.resolved_events_url
    count = 0
    with Connection(url, transport_options=transport_options(url)) as connection:
        producer = Producer(connection.channel(), exchange=events_exchange(settings))
        events_queue(settings)(producer.channel).declare()
        for body in bodies:
            producer.publish(
                body,
                routing_key=routing_key,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
            )
            count += 1
    return count


def publish_lines(
    settings: Settings, lines: Iterable[bytes], received_at: datetime | None = None
) -> PublishReport:
    """Publish each valid line; ``received_at`` (default: now) is the clock the
    ``occurred_at`` range is checked against. Blank lines are skipped but counted."""
    now = received_at or datetime.now(UTC)
    url = settings.resolved_events_url
    published = 0
    rejected: list[RejectedLine] = []
    queue = events_queue(settings)
    with Connection(url, transport_options=transport_options(url)) as connection:
        producer = Producer(connection.channel(), exchange=events_exchange(settings))
        queue(producer.channel).declare()
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                routing_key = _routing_key(line, now)
            except InvalidEvent as bad:
                rejected.append(RejectedLine(number, bad.code, bad.reason))
                continue
            producer.publish(
                line,
                routing_key=routing_key,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                retry=True,
                retry_policy={"max_retries": 5, "interval_start": 0.5, "interval_step": 1},
            )
            published += 1
    return PublishReport(published, tuple(rejected))
