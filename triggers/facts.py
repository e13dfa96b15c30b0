"""Flatten an event and a customer profile into the facts conditions are tested against."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from triggers.events import (
    AnniversaryEvent,
    AnyEvent,
    CustomerData,
    PurchaseEvent,
    UsageChangeEvent,
)
from triggers.fields import ATTRIBUTE_PREFIX


@dataclass(frozen=True, slots=True)
class CustomerProfile:
    """What the worker knows about a customer, aggregates included, at decision time."""

    id: str
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    locale: str | None = None
    timezone: str | None = None
    email_marketing: bool | None = None
    orders_count: int = 0
    lifetime_spend: Decimal = Decimal(0)
    first_purchase_at: datetime | None = None
    last_purchase_at: datetime | None = None
    categories_bought: frozenset[str] = frozenset()
    skus_owned: frozenset[str] = frozenset()
    attributes: Mapping[str, object] = field(default_factory=dict)


def event_facts(event: AnyEvent) -> dict[str, object]:
    facts: dict[str, object] = {"event.type": event.type}
    if isinstance(event, PurchaseEvent):
        facts |= {
            "event.order_id": event.data.order_id,
            "event.currency": event.data.currency,
            "event.total": event.data.total,
            "event.items_count": sum(item.quantity for item in event.data.items),
            "event.categories": frozenset(item.category for item in event.data.items),
            "event.skus": frozenset(item.sku for item in event.data.items),
        }
    elif isinstance(event, AnniversaryEvent):
        facts |= {"event.kind": event.data.kind, "event.years": event.data.years}
    elif isinstance(event, UsageChangeEvent):
        facts |= {
            "event.metric": event.data.metric,
            "event.previous": event.data.previous,
            "event.current": event.data.current,
            "event.change_pct": event.data.change_pct,
            "event.window_days": event.data.window_days,
        }
    return facts


def customer_facts(profile: CustomerProfile, now: datetime) -> dict[str, object]:
    def days_since(moment: datetime | None) -> int | None:
        return None if moment is None else max((now - moment).days, 0)

    tier = profile.attributes.get("loyalty_tier")
    return attribute_facts(profile.attributes) | {
        "customer.orders_count": profile.orders_count,
        "customer.lifetime_spend": profile.lifetime_spend,
        "customer.tenure_days": days_since(profile.first_purchase_at),
        "customer.days_since_last_purchase": days_since(profile.last_purchase_at),
        "customer.categories_bought": profile.categories_bought,
        "customer.skus_owned": profile.skus_owned,
        "customer.loyalty_tier": tier if isinstance(tier, str) else None,
        "customer.locale": profile.locale,
        "customer.timezone": profile.timezone,
        "customer.email_marketing": profile.email_marketing,
    }


def _fact_value(value: object) -> object:
    """JSON attribute values as conditions see them; anything else counts as missing."""
    if isinstance(value, bool | str | Decimal):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    return None


def attribute_facts(attributes: Mapping[str, object]) -> dict[str, object]:
    return {f"{ATTRIBUTE_PREFIX}{name}": _fact_value(value) for name, value in attributes.items()}


_PROFILE_FIELDS = ("email", "first_name", "last_name", "locale", "timezone")


def apply_customer(profile: CustomerProfile, data: CustomerData) -> CustomerProfile:
    """The event's customer block is an upsert: given fields replace, others are kept."""
    changes: dict[str, object] = {
        name: getattr(data, name) for name in _PROFILE_FIELDS if name in data.model_fields_set
    }
    if data.consent is not None and "email_marketing" in data.consent.model_fields_set:
        changes["email_marketing"] = data.consent.email_marketing
    if data.attributes:
        changes["attributes"] = {**profile.attributes, **data.attributes}
    return replace(profile, **changes)  # type: ignore[arg-type]


def purchase_of(event: PurchaseEvent) -> tuple[Decimal, datetime, frozenset[str], frozenset[str]]:
    data = event.data
    return (
        data.total,
        event.occurred_at,
        frozenset(item.category for item in data.items),
        frozenset(item.sku for item in data.items),
    )


def apply_purchase(
    profile: CustomerProfile,
    total: Decimal,
    at: datetime,
    categories: frozenset[str],
    skus: frozenset[str],
) -> CustomerProfile:
    """The profile after one more order: the aggregates conditions rely on, kept current."""
    return replace(
        profile,
        orders_count=profile.orders_count + 1,
        lifetime_spend=profile.lifetime_spend + total,
        first_purchase_at=min(filter(None, (profile.first_purchase_at, at))),
        last_purchase_at=max(filter(None, (profile.last_purchase_at, at))),
        categories_bought=profile.categories_bought | categories,
        skus_owned=profile.skus_owned | skus,
    )


def build_facts(event: AnyEvent, profile: CustomerProfile, now: datetime) -> dict[str, object]:
    return event_facts(event) | customer_facts(profile, now)
