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
from worker.commands.run import _fatal_if_it_ends
from worker.core.db import dispose_engines, engine_for, transaction
from worker.core.models import Event
from worker.core.settings import Settings
from worker.core.topology import (
    dead_letter_queue,
    events_exchange,
    events_queue,
    transport_options,
)
from worker.email.tokens import sign, verify
from worker.intake.consumer import EventConsumer, run_consumer
from worker.process.runtime import Runtime

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
        # Declared in config/attributes.yaml with another type: every condition on it
        # would be silently false.
        Case(
            "a text attribute sent as a list",
            _with(purchase(), ("customer", "attributes", "loyalty_tier"), ["platinum-x"]),
            ("wrong_schema",),
            ("platinum-x",),
        ),
        Case(
            "a number attribute sent as text",
            _with(purchase(), ("customer", "attributes", "newsletter_opens_30d"), "517"),
            ("wrong_schema",),
            ("517",),
        ),
        Case(
            "a yes/no attribute sent as text",
            _with(purchase(), ("customer", "attributes", "b2b"), "yes-indeed"),
            ("wrong_schema",),
            ("yes-indeed",),
        ),
        Case(
            "a list attribute sent as one text",
            _with(purchase(), ("customer", "attributes", "interests"), "cameras-only"),
            ("wrong_schema",),
            ("cameras-only",),
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
        from worker.commands.migrate import upgrade

        # SQLite database and the embedded broker (worker.core.embedded_broker) in var/; it
        # polls an idle queue every 50 ms by itself.
        settings = make_settings(tmp)
        upgrade(settings.resolved_database_url)
    else:
        settings = make_settings(
            tmp,
            database_url=request.getfixturevalue("postgres_url"),
            events_url=require_rabbitmq(),
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


# --- storage refusals: the database's "no" is the message's fault, not an outage ----------


@pytest.fixture(scope="module")
def refusing_postgres() -> Iterator[str]:
    """A migrated PostgreSQL database that refuses some *valid* events: first names over
    3 characters (a DataError, SQLSTATE 22001) and customers with id ``C-refused`` (a
    CHECK constraint: an IntegrityError that is no race). Validation cannot see these,
    so they reach the database, as a column or constraint mismatch would in production."""
    from worker.commands.migrate import upgrade

    with fresh_postgres_database() as url:
        upgrade(url)
        with engine_for(url).begin() as connection:
            connection.execute(
                text("ALTER TABLE customers ALTER COLUMN first_name TYPE varchar(3)")
            )
            connection.execute(
                text("ALTER TABLE customers ADD CONSTRAINT no_refused CHECK (id <> 'C-refused')")
            )
        dispose_engines()
        yield url


@pytest.fixture(scope="module")
def refusing_stack(
    refusing_postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    settings = make_settings(
        tmp_path_factory.mktemp("refusing"),
        database_url=refusing_postgres,
        events_url=require_rabbitmq(),
    )
    yield from _start_short_names(settings)
    with Connection(settings.resolved_events_url) as connection:
        channel = connection.default_channel
        channel.queue_delete(settings.events_queue)
        channel.queue_delete(settings.dead_letter_queue)
        channel.exchange_delete(settings.events_exchange)


def _start_short_names(settings: Settings) -> Iterator[Stack]:
    consumers: list[EventConsumer] = []
    thread = threading.Thread(
        target=run_consumer, args=(Runtime(settings), consumers.append), daemon=True
    )
    thread.start()
    assert _wait_for(lambda: bool(consumers), 15)
    yield Stack(settings, consumers[0])
    consumers[0].should_stop = True
    thread.join(timeout=10)


def _short_named(customer_id: str) -> dict[str, Any]:
    return purchase(customer=customer_block(customer_id, first_name="Ana"))


@pytest.mark.parametrize(
    ("refused", "sqlstate"),
    [
        (purchase(customer=customer_block("C-long-name", first_name="Ștefan")), "22001"),
        (_short_named("C-refused"), "23514"),
    ],
    ids=["value too long: DataError", "check violation: IntegrityError"],
)
def test_a_storage_refusal_is_dead_lettered_not_requeued_forever(
    refusing_stack: Stack, refused: dict[str, Any], sqlstate: str
) -> None:
    good = _short_named(f"C-{uuid.uuid4().hex[:8]}")
    started = time.monotonic()
    refusing_stack.publish(as_json(refused))
    refusing_stack.publish(as_json(good))
    assert _wait_for(lambda: _stored(refusing_stack.settings, good["id"]) == 1, SECONDS_PER_CASE)
    assert time.monotonic() - started < SECONDS_PER_CASE
    [(headers, body)] = refusing_stack.dead_letters(1)
    assert headers["x-crosssell-error"] == "storage_refused"
    assert sqlstate in headers["x-crosssell-reason"]
    assert "Ștefan" not in headers["x-crosssell-reason"]
    assert "C-refused" not in headers["x-crosssell-reason"]
    assert body == as_json(refused)
    assert _stored(refusing_stack.settings, refused["id"]) == 0


def test_a_lost_database_connection_still_requeues(tmp_path: Path) -> None:
    """The other side of the line: an outage is retried, not dead-lettered."""
    from worker.intake.consumer import handle_body

    settings = make_settings(
        tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:1/none"
    )
    handled = handle_body(Runtime(settings), as_json(purchase()))
    assert handled.outcome == "retry"


# --- Redis: the envelope is the transport's, the body is ours ------------------------------


def _redis_envelope(body: object, **override: Any) -> str:
    envelope: dict[str, Any] = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {},
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "crm.events", "routing_key": "purchase"},
        },
    }
    envelope.update(override)
    return json.dumps(envelope)


@pytest.fixture
def redis_stack(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[Stack, redis.Redis]]:
    url = require_redis()
    settings = make_settings(tmp_path, database_url=sqlite_url, events_url=url)
    client = redis.Redis.from_url(url)
    yield from ((stack, client) for stack in _start_short_names(settings))
    client.delete(settings.events_queue, settings.dead_letter_queue)
    client.close()


def test_redis_bodies_and_envelopes_that_are_not_events(
    redis_stack: tuple[Stack, redis.Redis],
) -> None:
    stack, client = redis_stack
    queue = stack.settings.events_queue
    good = purchase()
    bad_bodies = [
        _redis_envelope('{"id": "\\ud800"}'),  # a JSON escape of a lone surrogate in the body
        _redis_envelope('{"id": "\ud800"}'),  # the body string itself holds a lone surrogate
        _redis_envelope(json.dumps(_usage("1E-999999", "1E+999999"))),
        _redis_envelope("[" * 100_000),
        _redis_envelope(42),  # a body that is not text at all
    ]
    broken_envelopes = ["not json at all", "[1, 2]", _redis_envelope("{}", properties=None)]
    for item in [*bad_bodies, *broken_envelopes]:
        client.lpush(queue, item)
    client.lpush(queue, _redis_envelope(json.dumps(good)))
    assert _wait_for(lambda: _stored(stack.settings, good["id"]) == 1, 20)
    assert _wait_for(lambda: client.llen(stack.settings.dead_letter_queue) == len(bad_bodies), 5)
    codes = sorted(
        json.loads(item)["headers"]["x-crosssell-error"]
        for item in client.lrange(stack.settings.dead_letter_queue, 0, -1)
    )
    assert codes == sorted(["bad_character", "not_utf8", "wrong_schema", "too_deep", "not_json"])


# --- crosssell publish ----------------------------------------------------------------------


def test_publish_reports_bad_lines_by_number_and_publishes_the_good_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.commands.cli import main
    from worker.commands.migrate import upgrade
    from worker.core.settings import get_settings

    settings = make_settings(tmp_path)
    for name, value in {
        "CROSSSELL_VAR_DIR": str(settings.var_dir),
        "CROSSSELL_EVENTS_QUEUE": settings.events_queue,
        "CROSSSELL_EVENTS_EXCHANGE": settings.events_exchange,
        "CROSSSELL_DEAD_LETTER_QUEUE": settings.dead_letter_queue,
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    upgrade(settings.resolved_database_url)
    goods = [purchase() for _ in range(3)]
    lines = [
        as_json(goods[0]),
        b"[" * 100_000,  # line 2: RecursionError in the old publisher
        b"",
        _with_raw(purchase(), ("customer", "attributes", "x"), "1e10000000"),  # line 4
        as_json(goods[1]),
        _with_raw(purchase(), ("data", "total"), "9" * 5000),  # line 6
        as_json(goods[2]),
        _with(purchase(), ("customer", "attributes", "b2b"), "yes"),  # line 8: declared boolean
    ]
    events_file = tmp_path / "events.jsonl"
    events_file.write_bytes(b"\n".join(lines) + b"\n")
    try:
        result = CliRunner().invoke(main, ["publish", str(events_file)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert "published 3 event(s), 4 invalid line(s)" in result.stdout
    assert [line.split(":")[0] for line in result.stderr.splitlines()] == [
        "line 2",
        "line 4",
        "line 6",
        "line 8",
    ]
    assert "customer.attributes.b2b: must be true or false" in result.stderr
    stack = next(_start_short_names(settings))
    try:
        assert _wait_for(lambda: all(_stored(settings, good["id"]) == 1 for good in goods), 20)
        assert stack.consumer.stats["dead_lettered"] == 0
    finally:
        stack.consumer.should_stop = True


# --- a dying service thread stops `crosssell run` --------------------------------------------


def test_a_service_thread_that_dies_stops_the_process_with_a_failure() -> None:
    received: list[int] = []

    def record(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    def dies() -> None:
        raise RecursionError("whatever a bug raises")

    previous = signal.signal(signal.SIGTERM, record)
    try:
        for target, stopping, expect_failure in [
            (dies, False, True),
            (lambda: None, False, True),  # returned while nobody asked it to stop
            (lambda: None, True, False),  # returned because the process is stopping
        ]:
            failed, stop = threading.Event(), threading.Event()
            if stopping:
                stop.set()
            received.clear()
            thread = threading.Thread(target=_fatal_if_it_ends(target, failed, stop))
            thread.start()
            thread.join(timeout=5)
            assert _wait_for(lambda: bool(received), 2) == expect_failure
            assert failed.is_set() == expect_failure
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- unsubscribe tokens cannot be made ambiguous by an identifier -----------------------------

KEYS = {"k1": b"secret-one", "k0": b"secret-zero"}


def _legacy_sign(keys: dict[str, bytes], customer_id: str, scope: str) -> str:
    """The first token format, rebuilt from its definition: base64url of
    ``customer_id U+001F scope``, HMAC-SHA256 over ``kid.payload``, cut to 20 bytes."""
    kid, key = next(iter(keys.items()))
    payload = base64.urlsafe_b64encode(f"{customer_id}\x1f{scope}".encode()).rstrip(b"=").decode()
    mac = hmac.new(key, f"{kid}.{payload}".encode(), hashlib.sha256).digest()[:20]
    return f"{kid}.{payload}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def test_a_unit_separator_in_a_customer_id_cannot_point_at_another_customer() -> None:
    attacker = "C-victim\x1fall"
    assert verify(KEYS, sign(KEYS, attacker, "all")) == (attacker, "all")
    # A link sent out before the fix, for the same id, still names that id.
    assert verify(KEYS, _legacy_sign(KEYS, attacker, "all")) == (attacker, "all")
    assert verify(KEYS, _legacy_sign(KEYS, "C-1001", "all")) == ("C-1001", "all")


@hypothesis_settings(max_examples=200, deadline=None, database=None)
@given(customer_id=st.text(max_size=140), scope=st.sampled_from(["all", "campaign:x", ""]))
def test_tokens_round_trip_any_customer_id(customer_id: str, scope: str) -> None:
    token = sign(KEYS, customer_id, scope)
    assert verify(KEYS, token) == (customer_id, scope)
    kid, payload, signature = token.split(".")
    # Another key, a flipped payload, or a foreign signature never verifies.
    assert verify({"k1": b"other"}, token) is None
    assert verify(KEYS, f"{kid}.{payload}x.{signature}") is None
    assert (
        verify(KEYS, f"{kid}.{_legacy_sign(KEYS, 'C-other', scope).split('.')[1]}.{signature}")
        is None
    )


@hypothesis_settings(max_examples=200, deadline=None, database=None)
@given(customer_id=st.text(max_size=140))
def test_legacy_tokens_of_any_customer_id_keep_verifying(customer_id: str) -> None:
    assert verify(KEYS, _legacy_sign(KEYS, customer_id, "all")) == (customer_id, "all")


@hypothesis_settings(max_examples=60, deadline=None)
@given(customer_id=st.text(min_size=1, max_size=40), scope=st.sampled_from(["all", "cross_sell"]))
def test_a_token_verifies_only_as_it_was_written(customer_id: str, scope: str) -> None:
    """Base64 decoding ignores a 20-byte MAC's two spare bits and trailing padding: a
    token with its last character changed to another one of the same six bits' prefix,
    or with "=" added, decoded to the same MAC and verified. Only the text ``sign``
    wrote verifies now."""
    from worker.email.tokens import sign, verify

    token = sign(KEYS, customer_id, scope)
    assert verify(KEYS, token) == (customer_id, scope)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    variants = [token[:-1] + other for other in alphabet if other != token[-1]]
    variants += [token + "=", token + "==", token + "%3D", token + " ", token.upper()]
    for variant in variants:
        if variant != token:
            assert verify(KEYS, variant) is None, variant
