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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from kombu.connection import Connection
from kombu.message import Message
from kombu.messaging import Producer
from kombu.mixins import ConsumerMixin
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from triggers.events import AnyEvent, InvalidEvent, parse_event
from worker.core.db import transaction
from worker.core.log_format import fields
from worker.core.metrics import EVENTS
from worker.core.redaction import redact
from worker.core.topology import dead_letter_queue, events_queue, transport_options
from worker.intake.ingest import EventRaced, IngestResult, ingest_batch
from worker.process.collector import collector_if_own_process
from worker.process.runtime import Runtime
from worker.process.startup import announce
from worker.records.privacy import forget_from_message

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
    customer_id: str | None = None
    decided: str = ""
    """What each campaign that matched decided (``laptop-accessories: planned``), for the log."""


def _ingested(event: AnyEvent, result: IngestResult) -> Handled:
    """The event's fate for the log: each matching campaign with what was stored for it
    (``already_planned:<id>`` when an earlier event planned that email, not ``planned``)."""
    decided = ", ".join(
        f"{decision.campaign_id}: "
        f"{result.outcome.get(decision.campaign_id) or decision.reason or decision.outcome}"
        for decision in result.decisions
        if decision.outcome != "not_matched"
    )
    if result.erased:
        decided = "stored erased (it occurred before the customer's erasure request)"
    return Handled(
        "duplicate" if result.duplicate else "stored",
        event_id=event.id,
        customer_id=event.customer.id,
        decided=decided,
    )


def _is_outage(exc: DBAPIError) -> bool:
    """A lost or refused connection, a lock timeout: the database's state, not the
    message's fault (PEP 249 OperationalError / InterfaceError, or SQLAlchemy's
    connection-invalidated flag)."""
    return isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated


ROLLED_BACK_BY_THE_DATABASE = {
    "40P01": "a deadlock with another transaction",
    "40001": "a serialization failure",
}
"""SQLSTATEs (PostgreSQL, "Class 40 — Transaction Rollback") that end one transaction
while the database is up: the batch is requeued as after an outage, but not reported as
one."""


def _log_requeue(exc: DBAPIError, count: int) -> None:
    state = getattr(exc.orig, "sqlstate", None)
    why = ROLLED_BACK_BY_THE_DATABASE.get(state) if isinstance(state, str) else None
    if why is not None:
        log.warning(
            "the database rolled a batch back (SQLSTATE %s, %s); %d events requeued",
            state,
            why,
            count,
        )
    else:
        log.warning("database unavailable, %d events requeued: %s", count, type(exc).__name__)


def _sqlstate(exc: DBAPIError) -> str:
    """The SQLSTATE code of a PostgreSQL error (psycopg's ``sqlstate``), else the driver
    exception's class name; neither quotes the refused value."""
    state = getattr(exc.orig, "sqlstate", None)
    return f"SQLSTATE {state}" if isinstance(state, str) else type(exc.orig).__name__


def handle_body(runtime: Runtime, body: object) -> Handled:
    """Validate and store one message body; never raises (bar ``BaseException``s such
    as ``KeyboardInterrupt``)."""
    return handle_bodies(runtime, [body])[0]


def handle_bodies(runtime: Runtime, bodies: Sequence[object]) -> list[Handled]:
    """Validate and store a batch of message bodies, one :class:`Handled` per body, in
    order; never raises (bar ``BaseException``s).

    Each body is validated alone; the valid events are stored in one transaction. An
    erasure request (``worker.records.privacy``) is applied on its own, in its place: the events
    before it are stored first."""
    return store_parsed(runtime, parse_bodies(runtime, bodies))


Parsed: TypeAlias = tuple[object, AnyEvent | Handled | InvalidEvent]
"""A message body and what validation made of it: an event to store, a final
:class:`Handled` (a dead letter), or the refusal of a body of unknown type, which may
still be an erasure request."""


def parse_bodies(runtime: Runtime, bodies: Sequence[object]) -> list[Parsed]:
    """Validate each body alone, without touching the database: the half of
    :func:`handle_bodies` the consumer runs while the previous batch is being stored."""
    parsed: list[Parsed] = []
    for raw in bodies:
        body = bytes(raw) if isinstance(raw, bytearray | memoryview) else raw
        try:
            parsed.append((body, _parse(runtime, body)))
        except Exception as exc:  # a message must not stop intake, whatever it trips
            parsed.append((body, _internal_error(exc)))
    return parsed


def store_parsed(runtime: Runtime, parsed: Sequence[Parsed]) -> list[Handled]:
    """Store what :func:`parse_bodies` validated, one :class:`Handled` per body, in
    order: runs of events in one transaction each, an erasure request on its own in its
    place. Never raises (bar ``BaseException``s)."""
    results: list[Handled | None] = [None] * len(parsed)
    run: list[tuple[int, AnyEvent]] = []
    for position, (body, outcome) in enumerate(parsed):
        if isinstance(outcome, Handled):
            results[position] = outcome
        elif isinstance(outcome, InvalidEvent):  # not an event: perhaps an erasure request
            _store_run(runtime, run, results)
            run = []
            results[position] = _forget(runtime, body, outcome)
        else:
            run.append((position, outcome))
    _store_run(runtime, run, results)
    assert all(result is not None for result in results)
    return [result for result in results if result is not None]


def _internal_error(exc: Exception) -> Handled:
    log.error(
        "%s while handling a message; dead-lettered. Stack (no values):\n%s",
        type(exc).__name__,
        "".join(traceback.format_tb(exc.__traceback__)),
    )
    return Handled(
        "dead_letter", "internal_error", f"{type(exc).__name__} while handling the event"
    )


def _parse(runtime: Runtime, body: object) -> AnyEvent | Handled | InvalidEvent:
    """The event in ``body``; a dead letter; or, for a body of unknown type (which may
    be an erasure request), the refusal to use if it is not one."""
    if not isinstance(body, bytes | str):
        # A Redis envelope whose "body" is a JSON number, object or null.
        return Handled("dead_letter", "not_json", "the message body is not text")
    try:
        return parse_event(
            body, received_at=runtime.clock.now(), attributes=runtime.rules.current().attributes
        )
    except InvalidEvent as bad:
        if bad.code != "unknown_type":
            return Handled("dead_letter", bad.code, bad.reason)
        return bad


def _forget(runtime: Runtime, body: object, bad: InvalidEvent) -> Handled:
    """Apply a CRM erasure request (not a marketing event); a body that is not one is
    dead-lettered as ``bad`` says."""
    assert isinstance(body, bytes | str)
    try:
        if forget_from_message(runtime, body):
            return Handled("stored")
    except InvalidEvent as wrong:
        return Handled("dead_letter", wrong.code, wrong.reason)
    except Exception as exc:  # a message must not stop intake, whatever it trips
        return _internal_error(exc)
    return Handled("dead_letter", bad.code, bad.reason)


def _store_run(
    runtime: Runtime, run: list[tuple[int, AnyEvent]], results: list[Handled | None]
) -> None:
    if not run:
        return
    events = [event for _, event in run]
    stored = _store_batch(runtime, events) if len(events) > 1 else None
    if stored is None:
        stored = _store_each(runtime, events)
    for (position, _), handled in zip(run, stored, strict=True):
        results[position] = handled


def _store_batch(runtime: Runtime, events: list[AnyEvent]) -> list[Handled] | None:
    """All ``events`` in one transaction; None when the database refused something in
    it (a value, a constraint, a race) or an event tripped a bug: the caller then stores
    them one by one, to find which."""
    try:
        with transaction(runtime.settings.resolved_database_url) as session:
            results = ingest_batch(
                session, events, runtime.rules.current(), runtime.policy, runtime.clock.now()
            )
    except DBAPIError as exc:
        if _is_outage(exc):
            _log_requeue(exc, len(events))
            return [Handled("retry", event_id=event.id) for event in events]
        log.info(
            "the database refused a batch of %d events (%s); storing them one by one",
            len(events),
            _sqlstate(exc),
        )
        return None
    except EventRaced as raced:
        log.info("%s; storing the batch's %d events one by one", raced, len(events))
        return None
    except Exception as exc:  # a bug one event trips: find it, keep the others
        log.info(
            "%s in a batch of %d events; storing them one by one", type(exc).__name__, len(events)
        )
        return None
    return [_ingested(event, result) for event, result in zip(events, results, strict=True)]


def _store_each(runtime: Runtime, events: list[AnyEvent]) -> list[Handled]:
    """The events one by one, each in a savepoint of one transaction: one the database
    refuses is dead-lettered, the others are stored; a lost connection requeues all."""
    handled: list[Handled] = []
    try:
        with transaction(runtime.settings.resolved_database_url) as session:
            for event in events:
                handled.append(_store_one(runtime, session, event))
    except DBAPIError as exc:
        if not _is_outage(exc):
            log.error("the database refused a commit (%s); events requeued", _sqlstate(exc))
        else:
            _log_requeue(exc, len(events))
        return [Handled("retry", event_id=event.id) for event in events]
    return handled


def _store_one(runtime: Runtime, session: Session, event: AnyEvent) -> Handled:
    """One event in a savepoint; raises only for a lost connection."""
    attempt = 0
    while True:
        attempt += 1
        try:
            with session.begin_nested():
                [result] = ingest_batch(
                    session, [event], runtime.rules.current(), runtime.policy, runtime.clock.now()
                )
        except (IntegrityError, EventRaced) as exc:
            if attempt < INTEGRITY_ATTEMPTS:
                log.info("event %s raced another consumer; trying again", event.id)
                continue
            reason = (
                f"the database refused the event {attempt} times ({_sqlstate(exc)})"
                if isinstance(exc, IntegrityError)
                else f"another transaction stored the event during each of {attempt} attempts"
            )
            return Handled("dead_letter", "storage_refused", reason, event.id)
        except DBAPIError as exc:
            if _is_outage(exc):
                raise
            # DataError (NUL, value too long, numeric overflow) and the like: this
            # message would be refused on every retry.
            return Handled(
                "dead_letter",
                "storage_refused",
                f"the database refused a value ({_sqlstate(exc)})",
                event.id,
            )
        except Exception as exc:  # a message must not stop intake, whatever it trips
            handled = _internal_error(exc)
            return Handled(handled.outcome, handled.code, handled.reason, event.id)
        return _ingested(event, result)


PREFETCH_LIMIT = 65_535
"""AMQP 0-9-1 ``basic.qos`` carries the prefetch count as a short (16 bits)."""


def ingest_prefetch(batch_size: int) -> int:
    """The consumer's broker prefetch: two batches, so the next batch is already on the
    wire while one is stored and committed (with one batch, the broker sent the next
    only after the acknowledgement; docs/performance.md, "Ingest"). Unacknowledged
    messages of a consumer that dies come back, as before; only the count that can come
    back doubles."""
    return min(2 * batch_size, PREFETCH_LIMIT)


FIRST_BATCH_SHARE = 8
"""After a quiet moment a batch is stored once ``CROSSSELL_INGEST_BATCH`` / this many
messages have arrived (see :func:`next_batch_limit`)."""


def next_batch_limit(stored: int, batch_size: int) -> int:
    """How many messages the next batch may take, after a batch of ``stored``: twice as
    many, at least ``batch_size / FIRST_BATCH_SHARE`` and at most ``batch_size``.

    A burst after a quiet moment is stored 62, 124, 248, 496, then 500 at a time (with the
    default 500) instead of 500 from the first: the first emails are planned after the
    first 62 events, not after 500 were stored (0.2 to 0.4 s on two cores,
    docs/performance.md). A steady stream keeps its size: a batch cut by the linger at
    *n* allows 2 *n* next, so the linger, not the limit, keeps cutting it."""
    return max(min(2 * stored, batch_size), max(1, batch_size // FIRST_BATCH_SHARE))


STORE_POLL_SECONDS = 0.005
"""While a batch is being stored, the consumer's wait for the next message is cut to this
(seconds), so a stored batch is acknowledged within about this of its commit even when
no further message comes."""


class EventConsumer(ConsumerMixin):
    """Takes messages in batches: up to ``CROSSSELL_INGEST_BATCH`` of them (fewer right
    after a quiet moment: :func:`next_batch_limit`), or what came within
    ``CROSSSELL_INGEST_LINGER`` seconds of the first, stored in one transaction and
    acknowledged after its commit (docs/events.md).

    One batch is stored on a store thread while the consumer's own thread takes and
    validates the next: the wait on the database overlaps the broker and validation
    work (docs/performance.md, "Ingest"). Batches are still stored one at a time and in
    order, and every broker call (acknowledgements, dead letters, requeues) stays on the
    consumer's thread, which owns the channel."""

    def __init__(self, connection: Connection, runtime: Runtime) -> None:
        self.connection = connection
        self.runtime = runtime
        self.batch_size = runtime.settings.ingest_batch
        self.batch_limit = next_batch_limit(0, self.batch_size)
        self.linger = runtime.settings.ingest_linger
        self.stats = {"accepted": 0, "duplicate": 0, "dead_lettered": 0}
        self._taken: list[Message] = []
        self._deadline = 0.0
        self._store = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crosssell-store")
        self._storing: tuple[list[Message], Future[list[Handled]]] | None = None

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
                prefetch_count=ingest_prefetch(self.batch_size),
            )
        ]

    def consume(
        self,
        limit: int | None = None,
        timeout: float | None = None,
        safety_interval: float = 1,
        **kwargs: Any,
    ) -> Iterator[None]:
        """kombu's loop, which waits for a message at most ``safety_interval`` seconds,
        with a deadline added: a batch is stored when full (in :meth:`on_message`) or
        ``linger`` seconds after its first message, whichever comes first.

        Messages taken but not stored when the connection drops are not acknowledged;
        the broker delivers them again, and so are those of a batch whose commit came
        after the drop (they are then acknowledged as duplicates)."""
        with self.consumer_context(**kwargs) as (connection, _channel, _consumers):
            self._taken = []
            try:
                while not self.should_stop:
                    if self._storing is not None and self._storing[1].done():
                        self._settle_stored()
                    wait = self._deadline - time.monotonic() if self._taken else safety_interval
                    if self._taken and wait <= 0:
                        self.flush()
                        yield
                        continue
                    if self._storing is not None:
                        wait = min(wait, STORE_POLL_SECONDS)
                    try:
                        connection.drain_events(timeout=wait)
                    except TimeoutError:
                        connection.heartbeat_check()
                    except OSError:
                        if not self.should_stop:
                            raise
                    yield
            except Exception as exc:
                if isinstance(exc, (OSError, *self._connection_failures())):
                    self._abandon_stored()
                else:
                    # The transport could not decode an item (Redis: not an envelope):
                    # the connection is fine, so settle what was taken before _consume
                    # skips the item and starts again; kombu would otherwise give the
                    # taken messages back to the queue when the channel closes.
                    self.flush()
                    self._settle_stored()
                raise
            except BaseException:
                self._abandon_stored()
                raise
            self.flush()  # asked to stop: store what was taken, then leave
            self._settle_stored()

    def _connection_failures(self) -> tuple[type[BaseException], ...]:
        return tuple(self.connection.connection_errors) + tuple(self.connection.channel_errors)

    def on_message(self, message: Message) -> None:
        if not self._taken:
            self._deadline = time.monotonic() + self.linger
        self._taken.append(message)
        if len(self._taken) >= self.batch_limit:
            self.flush()

    def flush(self) -> None:
        """Validate the messages taken so far and hand them to the store thread, once
        the batch before them is stored and settled (:meth:`_settle_stored`)."""
        messages, self._taken = self._taken, []
        if not messages:
            return
        self.batch_limit = next_batch_limit(len(messages), self.batch_size)
        parsed = parse_bodies(self.runtime, [message.body for message in messages])
        self._settle_stored()
        self._storing = (messages, self._store.submit(store_parsed, self.runtime, parsed))

    def close(self) -> None:
        """Settle the batch being stored, if any, and end the store thread."""
        self._settle_stored()
        self._store.shutdown(wait=True)

    def _settle_stored(self) -> None:
        """Wait for the batch on the store thread, then settle each of its messages:
        acknowledge the stored and duplicate ones (after the commit), dead-letter the
        bad ones, requeue all the batch's events if the database is unavailable."""
        if self._storing is None:
            return
        messages, storing = self._storing
        self._storing = None
        outcomes = storing.result()
        retry: list[Message] = []
        accepted: list[tuple[Message, Handled]] = []
        for message, handled in zip(messages, outcomes, strict=True):
            if handled.outcome == "dead_letter":
                self.dead_letter(message, handled.code, handled.reason)
            elif handled.outcome == "retry":
                retry.append(message)
            else:
                accepted.append((message, handled))
        if retry:
            time.sleep(OUTAGE_PAUSE_SECONDS)
            for message in retry:
                message.requeue()
        self._ack([message for message, _ in accepted])
        self._accepted([handled for _, handled in accepted])

    def _abandon_stored(self) -> None:
        """The connection is gone: let the batch being stored finish, settle nothing
        (its delivery tags belong to the lost channel); the broker delivers its messages
        again and the stored ones come back as duplicates."""
        if self._storing is None:
            return
        messages, storing = self._storing
        self._storing = None
        try:
            storing.result()
        except Exception as exc:  # store_parsed never raises; a bug must not hide the drop
            log.error("storing a batch failed (%s)", type(exc).__name__)
        log.warning(
            "broker connection lost while %d messages were stored; the broker delivers them again",
            len(messages),
        )

    def _ack(self, messages: list[Message]) -> None:
        """Acknowledge ``messages``, after the commit and after the batch's dead letters
        and requeues. On AMQP one ``basic.ack`` with ``multiple`` settles the lot (AMQP
        0-9-1: every unsettled delivery up to that tag on the channel, and every earlier
        delivery on this channel is settled by now: the earlier batches and the rest of
        this one). Other transports (Redis, the embedded broker) ack one by one: kombu's
        virtual channels ignore ``multiple``."""
        if not messages:
            return
        if self.connection.transport.driver_type == "amqp":
            last = max(messages, key=lambda message: message.delivery_tag)
            last.ack(multiple=True)
            return
        for message in messages:
            message.ack()

    def _accepted(self, accepted: list[Handled]) -> None:
        """Count the stored and duplicate messages of a batch (:meth:`_ack` acknowledged
        them), one counter increment per outcome, and log one line per event (operators
        follow an event by it: docs/operations.md)."""
        counts = {"accepted": 0, "duplicate": 0}
        logged = log.isEnabledFor(logging.INFO)
        for handled in accepted:
            outcome = "duplicate" if handled.outcome == "duplicate" else "accepted"
            counts[outcome] += 1
            if handled.event_id is None or not logged:
                continue  # an erasure request: worker.records.privacy logs and counts it
            log.info(
                "event %s %s%s",
                handled.event_id,
                outcome,
                f", {handled.decided}" if handled.decided else "",
                extra=fields(
                    event_id=handled.event_id, customer_id=handled.customer_id, outcome=outcome
                ),
            )
        for outcome, count in counts.items():
            if count:
                self.stats[outcome] += count
                EVENTS.labels(outcome).inc(count)

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
        """Keep the bad message whole with its reason, then ack it; never log its body.

        The producer's headers and properties (``message_id``, ``correlation_id``,
        ``app_id``, ``timestamp``…) stay on the dead letter, so it can be traced back to
        its producer and replayed as it was; the reason is added as headers."""
        queue = dead_letter_queue(self.runtime.settings)
        producer = Producer(self.connection.default_channel)
        info = message.delivery_info or {}
        original = message.headers if isinstance(message.headers, dict) else {}
        properties = message.properties if isinstance(message.properties, dict) else {}
        headers = {
            **original,
            "x-crosssell-error": code,
            "x-crosssell-reason": reason,
            "x-original-routing-key": str(info.get("routing_key") or ""),
            "x-original-exchange": str(info.get("exchange") or ""),
        }
        if properties.get("user_id") is not None:
            # RabbitMQ refuses a user_id that is not the publishing connection's user.
            headers["x-original-user-id"] = properties["user_id"]
        body = message.body
        producer.publish(
            # surrogatepass: a Redis body may hold lone surrogates (JSON "\ud800"); keep them.
            body if isinstance(body, bytes) else str(body).encode("utf-8", "surrogatepass"),
            exchange="",
            routing_key=queue.name,
            headers=headers,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
            delivery_mode=2,
            declare=[queue],
            retry=True,
            **{
                name: properties[name]
                for name in KEPT_PROPERTIES
                if properties.get(name) is not None
            },
        )
        message.ack()
        self.stats["dead_lettered"] += 1
        EVENTS.labels("dead_lettered").inc()
        # The producer's message_id (if it set one) finds the letter in the dead-letter
        # queue; it is the producer's opaque id, never the body's data.
        mark = properties.get("message_id")
        log.warning(
            "dead-lettered a message%s: %s: %s",
            f" (message_id {redact(str(mark))[:200]})" if mark else "",
            code,
            redact(reason),
        )


KEPT_PROPERTIES = ("message_id", "correlation_id", "app_id", "timestamp", "type", "reply_to")
"""The producer's message properties a dead letter keeps. Not ``expiration`` (the dead
letter would vanish from its queue), ``delivery_mode`` (a dead letter is always
persistent) nor ``user_id`` (kept as the ``x-original-user-id`` header)."""


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
    """Consume until ``should_stop`` is set on the consumer (``started`` receives it).

    On its process's main thread (``crosssell consume``: the process is the consumer's)
    it consumes with the collector tuned for a service (``worker.process.collector``); on
    another thread (``crosssell run``, whose Celery worker tunes the process; tests) it
    leaves the process's collector alone."""
    url = runtime.settings.resolved_events_url
    announce(runtime, "consume")
    with Connection(url, transport_options=transport_options(url)) as connection:
        consumer = EventConsumer(connection, runtime)
        if started is not None:
            started(consumer)
        try:
            with collector_if_own_process():
                _consume(consumer)
        finally:
            consumer.close()
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
