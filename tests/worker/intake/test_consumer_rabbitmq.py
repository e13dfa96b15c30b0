"""The consumer on the real RabbitMQ, fed by pika: a plain AMQP client, not kombu."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from kombu.message import Message
from sqlalchemy import func, select

from tests.support.factories import as_json, make_settings, purchase
from tests.support.services import require_rabbitmq
from worker.core.db import transaction
from worker.core.models import Event
from worker.core.settings import Settings
from worker.intake import consumer as consumer_module
from worker.intake.consumer import EventConsumer, next_batch_limit, run_consumer
from worker.process.runtime import Runtime


def pika_parameters(settings: Settings) -> pika.URLParameters:
    """pika spells kombu's default vhost ``//`` as ``/%2F``."""
    url = settings.resolved_events_url
    return pika.URLParameters(url[:-2] + "/%2F" if url.endswith("//") else url)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def drop_topology(channel: Any, settings: Settings) -> None:
    """Delete the test's events queue, dead-letter queue and exchange (a pika channel)."""
    channel.queue_delete(settings.events_queue)
    channel.queue_delete(settings.dead_letter_queue)
    channel.exchange_delete(settings.events_exchange)


@pytest.fixture
def consumer_settings(tmp_path: Path, sqlite_url: str) -> Iterator[Settings]:
    settings = make_settings(tmp_path, database_url=sqlite_url, events_url=require_rabbitmq())
    runtime = Runtime(settings)
    consumers: list[EventConsumer] = []
    thread = threading.Thread(target=run_consumer, args=(runtime, consumers.append), daemon=True)
    thread.start()
    wait_for(lambda: bool(consumers))
    wait_for(lambda: _queue_exists(settings))
    yield settings
    consumers[0].should_stop = True
    thread.join(timeout=10)
    channel = pika.BlockingConnection(pika_parameters(settings)).channel()
    drop_topology(channel, settings)
    channel.connection.close()


def _queue_exists(settings: Settings) -> bool:
    connection = pika.BlockingConnection(pika_parameters(settings))
    try:
        connection.channel().queue_declare(settings.events_queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


def publish_plain(settings: Settings, body: bytes, routing_key: str) -> None:
    """What any CRM's AMQP client does: JSON bytes to the topic exchange, persistent."""
    connection = pika.BlockingConnection(pika_parameters(settings))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange=settings.events_exchange,
            routing_key=routing_key,
            body=body,
            properties=pika.BasicProperties(content_type="application/json", delivery_mode=2),
        )
    finally:
        connection.close()


def stored_events(settings: Settings, event_id: str) -> int:
    with transaction(settings.resolved_database_url) as session:
        count = session.scalar(
            select(func.count()).select_from(Event).where(Event.event_id == event_id)
        )
    return int(count or 0)


def test_plain_amqp_event_is_stored_once(consumer_settings: Settings) -> None:
    event = purchase()
    publish_plain(consumer_settings, as_json(event), "purchase")
    publish_plain(consumer_settings, as_json(event), "purchase")
    wait_for(lambda: stored_events(consumer_settings, event["id"]) == 1)
    time.sleep(0.5)
    assert stored_events(consumer_settings, event["id"]) == 1


def test_bad_messages_are_dead_lettered_with_a_reason(consumer_settings: Settings) -> None:
    publish_plain(consumer_settings, b"{not json", "purchase")
    bad_type = purchase()
    bad_type["type"] = "refund"
    publish_plain(consumer_settings, as_json(bad_type), "refund")
    later = purchase()
    publish_plain(consumer_settings, as_json(later), "purchase")
    # The consumer goes on after bad input.
    wait_for(lambda: stored_events(consumer_settings, later["id"]) == 1)

    connection = pika.BlockingConnection(pika_parameters(consumer_settings))
    channel = connection.channel()
    dead = []
    for _ in range(50):
        method, properties, body = channel.basic_get(
            consumer_settings.dead_letter_queue, auto_ack=True
        )
        if method is None:
            if len(dead) == 2:
                break
            time.sleep(0.1)
            continue
        dead.append((properties.headers, body))
    connection.close()
    assert [headers["x-crosssell-error"] for headers, _ in dead] == ["not_json", "unknown_type"]
    assert dead[0][1] == b"{not json"  # kept whole, for a human to inspect and replay
    assert "type must be one of" in dead[1][0]["x-crosssell-reason"]
    # The reason never carries the customer's personal data.
    assert bad_type["customer"]["email"] not in dead[1][0]["x-crosssell-reason"]
    assert dead[1][0]["x-original-routing-key"] == "refund"


def test_a_dead_letter_keeps_the_producers_headers_and_properties(
    consumer_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """What the producer set to trace its message stays on the dead letter; the reason is
    added beside its headers, and an expiration is not kept (the letter would vanish)."""
    sent = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        message_id="crm-msg-81",
        correlation_id="order-flow-7",
        app_id="crm-backend",
        timestamp=1_764_000_000,
        type="purchase",
        reply_to="crm.replies",
        user_id="guest",
        expiration="600000",
        headers={"tenant": "eu-1", "x-crosssell-error": "spoofed by the producer"},
    )
    connection = pika.BlockingConnection(pika_parameters(consumer_settings))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange=consumer_settings.events_exchange,
            routing_key="purchase",
            body=b"{not json",
            properties=sent,
        )
        kept: pika.BasicProperties | None = None
        for _ in range(150):
            method, kept, body = channel.basic_get(
                consumer_settings.dead_letter_queue, auto_ack=True
            )
            if method is not None:
                break
            time.sleep(0.1)
    finally:
        connection.close()
    assert method is not None and kept is not None
    assert body == b"{not json"
    for name in ("message_id", "correlation_id", "app_id", "timestamp", "type", "reply_to"):
        assert getattr(kept, name) == getattr(sent, name), name
    assert kept.content_type == sent.content_type
    assert kept.expiration is None
    assert kept.delivery_mode == 2
    assert kept.headers["tenant"] == "eu-1"
    assert kept.headers["x-crosssell-error"] == "not_json"  # ours, not the producer's
    assert kept.headers["x-original-user-id"] == "guest"
    assert kept.headers["x-original-routing-key"] == "purchase"
    # The log line names the producer's message_id, to find the letter by.
    assert "dead-lettered a message (message_id crm-msg-81): not_json" in caplog.text


def test_a_mixed_batch_is_settled_whole_by_one_multiple_ack(
    tmp_path: Path, sqlite_url: str
) -> None:
    """Good, bad and duplicate messages in one batch: the bad one is dead-lettered alone,
    the others are acknowledged together (``basic.ack`` with ``multiple``) after the
    commit. Once the consumer has stopped (its channel closed, so anything unacknowledged
    would be back in the queue), the queue is empty and each event is stored once."""
    settings = make_settings(tmp_path, database_url=sqlite_url, events_url=require_rabbitmq())
    runtime = Runtime(settings)
    consumers: list[EventConsumer] = []
    thread = threading.Thread(target=run_consumer, args=(runtime, consumers.append), daemon=True)
    thread.start()
    wait_for(lambda: bool(consumers))
    wait_for(lambda: _queue_exists(settings))
    events = [purchase() for _ in range(6)]
    bodies = [as_json(events[0]), b"{not json", *map(as_json, events[1:]), as_json(events[2])]
    connection = pika.BlockingConnection(pika_parameters(settings))
    try:
        channel = connection.channel()
        for body in bodies:  # in one go, so that they arrive within one batch's linger
            channel.basic_publish(
                exchange=settings.events_exchange,
                routing_key="purchase",
                body=body,
                properties=pika.BasicProperties(delivery_mode=2),
            )
        wait_for(lambda: all(stored_events(settings, event["id"]) == 1 for event in events))
        wait_for(lambda: consumers[0].handled == len(bodies))
        consumers[0].should_stop = True
        thread.join(timeout=10)
        assert not thread.is_alive()
        ready = channel.queue_declare(settings.events_queue, passive=True).method.message_count
        dead = channel.queue_declare(settings.dead_letter_queue, passive=True).method.message_count
        assert (ready, dead) == (0, 1)
        assert consumers[0].stats == {"accepted": 6, "duplicate": 1, "dead_lettered": 1}
        assert all(stored_events(settings, event["id"]) == 1 for event in events)
    finally:
        drop_topology(channel, settings)
        connection.close()


def test_the_next_batch_is_delivered_and_validated_while_one_is_stored(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer's prefetch is two batches: while its store thread stores one batch,
    the broker has already handed it the next (they wait in the client, not in the
    queue), and the consumer's own thread has taken and validated it, so no batch waits
    for the commit of the one before to be read. Nothing is acknowledged early: once the
    stores resume, every event is stored once, in order, and the queue ends empty."""
    settings = make_settings(
        tmp_path, database_url=sqlite_url, events_url=require_rabbitmq(), ingest_batch=3
    )
    runtime = Runtime(settings)
    storing, resume = threading.Event(), threading.Event()
    real_store, real_parse = consumer_module.store_parsed, consumer_module.parse_bodies
    validated: list[int] = []
    stored_batches: list[list[str]] = []

    def held_store(runtime: Runtime, parsed: list[consumer_module.Parsed]) -> list[object]:
        storing.set()
        assert resume.wait(timeout=20)
        stored_batches.append([json.loads(body)["id"] for body, _ in parsed])  # type: ignore[arg-type]
        return real_store(runtime, parsed)

    def counted_parse(runtime: Runtime, bodies: list[object]) -> list[consumer_module.Parsed]:
        validated.append(len(bodies))
        return real_parse(runtime, bodies)

    monkeypatch.setattr(consumer_module, "store_parsed", held_store)
    monkeypatch.setattr(consumer_module, "parse_bodies", counted_parse)
    events = [purchase() for _ in range(10)]
    connection = pika.BlockingConnection(pika_parameters(settings))
    channel = connection.channel()
    channel.exchange_declare(settings.events_exchange, "topic", durable=True)
    channel.queue_declare(settings.events_queue, durable=True)
    channel.queue_bind(settings.events_queue, settings.events_exchange, "#")
    consumers: list[EventConsumer] = []
    thread = threading.Thread(target=run_consumer, args=(runtime, consumers.append), daemon=True)
    try:
        for event in events:  # all waiting before the consumer starts
            channel.basic_publish(
                exchange=settings.events_exchange,
                routing_key="purchase",
                body=as_json(event),
                properties=pika.BasicProperties(delivery_mode=2),
            )
        thread.start()
        assert storing.wait(timeout=15)

        def ready() -> int:
            return channel.queue_declare(
                settings.events_queue, durable=True, passive=True
            ).method.message_count

        # Two batches' worth (the prefetch) is in the client: the first batch is being
        # stored, the second (twice its size: next_batch_limit) is already validated and
        # waits for the first's commit; nothing is acknowledged.
        wait_for(lambda: ready() == len(events) - 2 * settings.ingest_batch)
        first = next_batch_limit(0, settings.ingest_batch)
        wait_for(lambda: validated == [first, next_batch_limit(first, settings.ingest_batch)])
        assert consumers[0].handled == 0
        resume.set()
        wait_for(lambda: all(stored_events(settings, event["id"]) == 1 for event in events))
        wait_for(lambda: consumers[0].handled == len(events))
        consumers[0].should_stop = True
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert ready() == 0
        assert [event_id for batch in stored_batches for event_id in batch] == [
            event["id"] for event in events
        ]
    finally:
        resume.set()
        drop_topology(channel, settings)
        connection.close()


def test_a_batch_stored_while_the_connection_drops_comes_back_as_duplicates(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker connection is cut while a batch is on the store thread: the batch is
    committed but cannot be acknowledged on the lost channel (its delivery tags belong
    to it). The consumer reconnects, the broker delivers the messages again, and they
    are acknowledged as duplicates: each event stored once, none lost, queue empty."""
    settings = make_settings(
        tmp_path, database_url=sqlite_url, events_url=require_rabbitmq(), ingest_linger=0.2
    )
    runtime = Runtime(settings)
    storing, resume = threading.Event(), threading.Event()
    real_store = consumer_module.store_parsed

    def held_store(runtime: Runtime, parsed: list[consumer_module.Parsed]) -> list[object]:
        if not storing.is_set():
            storing.set()
            assert resume.wait(timeout=20)
        return real_store(runtime, parsed)

    channels: list[Any] = []
    real_on_message = EventConsumer.on_message

    def noted_on_message(self: EventConsumer, message: Message) -> None:
        channels.append(message.channel)
        real_on_message(self, message)

    monkeypatch.setattr(consumer_module, "store_parsed", held_store)
    monkeypatch.setattr(EventConsumer, "on_message", noted_on_message)
    events = [purchase() for _ in range(4)]
    consumers: list[EventConsumer] = []
    thread = threading.Thread(target=run_consumer, args=(runtime, consumers.append), daemon=True)
    thread.start()
    wait_for(lambda: bool(consumers))
    wait_for(lambda: _queue_exists(settings))
    connection = pika.BlockingConnection(pika_parameters(settings))
    channel = connection.channel()
    try:
        for event in events:
            channel.basic_publish(
                exchange=settings.events_exchange,
                routing_key="purchase",
                body=as_json(event),
                properties=pika.BasicProperties(delivery_mode=2),
            )
        assert storing.wait(timeout=15)
        # Cut the consumer's own socket (not the server's other connections).
        channels[0].connection.transport.sock.shutdown(socket.SHUT_RDWR)
        time.sleep(0.3)
        resume.set()
        wait_for(lambda: all(stored_events(settings, event["id"]) == 1 for event in events))
        wait_for(lambda: consumers[0].stats["duplicate"] == len(events))
        consumers[0].should_stop = True
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert consumers[0].stats == {"accepted": 0, "duplicate": 4, "dead_lettered": 0}
        ready = channel.queue_declare(settings.events_queue, passive=True).method.message_count
        assert ready == 0
        assert all(stored_events(settings, event["id"]) == 1 for event in events)
    finally:
        resume.set()
        drop_topology(channel, settings)
        connection.close()
