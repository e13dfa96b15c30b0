"""JSON Schemas for campaign and segment files, for editors' autocompletion and checks.

Generated from the pydantic models, then given what pydantic cannot know: the field
catalogue (with declared custom attributes) and the operators, each with a description.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter

from triggers.campaigns import Campaign
from triggers.conditions import Condition
from triggers.fields import ALL_OPERATORS, OPERATORS, FieldSpec, FieldType, fields_for
from triggers.sequences import ENROLLMENT_FIELDS

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _field_schema(
    attributes: Mapping[str, FieldType], extra: Mapping[str, FieldSpec] | None = None
) -> dict[str, Any]:
    specs: dict[str, FieldSpec] = dict(extra or {})
    for event_type in ("purchase", "anniversary", "usage_change"):
        specs |= fields_for(event_type, attributes)
    return {
        "description": "Dotted field name; its type decides the operators allowed.",
        "anyOf": [
            {
                "const": name,
                "description": f"{spec.type}: {spec.description}"
                + (f" ({', '.join(spec.event_types)} events)" if spec.event_types else ""),
            }
            for name, spec in sorted(specs.items())
        ],
    }


def _operator_schema() -> dict[str, Any]:
    applies = {
        op: [str(kind) for kind, ops in OPERATORS.items() if op in ops] for op in ALL_OPERATORS
    }
    return {
        "description": "Operator, checked against the field's type.",
        "anyOf": [
            {"const": op, "description": f"for {', '.join(kinds)} fields"}
            for op, kinds in applies.items()
        ],
    }


def _enrich(
    schema: dict[str, Any],
    attributes: Mapping[str, FieldType],
    extra: Mapping[str, FieldSpec] | None = None,
) -> dict[str, Any]:
    leaf = schema["$defs"]["Leaf"]["properties"]
    leaf["field"] = _field_schema(attributes, extra)
    leaf["op"] = _operator_schema()
    _standard_bounds(schema)
    return schema


# pydantic writes a bound it cannot apply natively (on a type with a ``BeforeValidator``,
# as ``Whole`` and ``Number``) under its own name, which JSON Schema validators and
# editors ignore; these are JSON Schema 2020-12's keywords (Validation, section 6.2).
_BOUND_KEYWORDS = {
    "ge": "minimum",
    "le": "maximum",
    "gt": "exclusiveMinimum",
    "lt": "exclusiveMaximum",
}


# pydantic's schema of a ``Decimal``: a number or a numeric string. A campaign's numbers
# refuse strings (``campaigns.Number``: "10" quoted is text), so it is a number.
_DECIMAL = [{"type": "number"}, {"type": "string"}]


def _standard_bounds(node: Any) -> None:
    """In place: a campaign ``Number`` as a JSON number, and pydantic's
    ``ge``/``le``/``gt``/``lt`` on numeric schemas as JSON Schema's bounds."""
    if isinstance(node, list):
        for item in node:
            _standard_bounds(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("anyOf") == _DECIMAL:
        del node["anyOf"]
        node["type"] = "number"
        if isinstance(node.get("default"), str):
            default = Decimal(node["default"])
            integral = default == default.to_integral_value()
            node["default"] = int(default) if integral else float(default)
    if node.get("type") in ("integer", "number"):
        for pydantic_name, standard in _BOUND_KEYWORDS.items():
            if pydantic_name in node:
                node[standard] = node.pop(pydantic_name)
    for value in node.values():
        _standard_bounds(value)


def campaign_schema(attributes: Mapping[str, FieldType] | None = None) -> dict[str, Any]:
    schema = copy.deepcopy(Campaign.model_json_schema(by_alias=True))
    # enrollment.* fields: only a sequence step's only_if may use them (lint checks where).
    sequence_only = {
        name: FieldSpec(name, spec.type, f"{spec.description} (a step's only_if)")
        for name, spec in ENROLLMENT_FIELDS.items()
    }
    schema = _enrich(schema, attributes or {}, sequence_only)
    return {
        "$schema": DIALECT,
        "$id": "crosssell/campaign.schema.json",
        **schema,
        "title": "crosssell campaign file v1",
    }


def segments_schema(attributes: Mapping[str, FieldType] | None = None) -> dict[str, Any]:
    condition = TypeAdapter(Condition).json_schema(by_alias=True)
    definitions = condition.pop("$defs")
    schema = {"$defs": definitions}
    _enrich(schema, attributes or {})
    return {
        "$schema": DIALECT,
        "$id": "crosssell/segments.schema.json",
        "title": "crosssell segments file: name -> condition",
        "type": "object",
        "additionalProperties": condition,
        "propertyNames": {"pattern": "^[a-z0-9_-]+$"},
        "$defs": definitions,
    }
