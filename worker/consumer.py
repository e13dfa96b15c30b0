"""The event consumer: broker message → validated event → committed row → ack.

Built on kombu's ``ConsumerMixin`` so it reconnects by itself. The raw body is decoded
here, not by kombu, so any AMQP client's plain JSON is accepted and anything bad is
dead-lettered with a reason instead of kombu's default of acknowledging and losing it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kombu.connection import Connection
from kombu.message import Message
from kombu.messaging import Producer
from kombu.mixins import ConsumerMixin
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from triggers.events import InvalidEvent, parse_event
from worker.db import transaction
from worker.ingest import ingest_event
from worker.metrics import EVENTS
from worker.runtime import Runtime
from worker.startup import announce
from worker.topology import dead_letter_queue, events_queue, transport_options

log = logging.getLogger(__name__)


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
        body: bytes | str = message.body
        try:
            event = parse_event(body)
        except InvalidEvent as bad:
            self.dead_letter(message, bad.code, bad.reason)
            return
        try:
            with transaction(self.runtime.settings.resolved_database_url) as session:
                result = ingest_event(
                    session,
                    event,
                    self.runtime.rules.current(),
                    self.runtime.policy,
                    self.runtime.clock.now(),
                )
        except IntegrityError:
            # A concurrent consumer stored the same event or plan first; retry to see it.
            log.info("event %s raced another consumer; requeued", event.id)
            message.requeue()
            return
        except (OperationalError, DBAPIError) as exc:
            log.warning(
                "database unavailable, event %s requeued: %s", event.id, exc.__class__.__name__
            )
            time.sleep(1.0)
            message.requeue()
            return
        message.ack()
        outcome = "duplicate" if result.duplicate else "accepted"
        self.stats[outcome] += 1
        EVENTS.labels(outcome).inc()
        log.debug("event %s %s", event.id, "duplicate" if result.duplicate else "stored")
        if self.on_ingested is not None:
            self.on_ingested()

    def dead_letter(self, message: Message, code: str, reason: str) -> None:
        """Keep the bad message whole with its reason, then ack it; never log its body."""
        queue = dead_letter_queue(self.runtime.settings)
        producer = Producer(self.connection.default_channel)
        headers = {
            "x-crosssell-error": code,
            "x-crosssell-reason": reason,
            "x-original-routing-key": message.delivery_info.get("routing_key", ""),
            "x-original-exchange": message.delivery_info.get("exchange", ""),
        }
        body = message.body
        producer.publish(
            body if isinstance(body, bytes) else body.encode("utf-8", "surrogateescape"),
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
        log.warning("dead-lettered a message: %s: %s", code, reason)


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
        consumer.run()
        return consumer
