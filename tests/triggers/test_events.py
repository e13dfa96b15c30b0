"""Event envelope v1 (DESIGN §3.1): parsing, exact money, error codes and PII-free reasons."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.triggers.builders import (
    DESIGN_EVENT,
    anniversary_event,
    design_event,
    to_json,
    usage_event,
)
from triggers.events import (
    MAX_EVENT_BYTES,
    AnniversaryEvent,
    InvalidEvent,
    PurchaseEvent,
    UsageChangeEvent,
    event_time,
    parse_event,
    validate_event,
)

PII = ("ana.pop@example.ro", "Ana", "Pop")


def _reject(body: bytes | str) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(body)
    return caught.value


def _with_number(path: tuple[str | int, ...], number_text: str) -> bytes:
    """The DESIGN example with one field replaced by a raw JSON number literal."""
    document = design_event()
    node: Any = document
    for step in path[:-1]:
        node = node[step]
    marker = "__NUMBER__"
    node[path[-1]] = marker
    return json.dumps(document).replace(f'"{marker}"', number_text).encode()


# --- the DESIGN example -------------------------------------------------------------------


def test_design_example_parses_into_a_purchase_event() -> None:
    event = parse_event(to_json(DESIGN_EVENT))

    assert isinstance(event, PurchaseEvent)
    assert event.id == "evt-2026-000123"
    assert event.occurred_at == datetime(2026, 11, 20, 8, 15, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(hours=2)
    assert event_time(event) == event.occurred_at
    assert event.customer.id == "C-1001"
    assert event.customer.email == "ana.pop@example.ro"
    assert event.customer.locale == "ro-RO"
    assert event.customer.timezone == "Europe/Bucharest"
    assert event.customer.consent is not None
    assert event.customer.consent.email_marketing is True
    assert event.customer.attributes == {"loyalty_tier": "gold"}
    assert event.data.currency == "RON"
    assert [item.sku for item in event.data.items] == ["LAP-14-PRO"]
    assert event.data.items[0].quantity == 1


def test_money_strings_stay_exact_decimals() -> None:
    event = parse_event(to_json(DESIGN_EVENT))
    assert isinstance(event, PurchaseEvent)

    assert type(event.data.total) is Decimal
    assert event.data.total == Decimal(DESIGN_EVENT["data"]["total"])
    # The scale the CRM sent is kept, so "4299.00" does not turn into "4299".
    assert str(event.data.total) == DESIGN_EVENT["data"]["total"]
    assert type(event.data.items[0].unit_price) is Decimal


def test_parse_accepts_text_as_well_as_bytes() -> None:
    as_text = parse_event(json.dumps(DESIGN_EVENT))
    as_bytes = parse_event(to_json(DESIGN_EVENT))
    assert as_text == as_bytes


@pytest.mark.parametrize("number", ["19.99", "0.1", "4299.10", "1234567890.1234", "0.30"])
def test_json_number_money_is_an_exact_decimal_never_a_float(number: str) -> None:
    event = parse_event(_with_number(("data", "total"), number))
    assert isinstance(event, PurchaseEvent)

    assert type(event.data.total) is Decimal
    assert event.data.total == Decimal(number)
    assert str(event.data.total) == number
    # A float detour would have produced the binary approximation instead.
    if Decimal(float(number)) != Decimal(number):
        assert event.data.total != Decimal(float(number))


def test_json_integer_money_is_a_decimal() -> None:
    event = parse_event(_with_number(("data", "items", 0, "unit_price"), "4299"))
    assert isinstance(event, PurchaseEvent)
    assert type(event.data.items[0].unit_price) is Decimal
    assert event.data.items[0].unit_price == Decimal(4299)


@settings(max_examples=60, deadline=None, database=None)
@given(
    st.decimals(
        min_value=Decimal(0),
        max_value=Decimal("9999999999.99"),
        places=2,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_any_two_place_amount_round_trips_exactly(amount: Decimal) -> None:
    for body in (
        _with_number(("data", "total"), str(amount)),
        to_json(design_event(data={**DESIGN_EVENT["data"], "total": str(amount)})),
    ):
        event = parse_event(body)
        assert isinstance(event, PurchaseEvent)
        assert event.data.total == amount


@pytest.mark.parametrize(
    ("total", "why"),
    [
        ("-0.01", "negative"),
        ("0.12345", "more than 4 decimal places"),
        ("NaN", "not a number"),
        ("Infinity", "not finite"),
        ("1e400", "too many digits"),
        ("twelve", "not a number"),
    ],
)
def test_bad_money_is_wrong_schema_located_at_the_field(total: str, why: str) -> None:
    body = to_json(design_event(data={**DESIGN_EVENT["data"], "total": total}))
    error = _reject(body)
    assert error.code == "wrong_schema", why
    assert "data.total" in error.reason


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_literal_for_money_is_rejected(literal: str) -> None:
    # Python's json accepts these as an extension; RFC 8259 section 6 has no such number.
    error = _reject(_with_number(("data", "total"), literal))
    assert error.code == "not_json"


# --- the other event types ----------------------------------------------------------------


def test_anniversary_event_parses() -> None:
    event = parse_event(to_json(anniversary_event("first_purchase", 3)))
    assert isinstance(event, AnniversaryEvent)
    assert event.data.kind == "first_purchase"
    assert event.data.years == 3


@pytest.mark.parametrize("data", [{"kind": "birthday", "years": 2}, {"kind": "signup"}])
def test_anniversary_with_bad_data_is_wrong_schema(data: dict[str, Any]) -> None:
    error = _reject(to_json(design_event(type="anniversary", data=data)))
    assert error.code == "wrong_schema"
    assert "data." in error.reason


def test_usage_change_derives_change_pct() -> None:
    previous, current = 12, 3
    event = parse_event(to_json(usage_event(previous, current)))
    assert isinstance(event, UsageChangeEvent)
    expected = Decimal(current - previous) / Decimal(previous) * 100
    assert event.data.change_pct == expected
    assert event.data.change_pct == Decimal(-75)


def test_change_pct_is_rounded_to_hundredths() -> None:
    event = parse_event(to_json(usage_event(3, 1)))
    assert isinstance(event, UsageChangeEvent)
    # -2/3 = -66.666...%: two decimals, nearest.
    assert event.data.change_pct == Decimal("-66.67")


def test_change_pct_is_none_when_previous_is_zero() -> None:
    event = parse_event(to_json(usage_event(0, 5)))
    assert isinstance(event, UsageChangeEvent)
    assert event.data.change_pct is None


def test_change_pct_against_a_negative_previous_level_uses_its_magnitude() -> None:
    previous, current = Decimal(-10), Decimal(-5)
    event = parse_event(to_json(usage_event(str(previous), str(current))))
    assert isinstance(event, UsageChangeEvent)
    # From -10 to -5 is an increase: +50%, not -50%.
    assert event.data.change_pct == (current - previous) / abs(previous) * 100
    assert event.data.change_pct is not None and event.data.change_pct > 0


def test_usage_numbers_from_json_stay_decimal() -> None:
    body = (
        to_json(usage_event("PREV", "CURR")).replace(b'"PREV"', b"0.1").replace(b'"CURR"', b"0.3")
    )
    event = parse_event(body)
    assert isinstance(event, UsageChangeEvent)
    assert event.data.previous == Decimal("0.1")
    assert event.data.current == Decimal("0.3")
    assert event.data.change_pct == Decimal("200.00")


# --- error codes ----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"id": 1,}', b"\xef\xbb\xbf{}"])
def test_not_json(body: bytes) -> None:
    assert _reject(body).code == "not_json"


@pytest.mark.parametrize("body", [b"\xff\xfe{}", '{"id": "é"}'.encode("latin-1")])
def test_not_utf8(body: bytes) -> None:
    assert _reject(body).code == "not_utf8"


def test_oversize_is_measured_in_bytes_and_the_limit_itself_is_allowed() -> None:
    body = to_json(DESIGN_EVENT)
    at_limit = body + b" " * (MAX_EVENT_BYTES - len(body))
    assert len(at_limit) == MAX_EVENT_BYTES
    assert parse_event(at_limit).id == DESIGN_EVENT["id"]

    error = _reject(at_limit + b" ")
    assert error.code == "oversize"
    assert str(MAX_EVENT_BYTES) in error.reason


def test_oversize_text_counts_utf8_bytes_not_characters() -> None:
    document = design_event()
    document["customer"]["attributes"] = {"note": "ș" * (MAX_EVENT_BYTES // 2)}
    text = json.dumps(document, ensure_ascii=False)
    assert len(text) < MAX_EVENT_BYTES < len(text.encode("utf-8"))
    assert _reject(text).code == "oversize"


def test_oversize_is_checked_before_decoding() -> None:
    assert _reject(b"\xff" * (MAX_EVENT_BYTES + 1)).code == "oversize"


@pytest.mark.parametrize("event_type", ["refund", "Purchase", "", None, 3, ["purchase"]])
def test_unknown_type(event_type: object) -> None:
    error = _reject(to_json(design_event(type=event_type)))
    assert error.code == "unknown_type"
    assert "purchase" in error.reason


def test_missing_type_is_unknown_type() -> None:
    document = design_event()
    del document["type"]
    assert _reject(to_json(document)).code == "unknown_type"


def _drop(*path: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        node = document
        for step in path[:-1]:
            node = node[step]
        del node[path[-1]]

    return change


def _set(value: object, *path: str | int) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        node: Any = document
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "location"),
    [
        (_drop("id"), "id"),
        (_drop("customer", "id"), "customer.id"),
        (_drop("data", "order_id"), "data.order_id"),
        (_set("2026-11-20T10:15:00", "occurred_at"), "occurred_at"),
        (_set("yesterday", "occurred_at"), "occurred_at"),
        (_set("ron", "data", "currency"), "data.currency"),
        (_set([], "data", "items"), "data.items"),
        (_set(0, "data", "items", 0, "quantity"), "data.items.0.quantity"),
        (_set("maybe", "customer", "consent", "email_marketing"), "consent.email_marketing"),
        # Consent is a JSON boolean; "yes" or 1 must never count as a yes.
        (_set("yes", "customer", "consent", "email_marketing"), "consent.email_marketing"),
        (_set(1, "customer", "consent", "email_marketing"), "consent.email_marketing"),
        (_set(1, "extra"), "extra"),
        (_set(1, "data", "coupon"), "data.coupon"),
        (_set("", "id"), "id"),
    ],
)
def test_wrong_schema_names_the_location(
    change: Callable[[dict[str, Any]], None], location: str
) -> None:
    document = design_event()
    change(document)
    error = _reject(to_json(document))
    assert error.code == "wrong_schema"
    assert location in error.reason


@pytest.mark.parametrize("body", [b"[]", b"null", b'"purchase"', b"42"])
def test_a_non_object_is_wrong_schema(body: bytes) -> None:
    assert _reject(body).code == "wrong_schema"


def test_validate_event_rejects_the_same_as_parse_event() -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate_event(design_event(type="refund"))
    assert caught.value.code == "unknown_type"


def test_customer_is_an_upsert_where_only_the_id_is_required() -> None:
    event = parse_event(to_json(design_event(customer={"id": "C-2"})))
    assert event.customer.id == "C-2"
    assert event.customer.email is None
    assert event.customer.consent is None
    assert event.customer.timezone is None


# --- customer data hygiene ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["first_name", "last_name"])
@pytest.mark.parametrize("bad", ["\r\n", "\n", "\r", "\x00"])
def test_line_breaks_and_nul_in_a_name_are_rejected(field: str, bad: str) -> None:
    document = design_event()
    document["customer"][field] = f"Ana{bad}Bcc: victim@example.com"
    error = _reject(to_json(document))
    # NUL is refused for every string of the body, before the schema is looked at.
    assert error.code == ("bad_character" if bad == "\x00" else "wrong_schema")
    assert f"customer.{field}" in error.reason


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe/Bucuresti", "", "../../etc/passwd"])
def test_unknown_timezone_is_rejected(zone: str) -> None:
    document = design_event()
    document["customer"]["timezone"] = zone
    error = _reject(to_json(document))
    assert error.code == "wrong_schema"
    assert "customer.timezone" in error.reason


@pytest.mark.parametrize("locale", ["xx-XX", "", "not a locale", "ro-RO-RO-RO"])
def test_unknown_locale_is_rejected(locale: str) -> None:
    document = design_event()
    document["customer"]["locale"] = locale
    error = _reject(to_json(document))
    assert error.code == "wrong_schema"
    assert "customer.locale" in error.reason


@pytest.mark.parametrize(
    ("locale", "zone"),
    [("it-IT", "Europe/Rome"), ("ro_RO", "Europe/Bucharest"), ("en", "America/New_York")],
)
def test_known_locales_and_zones_are_accepted(locale: str, zone: str) -> None:
    document = design_event()
    document["customer"].update(locale=locale, timezone=zone)
    event = parse_event(to_json(document))
    assert (event.customer.locale, event.customer.timezone) == (locale, zone)


@pytest.mark.parametrize(
    "customer_change",
    [
        {"email": "ana.pop@@example.ro"},
        {"email": "ana.pop@example.ro" + "x" * 320},
        {"email": ["ana.pop@example.ro"]},
        {"first_name": "Ana\r\nBcc: ana.pop@example.ro"},
        {"first_name": "Ana" * 40},
        {"last_name": "Pop\n"},
        {"last_name": {"text": "Pop"}},
        {"nickname": "Ana Pop"},
        {"consent": {"email_marketing": "ana.pop@example.ro"}},
        {"id": None, "email": "ana.pop@example.ro"},
    ],
)
def test_reason_never_contains_the_customers_email_or_name(
    customer_change: dict[str, Any],
) -> None:
    document = design_event()
    document["customer"].update(customer_change)
    error = _reject(to_json(document))
    assert error.code == "wrong_schema"
    for secret in PII:
        assert secret not in error.reason
        assert secret not in str(error)


def test_reason_of_a_broken_body_never_echoes_its_content() -> None:
    body = to_json(DESIGN_EVENT)[:-10]
    error = _reject(body)
    assert error.code == "not_json"
    for secret in PII:
        assert secret not in error.reason


def test_many_errors_are_summarised() -> None:
    document = design_event()
    document["data"]["items"] = [{"sku": ""} for _ in range(8)]
    error = _reject(to_json(document))
    assert error.code == "wrong_schema"
    assert "more" in error.reason
    assert error.reason.count(";") >= 5
