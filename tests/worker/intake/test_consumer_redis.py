"""Events over Redis: what a non-Python producer does (docs/events.md), for real."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.factories import make_settings, purchase
from tests.support.services import require_redis
from tests.worker.intake.test_consumer_rabbitmq import stored_events, wait_for
from worker.core.settings import Settings
from worker.intake.consumer import EventConsumer, run_consumer
from worker.process.runtime import Runtime


@pytest.fixture
def redis_consumer(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[Settings, redis.Redis]]:
    url = require_redis()
    settings = make_settings(tmp_path, database_url=sqlite_url, events_url=url)
    consumers: list[EventConsumer] = []
    thread = threading.Thread(
        target=run_consumer, args=(Runtime(settings), consumers.append), daemon=True
    )
    thread.start()
    wait_for(lambda: bool(consumers))
    client = redis.Redis.from_url(url)
    yield settings, client
    consumers[0].should_stop = True
    thread.join(timeout=10)
    client.delete(settings.events_queue, settings.dead_letter_queue)
    client.close()


def envelope(body: str, routing_key: str) -> str:
    """The documented Redis envelope: the event JSON as a string in ``body``."""
    return json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {},
            "properties": {
                "delivery_tag": str(uuid.uuid4()),
                "delivery_info": {"exchange": "crm.events", "routing_key": routing_key},
            },
        }
    )


def test_lpush_of_the_documented_envelope_is_consumed(
    redis_consumer: tuple[Settings, redis.Redis],
) -> None:
    settings, client = redis_consumer
    event = purchase()
    client.lpush(settings.events_queue, envelope(json.dumps(event), "purchase"))
    client.lpush(settings.events_queue, envelope("{bad", "purchase"))
    client.lpush(settings.events_queue, envelope(json.dumps(event), "purchase"))
    wait_for(lambda: client.llen(settings.dead_letter_queue) == 1)
    wait_for(lambda: client.llen(settings.events_queue) == 0)
    assert stored_events(settings, event["id"]) == 1
    dead = json.loads(client.lindex(settings.dead_letter_queue, 0))
    assert dead["headers"]["x-crosssell-error"] == "not_json"


def test_a_dead_letter_keeps_the_envelopes_headers_and_properties(
    redis_consumer: tuple[Settings, redis.Redis],
) -> None:
    settings, client = redis_consumer
    sent = json.loads(envelope("{bad", "purchase"))
    sent["headers"] = {"tenant": "eu-1"}
    sent["properties"].update(
        message_id="crm-msg-82", correlation_id="order-flow-8", app_id="crm", timestamp=1764000000
    )
    client.lpush(settings.events_queue, json.dumps(sent))
    wait_for(lambda: client.llen(settings.dead_letter_queue) == 1)
    dead = json.loads(client.lindex(settings.dead_letter_queue, 0))
    assert dead["headers"]["tenant"] == "eu-1"
    assert dead["headers"]["x-crosssell-error"] == "not_json"
    for name in ("message_id", "correlation_id", "app_id", "timestamp"):
        assert dead["properties"][name] == sent["properties"][name], name
