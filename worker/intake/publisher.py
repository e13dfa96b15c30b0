"""Push events onto the configured transport, exactly as a CRM would.

``crosssell publish`` reads JSON Lines, validates each line with the consumer's own
rules (:func:`triggers.events.parse_event`: the same size, depth, number and string
limits, the same schema) and publishes the valid ones unchanged (bytes in, bytes out)
with ``content_type: application/json`` and the event type as routing key. An invalid
line is reported with its line number and reason and not published; the rest go on.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from kombu.connection import Connection
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.messaging import Producer

from triggers.events import MAX_EVENT_BYTES, InvalidEvent, parse_event, parse_forget
from triggers.fields import FieldType
from worker.core.settings import Settings
from worker.core.topology import events_exchange, events_queue, transport_options
from worker.decide.rule_files import read_attributes


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """A line not published: 1-based ``line`` number, error ``code`` and PII-free reason."""

    line: int
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class RepeatedId:
    """A published line whose event id an earlier line of the same input already had
    (1-based ``line`` and ``first_line``): the consumer stores the first and drops this
    one as a duplicate, whatever its content."""

    line: int
    first_line: int
    event_id: str


@dataclass(frozen=True, slots=True)
class PublishReport:
    published: int
    rejected: tuple[RejectedLine, ...] = field(default=())
    repeated: tuple[RepeatedId, ...] = field(default=())


BOM = b"\xef\xbb\xbf"


class CutLine(bytes):
    """A line of more than the limit, cut after ``limit + 1`` bytes by
    :func:`bounded_lines`; ``size`` is the whole line's length (without its newline),
    so the report names the real size, not where the cut fell; ``endless``: no end was
    found within :data:`MAX_SCANNED_BYTES` (``/dev/zero``), so the rest was not read."""

    size: int
    endless: bool = False

    def invalid(self) -> InvalidEvent:
        """The ``oversize`` error :func:`triggers.events.load_json` gives a whole line."""
        if self.endless:
            return InvalidEvent(
                "oversize",
                f"no line end within {MAX_SCANNED_BYTES >> 20} MiB (the limit is"
                f" {MAX_EVENT_BYTES} bytes): the rest of the input is not read",
            )
        return InvalidEvent("oversize", f"{self.size} bytes exceeds the {MAX_EVENT_BYTES} limit")


# How far past the limit an over-long line of a stream that is not a regular file is
# read to find its end (and its size): a file's runaway line is measured whole, whatever
# its size; an endless stream (``/dev/zero``) does not hang the command.
MAX_SCANNED_BYTES = 64 << 20


def _is_regular_file(stream: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False  # no descriptor (an in-memory stream): bounded like a pipe


def bounded_lines(stream: BinaryIO, limit: int = MAX_EVENT_BYTES) -> Iterator[bytes]:
    """The lines of ``stream``, each cut after ``limit + 1`` bytes (the rest of an
    over-long line is read, counted and dropped; of a stream that is not a regular file,
    up to :data:`MAX_SCANNED_BYTES`, after which nothing more is read), so one giant line
    cannot fill the memory nor an endless one hang the command; a cut line is a
    :class:`CutLine` that knows its real size. A UTF-8 byte-order mark before the first
    line is dropped, as ``catalog import`` drops it (editors on Windows write one; the
    consumer's JSON parser would refuse it)."""
    first = True
    scan_limit = None if _is_regular_file(stream) else MAX_SCANNED_BYTES
    while True:
        line = stream.readline(limit + 2)
        if first and line.startswith(BOM):
            line = line[len(BOM) :]
            if line and not line.endswith(b"\n"):
                line += stream.readline(limit + 2 - len(line))
        first = False
        if not line:
            return
        if not line.endswith(b"\n") and len(line) > limit + 1:
            size, tail = len(line), line
            while (scan_limit is None or size < scan_limit) and (rest := stream.readline(1 << 16)):
                size, tail = size + len(rest), rest
                if rest.endswith(b"\n"):
                    break
            cut = CutLine(line)
            cut.size = size - (len(tail) - len(tail.rstrip(b"\r\n")))
            if scan_limit is not None and not tail.endswith(b"\n") and size >= scan_limit:
                cut.endless = True
                yield cut
                return  # where the next line starts cannot be known without its end
            yield cut
            continue
        yield line


def _routing_key(
    line: bytes, now: datetime, declared: Mapping[str, FieldType]
) -> tuple[str, str | None]:
    """The type of a valid line, and its event id when it is a marketing event (the id
    the consumer deduplicates by) rather than a ``forget`` request (which the consumer
    handles apart); InvalidEvent otherwise, as the consumer would refuse it
    (``declared``: the attributes file's types)."""
    try:
        event = parse_event(line, received_at=now, attributes=declared)
    except InvalidEvent as bad:
        if bad.code == "unknown_type":
            forget = parse_forget(line)  # InvalidEvent when it is a malformed forget
            if forget is not None:
                return forget.type, None
        raise
    return event.type, event.id


@contextmanager
def _producer(settings: Settings) -> Iterator[Producer]:
    """A producer on the events exchange, its queue declared. A broker that cannot be
    reached or refuses the login (a wrong password, an unknown vhost: amqp counts the
    403 as a channel error, redis connects only at the first command) raises kombu's
    ``OperationalError`` naming the cause, which the CLI prints as one line with the
    password masked, as for a refused port."""
    url = settings.resolved_events_url
    with Connection(url, transport_options=transport_options(url)) as connection:
        try:
            connection.connect()
            producer = Producer(connection.channel(), exchange=events_exchange(settings))
            events_queue(settings)(producer.channel).declare()
        except KombuOperationalError:
            raise
        except (*connection.connection_errors, *connection.channel_errors) as exc:
            raise KombuOperationalError(str(exc)) from exc
        yield producer


def publish_unchecked(settings: Settings, bodies: Iterable[bytes], routing_key: str) -> int:
    """Publish bodies as they are, unchecked, as any CRM's own AMQP client can: for the
    demo, which shows that what ``crosssell publish`` refuses is dead-lettered by the
    consumer too, never lost and never processed. Returns how many were published."""
    count = 0
    with _producer(settings) as producer:
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
    ``occurred_at`` range is checked against. Blank lines are skipped but counted. A
    line repeating an earlier line's event id is published all the same (a CRM's
    redelivery looks like that) and reported in ``repeated``."""
    now = received_at or datetime.now(UTC)
    declared, _ = read_attributes(settings.attributes_file)  # a broken file: lint says so
    published = 0
    rejected: list[RejectedLine] = []
    repeated: list[RepeatedId] = []
    first_lines: dict[str, int] = {}
    with _producer(settings) as producer:
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                if isinstance(raw, CutLine):
                    raise raw.invalid()
                routing_key, event_id = _routing_key(line, now, declared)
            except InvalidEvent as bad:
                rejected.append(RejectedLine(number, bad.code, bad.reason))
                continue
            if event_id is not None:
                first = first_lines.setdefault(event_id, number)
                if first != number:
                    repeated.append(RepeatedId(number, first, event_id))
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
    return PublishReport(published, tuple(rejected), tuple(repeated))
