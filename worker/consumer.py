"""The event consumer: broker message → validated event → committed row → ack.

Built on kombu's ``ConsumerMixin`` so it reconnects by itself. The raw body is decoded
here, not by kombu, so any AMQP client's plain JSON is accepted and anything bad is
dead-lettered with a reason instead of kombu's default of acknowledging and losing it.

No message can stop intake: :func:`handle_body` turns every failure that belongs to the
message (invalid input, a value the database refuses, a bug it trips) into a dead letter,
and only a lost database connection sends the message back to the queue.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from kombu.connection import Connection
from kombu.message import Message
from kombu.messaging import Producer
from kombu.mixins import ConsumerMixin
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from triggers.events import InvalidEvent, parse_event
from worker.db import transaction
from worker.ingest import ingest_event
from worker.log_format import fields
from worker.metrics import EVENTS
from worker.privacy import forget_from_message
from worker.redaction import redact
from worker.runtime import Runtime
from worker.startup import announce
from worker.topology import dead_letter_queue, events_queue, transport_options

log = logging.getLogger(__name__)

INTEGRITY_ATTEMPTS = 3
"""Tries of one event after integrity errors: a race with another consumer (same event
id, same new customer) resolves on the next try, when the winner's row is visible."""
OUTAGE_PAUSE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Handled:
    """What became of one message body.

    ``stored`` and ``duplicate`` are acknowledged, ``dead_letter`` is moved to the
    dead-letter queue with ``code`` and ``reason`` (PII-free), ``retry`` (the database
    is unreachable) goes back to the queue.
    """

    outcome: Literal["stored", "duplicate", "dead_letter", "retry"]
    code: str = ""
    reason: str = ""
    event_id: str | None = None


def _is_outage(exc: DBAPIError) -> bool:
    """A lost or refused connection, a lock timeout: the database's state, not the
    message's fault (PEP 249 OperationalError / InterfaceError, or SQLAlchemy's
    connection-invalidated flag)."""
    return isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated


def _sqlstate(exc: DBAPIError) -> str:
    """The SQLSTATE code of a PostgreSQL error (psycopg's ``sqlstate``), else the driver
    exception's class name; neither quotes the refused value."""
    state = getattr(exc.orig, "sqlstate", None)
    return f"SQLSTATE {state}" if isinstance(state, str) else type(exc.orig).__name__


def handle_body(runtime: Runtime, body: object) -> Handled:
    """Validate and store one message body; never raises (bar ``BaseException``s such
    as ``KeyboardInterrupt``)."""
    try:
        return _handle(runtime, body)
    except Exception as exc:  # a message must not stop intake, whatever it trips
        log.error(
            "%s while handling a message; dead-lettered. Stack (no values):\n%s",
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        return Handled(
            "dead_letter", "internal_error", f"{type(exc).__name__} while handling the event"
        )


def _handle(runtime: Runtime, body: object) -> Handled:
    if isinstance(body, bytearray | memoryview):
        body = bytes(body)
    if not isinstance(body, bytes | str):
        # A Redis envelope whose "body" is a JSON number, object or null.
        return Handled("dead_letter", "not_json", "the message body is not text")
    try:
        event = parse_event(body, received_at=runtime.clock.now())
    except InvalidEvent as bad:
        if bad.code != "unknown_type":
            return Handled("dead_letter", bad.code, bad.reason)
        try:  # a CRM erasure request is not a marketing event (worker.privacy)
            if forget_from_message(runtime, body):
                return Handled("stored")
        except InvalidEvent as wrong:
            return Handled("dead_letter", wrong.code, wrong.reason)
        return Handled("dead_letter", bad.code, bad.reason)
    attempt = 0
    while True:
        attempt += 1
        try:
            with transaction(runtime.settings.resolved_database_url) as session:
                result = ingest_event(
                    session,
                    event,
                    runtime.rules.current(),
                    runtime.policy,
                    runtime.clock.now(),
                )
        except IntegrityError as exc:
            if attempt < INTEGRITY_ATTEMPTS:
                log.info("event %s raced another consumer; trying again", event.id)
                continue
            return Handled(
                "dead_letter",
                "storage_refused",
                f"the database refused the event {attempt} times ({_sqlstate(exc)})",
                event.id,
            )
        except DBAPIError as exc:
            if _is_outage(exc):
                log.warning(
                    "database unavailable, event %s requeued: %s",
                    event.id,
                    exc.__class__.__name__,
                )
                return Handled("retry", event_id=event.id)
            # DataError (NUL, value too long, numeric overflow) and the like: this
            # message would be refused on every retry.
            return Handled(
                "dead_letter",
                "storage_refused",
                f"the database refused a value ({_sqlstate(exc)})",
                event.id,
            )
        return Handled("duplicate" if result.duplicate else "stored", event_id=event.id)


class EventConsumer(ConsumerMixin):
    def __init__(
        self,
        connection: Connection,
        runtime: Runtime,
        on_ingested: Callable[[], None] | None = None,
    ) -> None:
        self.connection = connection
        self.runtime = runtime
        self.on_ingested = on_ingested
        self.stats = {"accepted": 0, "duplicate": 0, "dead_lettered": 0}

    @property
    def handled(self) -> int:
        """Messages taken off the queue for good (stored, duplicate or dead-lettered)."""
        return sum(self.stats.values())

    def get_consumers(self, consumer_cls: Any, channel: Any) -> list[Any]:
        dead = dead_letter_queue(self.runtime.settings)
        dead(channel).declare()
        return [
            consumer_cls(
                queues=[events_queue(self.runtime.settings)],
                on_message=self.on_message,
                prefetch_count=32,
            )
        ]

    def on_message(self, message: Message) -> None:
        handled = handle_body(self.runtime, message.body)
        if handled.outcome == "dead_letter":
            self.dead_letter(message, handled.code, handled.reason)
            return
        if handled.outcome == "retry":
            time.sleep(OUTAGE_PAUSE_SECONDS)
            message.requeue()
            return
        message.ack()
        outcome = "duplicate" if handled.outcome == "duplicate" else "accepted"
        self.stats[outcome] += 1
        EVENTS.labels(outcome).inc()
        log.info(
            "event %s %s",
            handled.event_id,
            handled.outcome,
            extra=fields(event_id=handled.event_id, outcome=handled.outcome),
        )
        if self.on_ingested is not None:
            self.on_ingested()

    def on_connection_error(self, exc: Exception, interval: float) -> None:
        """One line per failed attempt, no traceback: a refused login or an unreachable
        broker is the same error every time (kombu's default logs the whole stack)."""
        log.error(
            "broker connection failed (%s: %s); trying again in %.0f s",
            type(exc).__name__,
            str(exc).splitlines()[0][:200] if str(exc) else "",
            interval,
        )

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        """kombu could not decode the body for us (a Redis body string holding a lone
        surrogate, a bad ``body_encoding``): dead-letter it instead of kombu's default,
        which logs the body and acknowledges it, losing the message."""
        code = "not_utf8" if isinstance(exc, UnicodeError) else "undecodable"
        self.dead_letter(
            message, code, f"the transport could not decode the body ({type(exc).__name__})"
        )

    def dead_letter(self, message: Message, code: str, reason: str) -> None:
        """Keep the bad message whole with its reason, then ack it; never log its body."""
        queue = dead_letter_queue(self.runtime.settings)
        producer = Producer(self.connection.default_channel)
        info = message.delivery_info or {}
        headers = {
            "x-crosssell-error": code,
            "x-crosssell-reason": reason,
            "x-original-routing-key": str(info.get("routing_key") or ""),
            "x-original-exchange": str(info.get("exchange") or ""),
        }
        body = message.body
        producer.publish(
            # surrogatepass: a Redis body may hold lone surrogates (JSON "\ud800"); keep them.
            body if isinstance(body, bytes) else str(body).encode("utf-8", "surrogatepass"),
            exchange="",
            routing_key=queue.name,
            headers=headers,
            content_type=message.content_type or "application/octet-stream",
            content_encoding="binary",
            delivery_mode=2,
            declare=[queue],
            retry=True,
        )
        message.ack()
        self.stats["dead_lettered"] += 1
        EVENTS.labels("dead_lettered").inc()
        log.warning("dead-lettered a message: %s: %s", code, redact(reason))


class _OneLineErrors(logging.Filter):
    """kombu's consumer logs every failed reconnect with a full traceback, once a second:
    keep the line, name the error in it, drop the stack (it is the same every time)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            first = str(error).splitlines()[0][:200] if str(error) else ""
            record.msg = f"{record.getMessage()} ({type(error).__name__}: {first})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("kombu.mixins").addFilter(_OneLineErrors())


def run_consumer(
    runtime: Runtime, started: Callable[[EventConsumer], None] | None = None
) -> EventConsumer:
    """Consume until ``should_stop`` is set on the consumer (``started`` receives it)."""
    url = runtime.settings.resolved_events_url
    announce(runtime, "consume")
    with Connection(url, transport_options=transport_options(url)) as connection:
        consumer = EventConsumer(connection, runtime)
        if started is not None:
            started(consumer)
        _consume(consumer)
        return consumer


MAX_TRANSPORT_FAILURES = 100
"""Consecutive transport-level decoding failures (no message handled in between) after
which the consumer gives up and raises: beyond that it is not one bad message."""


def _consume(consumer: EventConsumer) -> None:
    """``consumer.run()``, kept going when the *transport* cannot decode an item.

    kombu reconnects on connection errors itself, but an item that is not a kombu
    envelope at all (Redis: not JSON, not an object, a bad ``body_encoding``) raises from
    kombu's own decoding before :meth:`EventConsumer.on_message` sees it. Such an item
    has already left the queue; it is logged (class of error only) and skipped.
    """
    failures = 0
    while not consumer.should_stop:
        handled_before = consumer.handled
        try:
            consumer.run()
        except Exception as exc:
            failures = 1 if consumer.handled != handled_before else failures + 1
            if failures >= MAX_TRANSPORT_FAILURES:
                raise
            log.error("the transport could not decode a message (%s); skipped", type(exc).__name__)
            time.sleep(0.1)
