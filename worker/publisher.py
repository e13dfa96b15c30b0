"""Push events onto the configured transport, exactly as a CRM would.

``crosssell publish`` sends each line of a JSON Lines file unchanged (bytes in, bytes
out) with ``content_type: application/json`` and the event type as routing key; the
consumer validates, so a bad line is dead-lettered there, visibly, not dropped here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from kombu.connection import Connection
from kombu.messaging import Producer

from worker.settings import Settings
from worker.topology import events_exchange, events_queue, transport_options


@dataclass(frozen=True, slots=True)
class PublishReport:
    published: int
    unparseable: int


def routing_key_of(line: bytes) -> str:
    """The event type, or ``unknown`` when the line is not an object with a text type."""
    try:
        document = json.loads(line)
    except ValueError:
        return "unknown"
    kind = document.get("type") if isinstance(document, dict) else None
    return kind if isinstance(kind, str) and kind.isidentifier() else "unknown"


def publish_lines(settings: Settings, lines: Iterable[bytes]) -> PublishReport:
    url = settings.resolved_events_url
    published = unparseable = 0
    queue = events_queue(settings)
    with Connection(url, transport_options=transport_options(url)) as connection:
        producer = Producer(connection.channel(), exchange=events_exchange(settings))
        queue(producer.channel).declare()
        for raw in lines:
            line = raw.strip()
            if not line:
                continue
            key = routing_key_of(line)
            unparseable += key == "unknown"
            producer.publish(
                line,
                routing_key=key,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                retry=True,
                retry_policy={"max_retries": 5, "interval_start": 0.5, "interval_step": 1},
            )
            published += 1
    return PublishReport(published, unparseable)
