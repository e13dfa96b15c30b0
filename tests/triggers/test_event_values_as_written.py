"""Each field of an event takes the JSON type the contract names, never a guess.

Times are ISO 8601 text with an offset: a number is not read as seconds or
milliseconds since the epoch. Counts are JSON integers: not ``true``, ``"1"`` or
``1.0``. Money and usage levels are JSON numbers or decimal strings written plainly: no
padding, plus sign, thousands separator or leading zero. What ``str(Decimal)`` writes
(``1E+3``) stays accepted: stored events are replayed through the same model."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.triggers.builders import anniversary_event, design_event, to_json, usage_event
from triggers.events import InvalidEvent, parse_event, validate_event

RECEIVED = datetime(2026, 11, 21, tzinfo=UTC)


def _set(document: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    node: Any = document
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return document


Build = Callable[[], dict[str, Any]]


def _case_id(value: object) -> str:
    """Stable across pytest-xdist workers (a function's repr holds its address)."""
    return getattr(value, "__name__", None) or repr(value)[:30]


PURCHASE: Build = design_event


def USAGE() -> dict[str, Any]:
    return usage_event("10", "12")


ANNIVERSARY: Build = anniversary_event

REFUSED = [
    (PURCHASE, "occurred_at", 1764000000),
    (PURCHASE, "occurred_at", 1764000000000),
    (PURCHASE, "occurred_at", 1),
    (PURCHASE, "occurred_at", "1764000000"),
    (PURCHASE, "occurred_at", True),
    (PURCHASE, "occurred_at", 1.5),
    (PURCHASE, "occurred_at", "2026-11-20"),
    (PURCHASE, "occurred_at", "Fri, 20 Nov 2026 10:15:00 +0200"),
    (PURCHASE, "customer.consent.updated_at", 1764000000),
    (PURCHASE, "data.items.0.quantity", True),
    (PURCHASE, "data.items.0.quantity", "1"),
    (PURCHASE, "data.items.0.quantity", 1.0),
    (PURCHASE, "data.total", "  4299.00 "),
    (PURCHASE, "data.total", "0004299.00"),
    (PURCHASE, "data.total", "+4299.00"),
    (PURCHASE, "data.total", "4,299.00"),
    (PURCHASE, "data.total", "4299."),
    (PURCHASE, "data.total", ".5"),
    (PURCHASE, "data.total", True),
    (PURCHASE, "data.items.0.unit_price", "4299.00\n"),
    (PURCHASE, "data.items.0.unit_price", "4 299,00"),
    (USAGE, "data.previous", " 10"),
    (USAGE, "data.current", True),
    (USAGE, "data.current", "+12"),
    (USAGE, "data.window_days", "14"),
    (USAGE, "data.window_days", True),
    (ANNIVERSARY, "data.years", "2"),
    (ANNIVERSARY, "data.years", False),
    (ANNIVERSARY, "data.years", 2.0),
]


@pytest.mark.parametrize(("build", "path", "value"), REFUSED, ids=_case_id)
def test_a_value_of_another_json_type_is_wrong_schema_at_its_field(
    build: Build, path: str, value: object
) -> None:
    with pytest.raises(InvalidEvent) as refused:
        parse_event(to_json(_set(build(), path, value)), received_at=RECEIVED)
    assert refused.value.code == "wrong_schema"
    assert path.rsplit(".", 1)[-1] in refused.value.reason, refused.value.reason


ACCEPTED = [
    (PURCHASE, "occurred_at", "2026-11-20T10:15:00+02:00"),
    (PURCHASE, "occurred_at", "2026-11-20 08:15:00Z"),
    (PURCHASE, "occurred_at", "2026-11-20T08:15:00.123456Z"),
    (PURCHASE, "data.total", "4299"),
    (PURCHASE, "data.total", "0.50"),
    (PURCHASE, "data.total", "0"),
    (PURCHASE, "data.total", "1E+3"),
    (PURCHASE, "data.total", 4299),
    (PURCHASE, "data.items.0.quantity", 3),
    (USAGE, "data.previous", "-2.5"),
    (USAGE, "data.current", "0E-10"),
    (ANNIVERSARY, "data.years", 0),
]


@pytest.mark.parametrize(("build", "path", "value"), ACCEPTED, ids=_case_id)
def test_values_as_the_contract_writes_them_are_accepted(
    build: Build, path: str, value: object
) -> None:
    parse_event(to_json(_set(build(), path, value)), received_at=RECEIVED)


@pytest.mark.parametrize(
    "body",
    [
        b'"total": 4.299e3',
        b'"total": 4299.50',
        b'"total": 0.0001',
    ],
)
def test_json_numbers_for_money_stay_accepted(body: bytes) -> None:
    text = to_json(design_event()).replace(b'"total": "4299.00"', body)
    parse_event(text, received_at=RECEIVED)


@pytest.mark.parametrize("total", ["4299.00", "1E+3", "0E-10", "0.0001", "1234567890.5"])
def test_a_stored_event_replays_through_the_same_rules(total: str) -> None:
    """The inbox stores an event as ``model_dump(mode="json")`` (``worker.intake.ingest.
    event_payload``): decimals by ``str(Decimal)``, times in ISO 8601. What it stores,
    ``validate_event`` accepts again (explain, simulate, the recheck at sending)."""
    event = parse_event(to_json(_set(design_event(), "data.total", total)), received_at=RECEIVED)
    replayed = validate_event(event.model_dump(mode="json"))
    assert replayed == event
    assert isinstance(replayed.occurred_at, datetime)
    assert replayed.data.total == Decimal(total)  # type: ignore[union-attr]
