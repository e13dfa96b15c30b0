"""The broker objects events travel through, declared the same way by every process.

A plain AMQP client publishes JSON to the durable topic exchange ``crm.events`` with the
event type as routing key; the worker's durable queue is bound with ``#`` so it receives
every type, unknown ones included (those are dead-lettered with a reason, never dropped).
"""

from __future__ import annotations

from kombu.entity import Exchange, Queue
from kombu.transport import TRANSPORT_ALIASES

from worker.core import embedded_broker
from worker.core.settings import Settings

# The embedded broker answers ``sqlite:///…`` URLs in every process that imports this
# module (the consumer, the publisher, the Celery app): kombu looks transports up here.
TRANSPORT_ALIASES[embedded_broker.SCHEME] = "worker.core.embedded_broker:Transport"


def events_exchange(settings: Settings) -> Exchange:
    return Exchange(settings.events_exchange, type="topic", durable=True)


def events_queue(settings: Settings) -> Queue:
    return Queue(
        settings.events_queue,
        exchange=events_exchange(settings),
        routing_key="#",
        durable=True,
    )


def dead_letter_queue(settings: Settings) -> Queue:
    """Bad messages, kept whole with the reason in headers; read via the default exchange."""
    return Queue(settings.dead_letter_queue, routing_key=settings.dead_letter_queue, durable=True)


def transport_options(url: str) -> dict[str, object]:
    """Per-transport options that make publishing safe (confirms). The embedded broker
    (``sqlite:///``) needs none: its lease and polling defaults live in
    :mod:`worker.core.embedded_broker`."""
    if url.startswith(("amqp", "pyamqp")):
        return {"confirm_publish": True}
    if url.startswith(("redis", "rediss")):
        return {"visibility_timeout": 3600}
    return {}
