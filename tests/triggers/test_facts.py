"""Facts: the flat view of an event and a customer profile that conditions are tested against."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tests.triggers.builders import (
    DESIGN_EVENT,
    anniversary_event,
    design_event,
    to_json,
    usage_event,
)
from triggers.events import parse_event
from triggers.facts import CustomerProfile, build_facts, customer_facts, event_facts
from triggers.fields import BUILTIN_FIELDS, fields_for

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def test_purchase_facts() -> None:
    data = dict(DESIGN_EVENT["data"])
    data["items"] = [
        {"sku": "LAP-14-PRO", "category": "laptops", "quantity": 1, "unit_price": "4299.00"},
        {"sku": "MOU-1", "category": "mice", "quantity": 2, "unit_price": "49.90"},
        {"sku": "MOU-2", "category": "mice", "quantity": 3, "unit_price": "19.90"},
    ]
    facts = event_facts(parse_event(to_json(design_event(data=data))))
    assert facts == {
        "event.type": "purchase",
        "event.order_id": data["order_id"],
        "event.currency": data["currency"],
        "event.total": Decimal(data["total"]),
        "event.items_count": sum(item["quantity"] for item in data["items"]),
        "event.categories": frozenset({"laptops", "mice"}),
        "event.skus": frozenset({"LAP-14-PRO", "MOU-1", "MOU-2"}),
    }


def test_anniversary_facts() -> None:
    facts = event_facts(parse_event(to_json(anniversary_event("signup", 4))))
    assert facts == {"event.type": "anniversary", "event.kind": "signup", "event.years": 4}


def test_usage_change_facts_include_the_derived_change() -> None:
    facts = event_facts(parse_event(to_json(usage_event(12, 3))))
    assert facts["event.metric"] == "logins_per_week"
    assert facts["event.previous"] == Decimal(12)
    assert facts["event.current"] == Decimal(3)
    assert facts["event.window_days"] == 14
    assert facts["event.change_pct"] == (Decimal(3) - 12) / 12 * 100


def test_usage_change_from_zero_has_no_change_pct() -> None:
    facts = event_facts(parse_event(to_json(usage_event(0, 3))))
    assert facts["event.change_pct"] is None


def test_event_facts_cover_exactly_the_catalogue_fields_of_their_type() -> None:
    for document in (design_event(), anniversary_event(), usage_event(12, 3)):
        event = parse_event(to_json(document))
        event_fields = {name for name in fields_for(event.type) if name.startswith("event.")}
        assert set(event_facts(event)) == event_fields


def test_customer_facts() -> None:
    first, last = NOW - timedelta(days=400, hours=3), NOW - timedelta(days=10, hours=23)
    profile = CustomerProfile(
        id="C-1",
        email="c1@example.ro",
        locale="ro-RO",
        timezone="Europe/Bucharest",
        email_marketing=True,
        orders_count=3,
        lifetime_spend=Decimal("5123.45"),
        first_purchase_at=first,
        last_purchase_at=last,
        categories_bought=frozenset({"laptops"}),
        skus_owned=frozenset({"LAP-14-PRO"}),
        attributes={"loyalty_tier": "gold"},
    )
    facts = customer_facts(profile, NOW)
    assert facts == {
        "customer.orders_count": 3,
        "customer.lifetime_spend": Decimal("5123.45"),
        "customer.tenure_days": (NOW - first).days,
        "customer.days_since_last_purchase": (NOW - last).days,
        "customer.categories_bought": frozenset({"laptops"}),
        "customer.skus_owned": frozenset({"LAP-14-PRO"}),
        "customer.loyalty_tier": "gold",
        "customer.locale": "ro-RO",
        "customer.timezone": "Europe/Bucharest",
        "customer.email_marketing": True,
        "customer.attributes.loyalty_tier": "gold",
    }
    builtin = {name for name in BUILTIN_FIELDS if name.startswith("customer.")}
    assert set(facts) == builtin | {"customer.attributes.loyalty_tier"}


def test_attribute_facts_keep_json_types_and_never_coerce() -> None:
    profile = CustomerProfile(
        id="C-3",
        attributes={
            "visits": 12,
            "score": Decimal("4.5"),
            "vip": True,
            "tags": ["a", "b"],
            "note": "12",
            "nested": {"x": 1},
            "mixed": ["a", 1],
        },
    )
    facts = customer_facts(profile, NOW)
    assert facts["customer.attributes.visits"] == 12
    assert facts["customer.attributes.score"] == Decimal("4.5")
    assert facts["customer.attributes.vip"] is True
    assert facts["customer.attributes.tags"] == frozenset({"a", "b"})
    assert facts["customer.attributes.note"] == "12"  # text stays text
    assert facts["customer.attributes.nested"] is None
    assert facts["customer.attributes.mixed"] is None


def test_unknown_customer_data_is_missing_not_invented() -> None:
    facts = customer_facts(CustomerProfile(id="C-2", attributes={"loyalty_tier": 3}), NOW)
    assert facts["customer.tenure_days"] is None
    assert facts["customer.days_since_last_purchase"] is None
    assert facts["customer.loyalty_tier"] is None  # not a text: no coercion
    assert facts["customer.email_marketing"] is None
    assert facts["customer.orders_count"] == 0


def test_a_purchase_in_the_future_counts_as_zero_days() -> None:
    profile = CustomerProfile(id="C-3", last_purchase_at=NOW + timedelta(hours=5))
    assert customer_facts(profile, NOW)["customer.days_since_last_purchase"] == 0


def test_build_facts_joins_event_and_customer() -> None:
    event = parse_event(to_json(DESIGN_EVENT))
    profile = CustomerProfile(id="C-1001", orders_count=1)
    facts = build_facts(event, profile, NOW)
    assert facts == event_facts(event) | customer_facts(profile, NOW)
    assert facts["event.total"] == Decimal("4299.00")
    assert facts["customer.orders_count"] == 1
