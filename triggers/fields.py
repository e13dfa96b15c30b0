"""The typed catalogue of fields a campaign condition may test, and the operators per type.

Conditions are checked against this catalogue when a campaign is loaded, so a typo or an
operator that makes no sense for a field is a lint error, not a silent non-match.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum


class FieldType(StrEnum):
    NUMBER = "number"
    STRING = "string"
    STRING_SET = "string_set"
    BOOLEAN = "boolean"


OPERATORS: dict[FieldType, tuple[str, ...]] = {
    FieldType.NUMBER: ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists"),
    FieldType.STRING: ("eq", "ne", "in", "not_in", "starts_with", "exists"),
    FieldType.STRING_SET: ("contains", "contains_any", "contains_all", "is_empty", "exists"),
    FieldType.BOOLEAN: ("eq", "exists"),
}
ALL_OPERATORS: tuple[str, ...] = tuple(sorted({op for ops in OPERATORS.values() for op in ops}))


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    type: FieldType
    description: str
    event_types: tuple[str, ...] = ()  # empty: available for every event type


_EVENT_FIELDS = (
    FieldSpec("event.type", FieldType.STRING, "purchase, anniversary or usage_change"),
    FieldSpec("event.order_id", FieldType.STRING, "the CRM's order id", ("purchase",)),
    FieldSpec("event.currency", FieldType.STRING, "ISO 4217 code of the order", ("purchase",)),
    FieldSpec("event.total", FieldType.NUMBER, "order total", ("purchase",)),
    FieldSpec("event.items_count", FieldType.NUMBER, "units in the order", ("purchase",)),
    FieldSpec("event.categories", FieldType.STRING_SET, "categories in the order", ("purchase",)),
    FieldSpec("event.skus", FieldType.STRING_SET, "SKUs in the order", ("purchase",)),
    FieldSpec(
        "event.kind", FieldType.STRING, "signup, first_purchase or membership", ("anniversary",)
    ),
    FieldSpec("event.years", FieldType.NUMBER, "whole years since the start", ("anniversary",)),
    FieldSpec("event.metric", FieldType.STRING, "name of the usage metric", ("usage_change",)),
    FieldSpec("event.previous", FieldType.NUMBER, "earlier level", ("usage_change",)),
    FieldSpec("event.current", FieldType.NUMBER, "current level", ("usage_change",)),
    FieldSpec(
        "event.change_pct", FieldType.NUMBER, "change from previous, percent", ("usage_change",)
    ),
    FieldSpec("event.window_days", FieldType.NUMBER, "comparison window", ("usage_change",)),
)

_CUSTOMER_FIELDS = (
    FieldSpec("customer.orders_count", FieldType.NUMBER, "orders so far, this one included"),
    FieldSpec("customer.lifetime_spend", FieldType.NUMBER, "sum of order totals"),
    FieldSpec("customer.tenure_days", FieldType.NUMBER, "days since the first purchase"),
    FieldSpec("customer.days_since_last_purchase", FieldType.NUMBER, "days since last order"),
    FieldSpec("customer.categories_bought", FieldType.STRING_SET, "every category bought"),
    FieldSpec("customer.skus_owned", FieldType.STRING_SET, "every SKU bought"),
    FieldSpec("customer.loyalty_tier", FieldType.STRING, "attributes.loyalty_tier"),
    FieldSpec("customer.locale", FieldType.STRING, "e.g. ro-RO"),
    FieldSpec("customer.timezone", FieldType.STRING, "IANA name, e.g. Europe/Rome"),
    FieldSpec("customer.email_marketing", FieldType.BOOLEAN, "marketing consent"),
)

BUILTIN_FIELDS: dict[str, FieldSpec] = {
    spec.name: spec for spec in _EVENT_FIELDS + _CUSTOMER_FIELDS
}


ATTRIBUTE_PREFIX = "customer.attributes."


def attribute_fields(attributes: Mapping[str, FieldType]) -> dict[str, FieldSpec]:
    """Fields for the custom customer attributes declared in ``config/attributes.yaml``."""
    return {
        f"{ATTRIBUTE_PREFIX}{name}": FieldSpec(
            f"{ATTRIBUTE_PREFIX}{name}", kind, f"custom attribute ({kind})"
        )
        for name, kind in attributes.items()
    }


def fields_for(
    event_type: str | None, attributes: Mapping[str, FieldType] | None = None
) -> dict[str, FieldSpec]:
    """The fields a campaign triggered by ``event_type`` may test.

    ``None`` stands for "any event type": only fields every event has (segments use it).
    """
    found = {
        name: spec
        for name, spec in BUILTIN_FIELDS.items()
        if not spec.event_types or (event_type is not None and event_type in spec.event_types)
    }
    return found | attribute_fields(attributes or {})


_TYPE_WORDS = {
    FieldType.NUMBER: "a number",
    FieldType.STRING: "a text",
    FieldType.STRING_SET: "a list of texts",
    FieldType.BOOLEAN: "true or false",
}


def _has_type(value: object, declared: FieldType) -> bool:
    if declared is FieldType.BOOLEAN:
        return isinstance(value, bool)
    if declared is FieldType.NUMBER:
        return isinstance(value, int | Decimal) and not isinstance(value, bool)
    if declared is FieldType.STRING:
        return isinstance(value, str)
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def attribute_type_problems(
    attributes: Mapping[str, object] | None, declared: Mapping[str, FieldType]
) -> list[str]:
    """Each custom attribute whose value is not of its declared type, as
    ``customer.attributes.<name>: must be <type>, as declared in the attributes file``
    (a name and a type, never the value). ``null`` clears an attribute and is always
    allowed; an attribute no file declares is kept as sent (no campaign can test it:
    lint refuses an undeclared one)."""
    if not attributes or not declared:
        return []
    return [
        f"customer.attributes.{name}: must be {_TYPE_WORDS[kind]}, as declared in the"
        " attributes file"
        for name, value in attributes.items()
        if value is not None
        and (kind := declared.get(name)) is not None
        and not _has_type(value, kind)
    ]


def attribute_type_reason(
    attributes: Mapping[str, object] | None, declared: Mapping[str, FieldType]
) -> str | None:
    """:func:`attribute_type_problems` as one ``wrong_schema`` reason (the first five,
    as for the schema's own errors), or None when every declared attribute fits."""
    problems = attribute_type_problems(attributes, declared)
    if not problems:
        return None
    more = len(problems) - 5
    return "; ".join(problems[:5]) + (f"; and {more} more" if more > 0 else "")
