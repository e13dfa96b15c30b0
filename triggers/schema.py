"""JSON Schemas for campaign and segment files, for editors' autocompletion and checks.

Generated from the pydantic models, then given what pydantic cannot know: the field
catalogue (with declared custom attributes) and the operators, each with a description.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
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
    return schema


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
