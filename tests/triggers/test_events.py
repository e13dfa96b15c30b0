"""Event envelope v1: parsing, exact money, error codes and PII-free reasons."""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.triggers.builders import (
    DESIGN_EVENT,
    anniversary_event,
    design_event,
    to_json,
    usage_event,
)
from triggers.events import (
    MAX_DEPTH,
    MAX_EVENT_BYTES,
    MAX_NUMBER_CHARS,
    MAX_NUMBER_EXPONENT,
    MAX_STRING_CHARS,
    AnniversaryEvent,
    InvalidEvent,
    PurchaseEvent,
    UsageChangeEvent,
    load_json,
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


@pytest.mark.parametrize(
    "currency", ["XYZ", "ABC", "EUX", "QQQ", "XXX", "XTS", "eur", "EURO", "", "€"]
)
def test_a_currency_iso_4217_does_not_assign_is_wrong_schema(currency: str) -> None:
    """Three capital letters are not enough: a code no one assigned cannot be formatted
    as money for any customer."""
    body = to_json(design_event(data={**DESIGN_EVENT["data"], "currency": currency}))
    error = _reject(body)
    assert error.code == "wrong_schema"
    assert "data.currency" in error.reason


@pytest.mark.parametrize("currency", ["EUR", "RON", "GBP", "USD", "JPY", "CHF", "XAU"])
def test_assigned_currency_codes_are_taken(currency: str) -> None:
    event = parse_event(to_json(design_event(data={**DESIGN_EVENT["data"], "currency": currency})))
    assert isinstance(event, PurchaseEvent) and event.data.currency == currency


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


# Every character a name must not hold: C0, DEL, C1, the Unicode line and paragraph
# separators and the bidirectional embeddings, overrides and isolates (Unicode TR #9).
BIDI_CONTROLS = ("LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI")
NAME_FORBIDDEN = [
    chr(c)
    for c in range(0x110000)
    if unicodedata.category(chr(c)) in ("Cc", "Zl", "Zp")
    or unicodedata.bidirectional(chr(c)) in BIDI_CONTROLS
]


@given(st.sampled_from(NAME_FORBIDDEN), st.sampled_from(["first_name", "last_name"]))
def test_no_line_separator_control_or_bidi_override_in_a_name(bad: str, field: str) -> None:
    document = design_event()
    document["customer"][field] = f"Ana{bad}Pop"
    error = _reject(to_json(document))
    assert error.code in ("wrong_schema", "bad_character")
    assert f"customer.{field}" in error.reason or error.code == "bad_character"


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30))
def test_a_name_of_any_other_characters_is_kept_as_given(name: str) -> None:
    if any(ch in NAME_FORBIDDEN for ch in name) or name.strip() != name or "\x00" in name:
        return
    document = design_event()
    document["customer"]["first_name"] = name
    try:
        event = parse_event(to_json(document))
    except InvalidEvent as error:  # surrogates and the like are refused for every string
        assert error.code == "bad_character", error
        return
    assert event.customer.first_name == name


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
    ("locale", "zone", "known"),
    [("ro-RO", "Europe/Bucharest", True), ("qq-QQ", "Mars/Olympus", False)],
)
def test_a_repeated_locale_and_zone_get_the_same_answer(
    locale: str, zone: str, known: bool
) -> None:
    """The answers are cached per process: the second and later events with the same
    locale and zone are accepted or refused exactly as the first."""
    document = design_event()
    document["customer"].update(locale=locale, timezone=zone)
    for _ in range(3):
        if known:
            event = parse_event(to_json(document))
            assert (event.customer.locale, event.customer.timezone) == (locale, zone)
        else:
            error = _reject(to_json(document))
            assert "customer.locale" in error.reason
            assert "customer.timezone" in error.reason


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


# --- bounded decoding: limits checked before the costly step --------------------------------


def _reference_depth(text: str) -> int:
    """Deepest nesting of arrays and objects, by a character walk that knows strings."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


nested_json = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), children, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None, database=None)
@given(document=nested_json, wrap=st.integers(min_value=0, max_value=MAX_DEPTH + 2))
def test_depth_limit_matches_a_reference_walk(document: object, wrap: int) -> None:
    text = "[" * wrap + json.dumps(document) + "]" * wrap
    deepest = _reference_depth(text)
    if deepest > MAX_DEPTH:
        with pytest.raises(InvalidEvent) as caught:
            load_json(text)
        assert caught.value.code == "too_deep"
    else:
        assert load_json(text) == json.loads(text, parse_float=Decimal)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 40_000 + b"1" + b"}" * 40_000,
        b'{"id": "'
        + b"[" * 100
        + b'", "x": '
        + b"[" * (MAX_DEPTH + 1)
        + b"]" * (MAX_DEPTH + 1)
        + b"}",
    ],
)
def test_deep_nesting_is_refused_without_recursion(body: bytes) -> None:
    started = time.monotonic()
    assert _reject(body).code == "too_deep"
    assert time.monotonic() - started < 1.0


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"note": "[" * 1000 + "{" * 1000 + '\\"[['})
    assert load_json(text) == json.loads(text)


number_literal = st.from_regex(
    r"\A-?(0|[1-9][0-9]{0,50})(\.[0-9]{1,50})?([eE][+-]?[0-9]{1,25})?\Z", fullmatch=True
)


@settings(max_examples=400, deadline=None, database=None)
@given(literal=number_literal)
@example(literal="0e40")
@example(literal="0e41")
@example(literal="-0.0e-41")
@example(literal="100e38")
@example(literal="9" * 40)
def test_number_literals_are_exact_or_refused_by_the_documented_rule(literal: str) -> None:
    # The rule, from the literal's text alone: mantissa digits and the written exponent.
    mantissa, _, exponent_text = literal.lower().partition("e")
    whole, _, fraction = mantissa.lstrip("-").partition(".")
    exponent = int(exponent_text or 0) - len(fraction)
    digits = (whole + fraction).lstrip("0")
    magnitude = len(digits) + exponent if digits else 0  # the value is below 10**magnitude
    allowed = (
        len(literal) <= MAX_NUMBER_CHARS
        and -MAX_NUMBER_EXPONENT <= exponent <= MAX_NUMBER_EXPONENT
        and magnitude <= MAX_NUMBER_EXPONENT
    )
    started = time.monotonic()
    try:
        value = load_json(literal)
    except InvalidEvent as refused:
        assert refused.code == "number_limit"
        assert not allowed, literal
    else:
        assert allowed, literal
        expected = Fraction(int(whole + fraction) * (-1 if literal.startswith("-") else 1)) * (
            Fraction(10) ** exponent
        )
        assert Fraction(value) == expected
        assert type(value) is (int if not fraction and not exponent_text else Decimal)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    "literal", ["9" * 5000, "1e10000000", "1e-10000000", "0e10000000", "1" * 41]
)
def test_the_costly_number_examples_are_refused_at_once(literal: str) -> None:
    body = _with_number(("customer", "attributes", "x"), literal)
    started = time.monotonic()
    assert _reject(body).code == "number_limit"
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('{"a": "\\u0000"}', "bad_character"),
        ('{"a": ["x", "\\udc00"]}', "bad_character"),
        ('{"\\u0000": 1}', "bad_character"),
        ('{"a": "' + "x" * (MAX_STRING_CHARS + 1) + '"}', "string_limit"),
        ('{"' + "k" * (MAX_STRING_CHARS + 1) + '": 1}', "string_limit"),
    ],
)
def test_strings_a_database_cannot_hold_are_refused(text: str, code: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        load_json(text)
    assert caught.value.code == code


# --- identifiers ----------------------------------------------------------------------------

_UNPRINTABLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}


def _identifier_allowed(value: str) -> bool:
    """The documented rule, from the Unicode database: 1..128 characters, none of them a
    control, format, surrogate, private-use, unassigned or separator character (the
    ASCII space excepted), and no whitespace at either end."""
    return (
        1 <= len(value) <= 128
        and all(ch == " " or unicodedata.category(ch) not in _UNPRINTABLE for ch in value)
        and value == value.strip()
    )


@settings(max_examples=400, deadline=None, database=None)
@given(
    value=st.text(max_size=130)
    | st.text(alphabet=st.sampled_from("ab \x1f\x00\u202e\u00a0\t\n\u2028"), max_size=8)
)
def test_identifiers_follow_the_documented_character_set(value: str) -> None:
    document = design_event()
    document["customer"]["id"] = value
    document["data"]["items"][0]["sku"] = value
    body = json.dumps(document).encode()
    if _identifier_allowed(value) and "\x00" not in value:
        event = parse_event(body)
        assert isinstance(event, PurchaseEvent)
        assert event.customer.id == value
    else:
        error = _reject(body)
        assert error.code in ("wrong_schema", "bad_character")
        if value.strip():
            assert value not in error.reason


# --- occurred_at range ------------------------------------------------------------------------

RECEIVED = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@settings(max_examples=300, deadline=None, database=None)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    offset_minutes=st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1),
    with_clock=st.booleans(),
)
def test_occurred_at_range(moment: datetime, offset_minutes: int, with_clock: bool) -> None:
    stamp = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    body = to_json(design_event(occurred_at=stamp.isoformat()))
    # Seconds since the epoch without ever converting the stamp (that could overflow).
    since_epoch = moment - datetime(1970, 1, 1) - timedelta(minutes=offset_minutes)
    latest = (
        RECEIVED + timedelta(days=1) if with_clock else datetime(9000, 1, 1, tzinfo=UTC)
    ) - datetime(1970, 1, 1, tzinfo=UTC)
    received_at = RECEIVED if with_clock else None
    if timedelta(0) <= since_epoch <= latest:
        assert parse_event(body, received_at).occurred_at == stamp
    else:
        error = _reject_at(body, received_at)
        assert error.code == "wrong_schema"
        assert "occurred_at" in error.reason


def _reject_at(body: bytes, received_at: datetime | None) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(body, received_at)
    return caught.value


@pytest.mark.parametrize(
    "stamp",
    [
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "9999-12-31T23:59:59.999999-00:01",
        "1969-12-31T23:59:59.999999Z",
        "2026-11-21T12:00:01Z",  # a day and a second after RECEIVED
    ],
)
def test_occurred_at_examples_outside_the_range(stamp: str) -> None:
    error = _reject_at(to_json(design_event(occurred_at=stamp)), RECEIVED)
    assert error.code == "wrong_schema"
    assert "occurred_at" in error.reason


def test_occurred_at_edges_inside_the_range() -> None:
    for stamp in ("1970-01-01T00:00:00Z", "1970-01-01T02:00:00+02:00", "2026-11-21T12:00:00Z"):
        assert parse_event(to_json(design_event(occurred_at=stamp)), RECEIVED)


# --- change_pct never overflows ---------------------------------------------------------------

usage_level = st.decimals(
    min_value=Decimal("-99999999999999999999.9999999999"),
    max_value=Decimal("99999999999999999999.9999999999"),
    places=10,
    allow_nan=False,
    allow_infinity=False,
)


@settings(max_examples=300, deadline=None, database=None)
@given(previous=usage_level, current=usage_level)
def test_change_pct_is_exact_for_every_accepted_level(previous: Decimal, current: Decimal) -> None:
    event = parse_event(to_json(usage_event(str(previous), str(current))))
    assert isinstance(event, UsageChangeEvent)
    if previous == 0:
        assert event.data.change_pct is None
        return
    exact = (Fraction(current) - Fraction(previous)) / abs(Fraction(previous)) * 100
    # Round half to even to hundredths, by integer arithmetic.
    hundredths = exact * 100
    floor = hundredths.numerator // hundredths.denominator
    rest = hundredths - floor
    rounded = floor + (1 if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2) else 0)
    assert event.data.change_pct is not None
    assert Fraction(event.data.change_pct) == Fraction(rounded, 100)


@pytest.mark.parametrize(
    ("previous", "current"),
    [("1E-999999", "1E+999999"), ("1e-11", "1"), ("1", "1" * 21), ("1", "1e25")],
)
def test_usage_levels_beyond_the_bounds_are_wrong_schema(previous: str, current: str) -> None:
    error = _reject(to_json(usage_event(previous, current)))
    assert error.code == "wrong_schema"
    assert "data." in error.reason


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("ana.pop@example.ro", False),
        ("Ana Pop", False),
        ("x" * 65, False),
        ("loyalty_tier", True),
        ("plan-2026", True),
    ],
)
def test_a_key_in_a_reason_is_shown_only_when_it_looks_like_a_field_name(
    key: str, shown: bool
) -> None:
    document = design_event()
    document["customer"]["attributes"] = {key: {"nested": True}}
    error = _reject(to_json(document))
    assert error.code == "wrong_schema"
    assert (f"customer.attributes.{key}." in error.reason) is shown
    assert ("customer.attributes.<key>." in error.reason) is not shown


@given(st.sampled_from(["id", "type", "email", "sku", "x-y"]), st.integers(1, 3))
def test_a_repeated_key_is_refused_and_named_only_when_it_is_a_field_name(
    key: str, depth: int
) -> None:
    """RFC 8259 leaves repeated keys to the parser; two readers could see two events."""
    inner = f'{{"{key}": 1, "{key}": 2}}'
    for _ in range(depth - 1):
        inner = f'{{"a": {inner}}}'
    error = _reject(inner)
    assert error.code == "duplicate_key"
    assert key in error.reason


def test_a_repeated_key_that_is_data_is_not_quoted() -> None:
    error = _reject('{"attributes": {"ana@example.ro": 1, "ana@example.ro": 2}}')
    assert error.code == "duplicate_key" and "ana@example.ro" not in error.reason


JSON_LEAVES = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=20),
    st.sampled_from(["\x00", "\ud800", "a\udfffb", "\\u0000", "x" * 17_000]),
    st.integers(-1000, 1000),
    st.booleans(),
    st.none(),
)
JSON_DOCUMENTS = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(document=JSON_DOCUMENTS, ensure_ascii=st.booleans())
def test_skipping_the_string_walk_never_skips_a_refusal(document: Any, ensure_ascii: bool) -> None:
    """``load_json`` walks the strings only when the text could hold one it refuses:
    whenever the walk refuses a decoded document, the quick check asks for the walk."""
    from triggers.events import _check_strings, _strings_need_checking

    text = json.dumps(document, ensure_ascii=ensure_ascii)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate unescaped: not UTF-8, never decoded
        return
    try:
        _check_strings(json.loads(raw))
    except InvalidEvent:
        assert _strings_need_checking(raw.decode("utf-8"))


@settings(max_examples=300, deadline=None)
@given(body=st.text(st.sampled_from('[]{}"\\a,:'), max_size=60), limit=st.integers(0, 8))
def test_the_bracket_count_bound_agrees_with_the_nesting_scan(body: str, limit: int) -> None:
    """Skipping the scan when there are no more opening brackets than the limit gives the
    scan's own answer (checked against a plain depth count outside strings)."""
    from triggers.events import _nesting_depth_exceeds

    depth, deepest, in_string, escaped = 0, 0, False, False
    for char in body:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    assert _nesting_depth_exceeds(body.encode(), limit) == (deepest > limit)
