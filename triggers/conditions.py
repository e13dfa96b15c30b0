"""Condition trees: ``all`` / ``any`` / ``not`` / ``segment`` over typed leaves.

A tree is validated against the field catalogue once, then compiled to nested closures so
that matching an event costs a few function calls. A leaf whose field has no value is
false (never an error), and values are never coerced: ``"5"`` does not equal ``5``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from triggers.fields import ALL_OPERATORS, BUILTIN_FIELDS, OPERATORS, FieldSpec, FieldType

Facts = Mapping[str, object]
Predicate = Callable[[Facts], bool]
Path = tuple[str | int, ...]


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Leaf(_Node):
    field: str = Field(description="Dotted field name, e.g. event.total")
    op: str = Field(description="Operator, checked against the field's type")
    value: Any = Field(default=None, description="Literal compared with the field")


class AllOf(_Node):
    all: list[Condition] = Field(min_length=1)


class AnyOf(_Node):
    any: list[Condition] = Field(min_length=1)


class NotOf(_Node):
    not_: Condition = Field(alias="not")


class SegmentRef(_Node):
    segment: str = Field(description="Name of a segment in config/segments.yaml")


def _node_kind(raw: Any) -> str | None:
    if isinstance(raw, BaseModel):
        return type(raw).__name__
    if isinstance(raw, Mapping):
        for key, tag in (("all", "AllOf"), ("any", "AnyOf"), ("not", "NotOf")):
            if key in raw:
                return tag
        if "segment" in raw:
            return "SegmentRef"
        return "Leaf"
    return None


Condition = Annotated[
    Annotated[AllOf, Tag("AllOf")]
    | Annotated[AnyOf, Tag("AnyOf")]
    | Annotated[NotOf, Tag("NotOf")]
    | Annotated[SegmentRef, Tag("SegmentRef")]
    | Annotated[Leaf, Tag("Leaf")],
    Discriminator(
        _node_kind,
        custom_error_type="condition",
        custom_error_message=(
            "a condition is a mapping with all, any, not, segment or field/op/value"
        ),
    ),
]
AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a campaign, located by its path inside the document."""

    path: Path
    code: str
    message: str


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _value_problem(spec: FieldSpec, op: str, value: object) -> str | None:
    """Say what is wrong with ``value`` for ``op`` on a field of ``spec.type``, if anything."""
    if op in ("exists", "is_empty"):
        return None if isinstance(value, bool) else f"{op} takes true or false"
    if spec.type is FieldType.NUMBER:
        if op in ("in", "not_in"):
            ok = isinstance(value, list) and bool(value) and all(_is_number(v) for v in value)
            return None if ok else f"{op} on a number field takes a non-empty list of numbers"
        return None if _is_number(value) else f"{op} on a number field takes a number"
    if spec.type is FieldType.STRING:
        if op in ("in", "not_in"):
            ok = isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
            return None if ok else f"{op} on a text field takes a non-empty list of texts"
        return None if isinstance(value, str) else f"{op} on a text field takes a text"
    if spec.type is FieldType.STRING_SET:
        if op == "contains":
            return None if isinstance(value, str) else "contains takes one text"
        ok = isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
        return None if ok else f"{op} takes a non-empty list of texts"
    return None if isinstance(value, bool) else f"{op} on a yes/no field takes true or false"


def check_condition(
    node: Condition, fields: Mapping[str, FieldSpec], segments: Sequence[str], path: Path
) -> Iterator[Problem]:
    """Yield every problem in a condition tree: unknown fields, wrong operators, bad values."""
    if isinstance(node, AllOf | AnyOf):
        children = node.all if isinstance(node, AllOf) else node.any
        key = "all" if isinstance(node, AllOf) else "any"
        for index, child in enumerate(children):
            yield from check_condition(child, fields, segments, (*path, key, index))
    elif isinstance(node, NotOf):
        yield from check_condition(node.not_, fields, segments, (*path, "not"))
    elif isinstance(node, SegmentRef):
        if node.segment not in segments:
            hint = did_you_mean(node.segment, list(segments))
            yield Problem(
                (*path, "segment"), "unknown-segment", f"no segment {node.segment!r}{hint}"
            )
    else:
        spec = fields.get(node.field)
        if spec is None:
            other = BUILTIN_FIELDS.get(node.field)
            if other is not None and other.event_types:
                message = (
                    f"{node.field!r} is a field of {' and '.join(other.event_types)} events, "
                    "not of the event this campaign listens to"
                )
            else:
                message = f"unknown field {node.field!r}{did_you_mean(node.field, list(fields))}"
            yield Problem((*path, "field"), "unknown-field", message)
            return
        allowed = OPERATORS[spec.type]
        if node.op not in allowed:
            hint = did_you_mean(node.op, allowed)
            if node.op in ALL_OPERATORS:
                message = f"operator {node.op!r} does not apply to {spec.type} field {spec.name}"
                code = "wrong-operator"
                hint = hint or f"; use one of {', '.join(allowed)}"
            else:
                message = f"unknown operator {node.op!r}"
                code = "unknown-operator"
            yield Problem((*path, "op"), code, message + hint)
            return
        problem = _value_problem(spec, node.op, node.value)
        if problem is not None:
            yield Problem((*path, "value"), "bad-value", problem)


def _as_decimal(value: object) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _compile_leaf(leaf: Leaf) -> Predicate:
    name, op, expected = leaf.field, leaf.op, leaf.value
    if op == "exists":
        return lambda facts: (facts.get(name) is not None) is expected
    if op == "is_empty":
        return lambda facts: isinstance(s := facts.get(name), frozenset) and (not s) is expected
    if op in ("contains", "contains_any", "contains_all"):
        wanted = frozenset([expected] if op == "contains" else expected)
        if op == "contains_all":
            return lambda facts: isinstance(s := facts.get(name), frozenset) and wanted <= s
        return lambda facts: (
            isinstance(s := facts.get(name), frozenset) and not wanted.isdisjoint(s)
        )
    if op == "starts_with":
        return lambda facts: isinstance(s := facts.get(name), str) and s.startswith(expected)
    if isinstance(expected, bool | str) or (
        isinstance(expected, list) and all(isinstance(v, str) for v in expected)
    ):
        return _compile_exact(name, op, expected)
    return _compile_numeric(name, op, expected)


def _compile_exact(name: str, op: str, expected: Any) -> Predicate:
    kind = type(expected) if not isinstance(expected, list) else str

    def typed(facts: Facts) -> object | None:
        actual = facts.get(name)
        return actual if type(actual) is kind else None

    if op == "eq":
        return lambda facts: (a := typed(facts)) is not None and a == expected
    if op == "ne":
        return lambda facts: (a := typed(facts)) is not None and a != expected
    members = frozenset(expected)
    if op == "in":
        return lambda facts: (a := typed(facts)) is not None and a in members
    return lambda facts: (a := typed(facts)) is not None and a not in members


def _compile_numeric(name: str, op: str, expected: Any) -> Predicate:
    def number(facts: Facts) -> Decimal | None:
        actual = facts.get(name)
        return _as_decimal(actual) if _is_number(actual) else None

    if op in ("in", "not_in"):
        members = frozenset(_as_decimal(v) for v in expected)
        if op == "in":
            return lambda facts: (a := number(facts)) is not None and a in members
        return lambda facts: (a := number(facts)) is not None and a not in members
    bound = _as_decimal(expected)
    compare: dict[str, Callable[[Decimal], bool]] = {
        "eq": lambda a: a == bound,
        "ne": lambda a: a != bound,
        "gt": lambda a: a > bound,
        "gte": lambda a: a >= bound,
        "lt": lambda a: a < bound,
        "lte": lambda a: a <= bound,
    }
    test = compare[op]
    return lambda facts: (a := number(facts)) is not None and test(a)


def compile_condition(node: Condition, segments: Mapping[str, Condition]) -> Predicate:
    """Turn a checked tree into one predicate; segments are inlined by name."""
    if isinstance(node, AllOf):
        parts = tuple(compile_condition(child, segments) for child in node.all)
        return lambda facts: all(part(facts) for part in parts)
    if isinstance(node, AnyOf):
        parts = tuple(compile_condition(child, segments) for child in node.any)
        return lambda facts: any(part(facts) for part in parts)
    if isinstance(node, NotOf):
        inner = compile_condition(node.not_, segments)
        return lambda facts: not inner(facts)
    if isinstance(node, SegmentRef):
        return compile_condition(segments[node.segment], segments)
    return _compile_leaf(node)


@dataclass(frozen=True, slots=True)
class LeafOutcome:
    """How one leaf evaluated, for ``crosssell explain``."""

    path: str
    field: str
    op: str
    expected: object
    actual: object
    result: bool


def explain_condition(
    node: Condition, facts: Facts, segments: Mapping[str, Condition], path: str
) -> tuple[bool, list[LeafOutcome]]:
    """Evaluate every leaf (no short-circuit) and report each with its actual value."""
    if isinstance(node, AllOf | AnyOf):
        key = "all" if isinstance(node, AllOf) else "any"
        children = node.all if isinstance(node, AllOf) else node.any
        results, outcomes = [], []
        for index, child in enumerate(children):
            result, inner = explain_condition(child, facts, segments, f"{path}.{key}[{index}]")
            results.append(result)
            outcomes.extend(inner)
        return (all(results) if key == "all" else any(results)), outcomes
    if isinstance(node, NotOf):
        result, outcomes = explain_condition(node.not_, facts, segments, f"{path}.not")
        return not result, outcomes
    if isinstance(node, SegmentRef):
        return explain_condition(
            segments[node.segment], facts, segments, f"{path}<segment {node.segment}>"
        )
    result = _compile_leaf(node)(facts)
    actual = facts.get(node.field)
    if isinstance(actual, frozenset):
        actual = sorted(actual)
    return result, [LeafOutcome(path, node.field, node.op, node.value, actual, result)]
