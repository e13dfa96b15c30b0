"""Hostile input at intake, against the real consumer on real brokers and databases.

Every case is a message a producer (buggy or malicious) can send. Each is published,
followed by a good event; the case passes when the bad one is in the dead-letter queue
with a reason that names the rule but not the value, the good one is stored, and both
took seconds, not minutes. Stacks: RabbitMQ + PostgreSQL and the embedded default
(kombu's SQLite broker + SQLite), plus Redis for its own envelope.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from kombu.connection import Connection
from kombu.messaging import Producer
from sqlalchemy import func, select, text

from tests.support.factories import as_json, customer_block, make_settings, purchase
from tests.support.services import fresh_postgres_database, require_rabbitmq, require_redis
from worker.consumer import EventConsumer, run_consumer
from worker.db import dispose_engines, engine_for, transaction
from worker.models import Event
from worker.run import _fatal_if_it_ends
from worker.runtime import Runtime
from worker.settings import Settings
from worker.tokens import sign, verify
from worker.topology import (
    dead_letter_queue,
    events_exchange,
    events_queue,
    transport_options,
)

# kombu's SQLite broker models use SQLAlchemy's ``noload``, deprecated in SQLAlchemy 2.1.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"
)
SECONDS_PER_CASE = 10.0  # generous on a shared 2-core machine; a poison case took 15 s+ before


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _stored(settings: Settings, event_id: str) -> int:
    with transaction(settings.resolved_database_url) as session:
        count = session.scalar(
            select(func.count()).select_from(Event).where(Event.event_id == event_id)
        )
    return int(count or 0)


def _with_raw(document: dict[str, Any], path: tuple[str | int, ...], literal: str) -> bytes:
    """``document`` as JSON with the value at ``path`` replaced by a raw JSON literal
    (a number JSON encoders would never write, a 100,000-level array)."""
    node: Any = document
    for step in path[:-1]:
        node = node[step]
    marker = f"__RAW_{uuid.uuid4().hex}__"
    node[path[-1]] = marker
    return json.dumps(document).replace(f'"{marker}"', literal).encode()


def _with(document: dict[str, Any], path: tuple[str | int, ...], value: object) -> bytes:
    node: Any = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    # ASCII with \u escapes: how JSON encoders send NUL, controls and lone surrogates.
    return json.dumps(document).encode("ascii")


def _usage(previous: object, current: object) -> dict[str, Any]:
    document = purchase()
    document["type"] = "usage_change"
    document["data"] = {
        "metric": "logins_per_week",
        "previous": previous,
        "current": current,
        "window_days": 28,
    }
    return document


@dataclass(frozen=True)
class Case:
    """One hostile message: its body, the error codes that are right for it, and the
    producer values that must never appear in the reason."""

    name: str
    body: bytes
    codes: tuple[str, ...]
    secrets: tuple[str, ...] = ()


def _cases() -> list[Case]:
    now = datetime.now(UTC)
    deep_array = "[" * 100_000 + "]" * 100_000
    deep_object = '{"a":' * 40_000 + "1" + "}" * 40_000
    cases = [
        # 1. poison messages that used to raise out of the consumer
        Case(
            "nesting 100,000",
            _with_raw(purchase(), ("customer", "attributes"), deep_array),
            ("too_deep",),
        ),
        Case("nesting objects", _with_raw(purchase(), ("data",), deep_object), ("too_deep",)),
        Case("nesting bare", b"[" * 150_000, ("too_deep",)),
        Case(
            "int 5000 digits",
            _with_raw(purchase(), ("data", "total"), "9" * 5000),
            ("number_limit",),
        ),
        Case(
            "int 5000 digits attr",
            _with_raw(purchase(), ("customer", "attributes", "n"), "-" + "1" * 5000),
            ("number_limit",),
        ),
        Case(
            "int 41 digits",
            _with_raw(purchase(), ("data", "items", 0, "quantity"), "1" * 41),
            ("number_limit",),
        ),
        Case(
            "change_pct overflow",
            _with(_usage("1E-999999", "1E+999999"), ("id",), f"evt-{uuid.uuid4().hex}"),
            ("wrong_schema",),
        ),
        Case(
            "change_pct over precision",
            _with(
                _usage("0.0000000001", "99999999999999999999"), ("id",), f"evt-{uuid.uuid4().hex}"
            ),
            (),
        ),
        Case(
            "usage levels as numbers",
            _with_raw(_usage(1, 2), ("data", "current"), "1e39"),
            ("wrong_schema",),
        ),
        Case(
            "occurred_at year 1 +01:00",
            _with(purchase(), ("occurred_at",), "0001-01-01T00:00:00+01:00"),
            ("wrong_schema",),
            ("0001-01-01",),
        ),
        Case(
            "occurred_at year 9999 -01:00",
            _with(purchase(), ("occurred_at",), "9999-12-31T23:59:59-01:00"),
            ("wrong_schema",),
            ("9999-12-31",),
        ),
        Case(
            "occurred_at year 9999 -00:01",
            _with(purchase(), ("occurred_at",), "9999-12-31T23:59:59.999999-00:01"),
            ("wrong_schema",),
        ),
        # 2. values a database refuses
        Case(
            "NUL in customer id",
            _with(purchase(), ("customer", "id"), "C-\x00-1"),
            ("bad_character",),
        ),
        Case(
            "NUL in event id",
            _with(purchase(), ("id",), f"evt-\x00{uuid.uuid4().hex}"),
            ("bad_character",),
        ),
        Case(
            "NUL in sku",
            _with(purchase(), ("data", "items", 0, "sku"), "LAP\x00"),
            ("bad_character",),
        ),
        Case(
            "NUL in email",
            _with(purchase(), ("customer", "email"), "a\x00b@example.ro"),
            ("bad_character",),
            ("a\x00b@example.ro",),
        ),
        Case(
            "NUL in attribute",
            _with(purchase(), ("customer", "attributes", "note"), "x\x00y"),
            ("bad_character",),
        ),
        Case(
            "NUL in key",
            _with(purchase(), ("customer", "attributes", "no\x00te"), "x"),
            ("bad_character",),
        ),
        Case(
            "lone surrogate",
            _with(purchase(), ("customer", "first_name"), "Ana\ud800"),
            ("bad_character",),
        ),
        Case(
            "customer id 129", _with(purchase(), ("customer", "id"), "C" * 129), ("wrong_schema",)
        ),
        Case("order id 129", _with(purchase(), ("data", "order_id"), "O" * 129), ("wrong_schema",)),
        Case(
            "locale over 35",
            _with(purchase(), ("customer", "locale"), "en-" + "a" * 40),
            ("wrong_schema",),
        ),
        Case(
            "string over limit",
            _with(purchase(), ("customer", "attributes", "note"), "n" * 20_000),
            ("string_limit",),
        ),
        # 3. numbers that cost hours
        Case(
            "1e10000000",
            _with_raw(
                purchase(customer={"id": "C-n"}), ("customer", "attributes"), '{"x": 1e10000000}'
            ),
            ("number_limit",),
        ),
        Case(
            "1e-10000000",
            _with_raw(purchase(), ("customer", "attributes", "x"), "1e-10000000"),
            ("number_limit",),
        ),
        Case(
            "-1E+999999999",
            _with_raw(purchase(), ("data", "total"), "-1E+999999999"),
            ("number_limit",),
        ),
        Case(
            "0e10000000",
            _with_raw(purchase(), ("customer", "attributes", "x"), "0e10000000"),
            ("number_limit",),
        ),
        Case(
            "exponent beyond decimal",
            _with_raw(purchase(), ("customer", "attributes", "x"), "1e99999999999999999999"),
            ("number_limit",),
        ),
        Case(
            "long fraction",
            _with_raw(purchase(), ("customer", "attributes", "x"), "0." + "0" * 45 + "1"),
            ("number_limit",),
        ),
        Case("NaN", _with_raw(purchase(), ("customer", "attributes", "x"), "NaN"), ("not_json",)),
        Case("-Infinity", _with_raw(purchase(), ("data", "total"), "-Infinity"), ("not_json",)),
        # 4. the accepted occurred_at range
        Case(
            "year 9000",
            _with(purchase(), ("occurred_at",), "9000-01-01T00:00:00Z"),
            ("wrong_schema",),
        ),
        Case(
            "two days ahead",
            _with(purchase(), ("occurred_at",), (now + timedelta(days=2)).isoformat()),
            ("wrong_schema",),
        ),
        Case(
            "before epoch",
            _with(purchase(), ("occurred_at",), "1969-12-31T23:59:59Z"),
            ("wrong_schema",),
        ),
        Case(
            "1900",
            _with(purchase(), ("occurred_at",), "1900-06-01T00:00:00+00:00"),
            ("wrong_schema",),
        ),
        # 5. identifiers
        Case(
            "U+001F in customer id",
            _with(purchase(), ("customer", "id"), "C-victim\x1fall"),
            ("wrong_schema",),
        ),
        Case("newline in event id", _with(purchase(), ("id",), "evt-\n1"), ("wrong_schema",)),
        Case(
            "trailing space in order id",
            _with(purchase(), ("data", "order_id"), "O-1 "),
            ("wrong_schema",),
        ),
        Case(
            "bidi override in category",
            _with(purchase(), ("data", "items", 0, "category"), "lap\u202etops"),
            ("wrong_schema",),
        ),
        Case(
            "NBSP first in customer id",
            _with(purchase(), ("customer", "id"), "\u00a0C-1"),
            ("wrong_schema",),
        ),
        Case(
            "tab in sku",
            _with(purchase(), ("data", "items", 0, "sku"), "LAP\t14"),
            ("wrong_schema",),
        ),
        # 6. reasons never quote values
        Case(
            "unknown zone",
            _with(purchase(), ("customer", "timezone"), "Mars/Secretzone"),
            ("wrong_schema",),
            ("Mars/Secretzone", "Secretzone"),
        ),
        Case(
            "path as zone",
            _with(purchase(), ("customer", "timezone"), "../../etc/passwd"),
            ("wrong_schema",),
            ("passwd",),
        ),
        Case(
            "unknown locale",
            _with(purchase(), ("customer", "locale"), "qq-SECRETLOC"),
            ("wrong_schema",),
            ("SECRETLOC",),
        ),
        Case(
            "PII as a key",
            _with(purchase(), ("ana.pop@example.ro",), 1),
            ("wrong_schema",),
            ("ana.pop@example.ro",),
        ),
        Case(
            "PII as attribute key",
            _with(purchase(), ("customer", "attributes", "ana pop"), {"x": 1}),
            ("wrong_schema",),
            ("ana pop",),
        ),
        Case(
            "control in name",
            _with(purchase(), ("customer", "first_name"), "Ana\x1bPopSecret"),
            ("wrong_schema",),
            ("PopSecret",),
        ),
        Case("not UTF-8", b'{"id": "\xff\xfe"}', ("not_utf8",)),
        Case("raw surrogate bytes", b'{"id": "\xed\xa0\x80"}', ("not_utf8",)),
        Case("not an object", b"[1, 2, 3]", ("wrong_schema",)),
    ]
    return cases


CASES = _cases()


def test_the_cases_cover_every_kind_with_several_examples() -> None:
    codes = [code for case in CASES for code in case.codes]
    for code in ("too_deep", "number_limit", "bad_character", "wrong_schema"):
        assert codes.count(code) >= 3, code
    assert all(len(case.body) < 256 * 1024 for case in CASES)


# --- consumers on real stacks --------------------------------------------------------------


@dataclass
class Stack:
    settings: Settings
    consumer: EventConsumer

    def publish(self, body: bytes, routing_key: str = "purchase") -> None:
        url = self.settings.resolved_events_url
        with Connection(url, transport_options=transport_options(url)) as connection:
            producer = Producer(connection.channel(), exchange=events_exchange(self.settings))
            events_queue(self.settings)(producer.channel).declare()
            producer.publish(
                body,
                routing_key=routing_key,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
            )

    def dead_letters(
        self, expected: int, timeout: float = SECONDS_PER_CASE
    ) -> list[tuple[dict[str, Any], bytes]]:
        """Take ``expected`` messages off the dead-letter queue (waiting up to ``timeout``)."""
        url = self.settings.resolved_events_url
        found: list[tuple[dict[str, Any], bytes]] = []
        deadline = time.monotonic() + timeout
        with Connection(url, transport_options=transport_options(url)) as connection:
            queue = dead_letter_queue(self.settings)(connection.default_channel)
            queue.declare()
            while len(found) < expected and time.monotonic() < deadline:
                message = queue.get(no_ack=True)
                if message is None:
                    time.sleep(0.05)
                    continue
                body = message.body
                found.append(
                    (
                        dict(message.headers),
                        body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass"),
                    )
                )
        return found


def _start(settings: Settings) -> Iterator[Stack]:
    consumers: list[EventConsumer] = []
    thread = threading.Thread(
        target=run_consumer, args=(Runtime(settings), consumers.append), daemon=True
    )
    thread.start()
    assert _wait_for(lambda: bool(consumers), 15)
    stack = Stack(settings, consumers[0])
    # The queue exists once the consumer consumes: a message sent now is not lost.
    probe = purchase()
    stack.publish(as_json(probe))
    assert _wait_for(lambda: _stored(settings, probe["id"]) == 1, 30)
    yield stack
    consumers[0].should_stop = True
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture(scope="module", params=["rabbitmq+postgresql", "embedded"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(request.param.replace("+", "-"))
    if request.param == "embedded":
        from worker.migrate import upgrade

        settings = make_settings(tmp)  # SQLite database and kombu's SQLite broker in var/
        upgrade(settings.resolved_database_url)
    else:
        settings = make_settings(
            tmp, database_url=request.getfixturevalue("postgres_url"), events_url=require_rabbitmq()
        )
    yield from _start(settings)
    if request.param != "embedded":
        with Connection(settings.resolved_events_url) as connection:
            channel = connection.default_channel
            channel.queue_delete(settings.events_queue)
            channel.queue_delete(settings.dead_letter_queue)
            channel.exchange_delete(settings.events_exchange)
    dispose_engines()


def _assert_dead_lettered_then_next_stored(stack: Stack, case: Case) -> None:
    good = purchase(customer=customer_block(f"C-{uuid.uuid4().hex[:8]}"))
    started = time.monotonic()
    stack.publish(case.body)
    stack.publish(as_json(good))
    stored = _wait_for(lambda: _stored(stack.settings, good["id"]) == 1, SECONDS_PER_CASE)
    elapsed = time.monotonic() - started
    dead = stack.dead_letters(1 if case.codes else 0, timeout=2.0)
    assert stored, f"{case.name}: the next good event was not stored"
    assert elapsed < SECONDS_PER_CASE, f"{case.name}: took {elapsed:.1f} s"
    if not case.codes:  # a valid event after all: stored, nothing dead-lettered
        assert dead == []
        return
    assert len(dead) == 1, f"{case.name}: not dead-lettered"
    headers, body = dead[0]
    assert headers["x-crosssell-error"] in case.codes, (case.name, headers)
    reason = headers["x-crosssell-reason"]
    assert reason
    assert body == case.body  # kept whole, byte for byte
    for secret in case.secrets:
        assert secret not in reason, (case.name, reason)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_message_is_dead_lettered_and_the_next_event_stored(
    stack: Stack, case: Case
) -> None:
    _assert_dead_lettered_then_next_stored(stack, case)
    assert stack.consumer.should_stop is False


def test_a_valid_event_at_the_edges_of_the_limits_is_stored(stack: Stack) -> None:
    """The limits refuse nothing a real CRM sends: a 40-character number literal, a
    128-character identifier, an event 23 hours ahead of the clock."""
    now = datetime.now(UTC)
    document = purchase(at=now + timedelta(hours=23))
    document["customer"]["id"] = "C-" + "é" * 126
    literal = "9" * 38 + ".5"
    assert len(literal) == 40
    stack.publish(_with_raw(document, ("customer", "attributes", "score"), literal))
    assert _wait_for(lambda: _stored(stack.settings, document["id"]) == 1, SECONDS_PER_CASE)
