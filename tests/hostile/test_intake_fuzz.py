"""Fuzz the consumer's message handler: whatever the body, it is stored, a duplicate or
dead-lettered with a reason, and the handler itself never raises.

The handler runs for real (validation, ingest, decisions) on a migrated SQLite database;
hypothesis feeds it arbitrary bytes, arbitrary JSON documents, and valid events with one
field replaced by arbitrary JSON or by a raw number literal no encoder would write.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.factories import customer_block, make_settings, purchase
from worker.core.db import dispose_engines
from worker.intake.consumer import Handled, handle_body
from worker.process.runtime import Runtime

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOWEST_SECONDS = 2.0  # one message; the poison cases used to take 15 s and more


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    from worker.commands.migrate import upgrade

    settings_ = make_settings(tmp_path_factory.mktemp("fuzz"))
    upgrade(settings_.resolved_database_url)
    runtime = Runtime(settings_)
    runtime.rules.current()  # load and compile the campaigns once, outside the timing
    yield runtime
    dispose_engines()


def _handled(runtime: Runtime, body: bytes | str) -> Handled:
    started = time.monotonic()
    handled = handle_body(runtime, body)
    assert time.monotonic() - started < SLOWEST_SECONDS
    assert handled.outcome in ("stored", "duplicate", "dead_letter")
    if handled.outcome == "dead_letter":
        # internal_error would mean an exception nobody classified: a bug the fuzz found.
        assert handled.code != "internal_error", handled.reason
        assert handled.reason
    return handled


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
# RFC 8259 section 6 number grammar, with long digit runs and exponents on purpose.
number_literals = st.from_regex(
    r"\A-?(0|[1-9][0-9]{0,60})(\.[0-9]{1,60})?([eE][+-]?[0-9]{1,22})?\Z", fullmatch=True
)
FIELDS: list[tuple[str | int, ...]] = [
    ("id",),
    ("occurred_at",),
    ("customer",),
    ("customer", "id"),
    ("customer", "email"),
    ("customer", "first_name"),
    ("customer", "locale"),
    ("customer", "timezone"),
    ("customer", "consent", "email_marketing"),
    ("customer", "attributes", "loyalty_tier"),
    ("customer", "attributes", "anything"),
    ("data", "order_id"),
    ("data", "currency"),
    ("data", "total"),
    ("data", "items", 0, "sku"),
    ("data", "items", 0, "category"),
    ("data", "items", 0, "quantity"),
    ("data", "items", 0, "unit_price"),
]


def _replaced(path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    document = purchase(customer=customer_block(f"C-{uuid.uuid4().hex[:8]}"))
    node: Any = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return document


@FUZZ
@given(body=st.binary(max_size=4096))
def test_arbitrary_bytes(runtime: Runtime, body: bytes) -> None:
    _handled(runtime, body)


@FUZZ
@given(document=json_values)
def test_arbitrary_json_documents(runtime: Runtime, document: object) -> None:
    _handled(runtime, json.dumps(document).encode())
    _handled(runtime, json.dumps(document, ensure_ascii=False))


@FUZZ
@given(path=st.sampled_from(FIELDS), value=json_values)
def test_a_valid_event_with_one_field_replaced_by_any_json(
    runtime: Runtime, path: tuple[str | int, ...], value: object
) -> None:
    _handled(runtime, json.dumps(_replaced(path, value)).encode())


@FUZZ
@given(path=st.sampled_from(FIELDS), literal=number_literals)
def test_a_valid_event_with_one_field_a_raw_number_literal(
    runtime: Runtime, path: tuple[str | int, ...], literal: str
) -> None:
    marker = f"__N_{uuid.uuid4().hex}__"
    body = json.dumps(_replaced(path, marker)).replace(f'"{marker}"', literal)
    _handled(runtime, body.encode())


@FUZZ
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    offset_minutes=st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1),
)
def test_any_occurred_at_with_any_offset(
    runtime: Runtime, moment: datetime, offset_minutes: int
) -> None:
    stamp = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    document = _replaced(("occurred_at",), stamp.isoformat())
    handled = _handled(runtime, json.dumps(document).encode())
    # The rule, computed without converting the stamp (naive arithmetic cannot overflow).
    since_epoch = moment - datetime(1970, 1, 1) - timedelta(minutes=offset_minutes)
    latest = runtime.clock.now() + timedelta(days=1) - datetime(1970, 1, 1, tzinfo=UTC)
    if since_epoch < timedelta(0) or since_epoch > latest + timedelta(seconds=5):
        assert (handled.outcome, handled.code) == ("dead_letter", "wrong_schema")
    elif timedelta(0) <= since_epoch < latest - timedelta(seconds=5):
        assert handled.outcome == "stored"


@FUZZ
@given(
    usage=st.fixed_dictionaries(
        {
            "metric": st.text(min_size=1, max_size=10),
            "previous": json_scalars | number_literals.map(lambda text: json.loads(text)),
            "current": json_scalars | st.decimals(allow_nan=True).map(str),
            "window_days": st.integers(),
        }
    )
)
def test_usage_change_with_any_levels(runtime: Runtime, usage: dict[str, object]) -> None:
    document = _replaced(("data",), usage)
    document["type"] = "usage_change"
    _handled(runtime, json.dumps(document, default=str).encode())
