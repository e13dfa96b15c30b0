"""Condition trees: ``all`` / ``any`` / ``not`` / ``segment`` over typed leaves.

A tree is validated against the field catalogue once, then compiled to nested closures so
that matching an event costs a few function calls. A leaf whose field has no value is
false (never an error), and values are never coerced: ``"5"`` does not equal ``5``.
"""

from __future__ import annotations

import difflib
import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from triggers.fields import ALL_OPERATORS, BUILTIN_FIELDS, OPERATORS, FieldSpec, FieldType

Facts = Mapping[str, object]
StageTag = TypeVar("StageTag")
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
    """A finite number: YAML's ``.nan`` and ``.inf`` load as floats, and a comparison with
    NaN raises ``InvalidOperation`` once the field's value is a ``Decimal``."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, Decimal):
        return value.is_finite()
    return isinstance(value, float) and math.isfinite(value)


def _value_problem(spec: FieldSpec, op: str, value: object) -> str | None:
    """Say what is wrong with ``value`` for ``op`` on a field of ``spec.type``, if anything."""
    if op in ("exists", "is_empty"):
        return None if isinstance(value, bool) else f"{op} takes true or false"
    if spec.type is FieldType.NUMBER:
        if op in ("in", "not_in"):
            ok = isinstance(value, list) and bool(value) and all(_is_number(v) for v in value)
            return (
                None if ok else f"{op} on a number field takes a non-empty list of finite numbers"
            )
        return None if _is_number(value) else f"{op} on a number field takes a finite number"
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
    kind = str if isinstance(expected, list) else type(expected)
    if op in ("eq", "ne"):
        equal = op == "eq"

        def compare_exact(facts: Facts) -> bool:
            actual = facts.get(name)
            return type(actual) is kind and (actual == expected) is equal

        return compare_exact
    members = frozenset(expected)
    inside = op == "in"

    def member(facts: Facts) -> bool:
        actual = facts.get(name)
        return type(actual) is kind and (actual in members) is inside

    return member


_NUMERIC_TYPES = frozenset({int, float, Decimal})  # not bool: True is not 1 here
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def _compile_numeric(name: str, op: str, expected: Any) -> Predicate:
    # int, float and Decimal compare exactly with each other, so no conversion is needed.
    if op in ("in", "not_in"):
        members = frozenset(_as_decimal(v) for v in expected)
        inside = op == "in"

        def member(facts: Facts) -> bool:
            actual = facts.get(name)
            return type(actual) in _NUMERIC_TYPES and (actual in members) is inside

        return member
    bound = _as_decimal(expected)
    test = _COMPARE[op]

    def compare_number(facts: Facts) -> bool:
        actual = facts.get(name)
        return type(actual) in _NUMERIC_TYPES and test(actual, bound)

    return compare_number


class _Emitter:
    """Builds one Python expression for a whole tree. Field names enter the source only
    through ``repr`` and every compared value is a constant passed by name, never text
    spliced into code, so nothing a campaign file holds can become code."""

    def __init__(self) -> None:
        self.constants: dict[str, object] = {}

    def constant(self, value: object) -> str:
        name = f"c{len(self.constants)}"
        self.constants[name] = value
        return name

    def leaf(self, leaf: Leaf) -> str:
        get = f"(v := g({leaf.field!r}))"
        op, expected = leaf.op, leaf.value
        if op == "exists":
            return f"(({get} is not None) is {bool(expected)})"
        if op == "is_empty":
            return f"(type{get} is frozenset and (not v) is {bool(expected)})"
        if op in ("contains", "contains_any", "contains_all"):
            wanted = self.constant(frozenset([expected] if op == "contains" else expected))
            if op == "contains_all":
                return f"(type{get} is frozenset and {wanted} <= v)"
            return f"(type{get} is frozenset and not {wanted}.isdisjoint(v))"
        if op == "starts_with":
            return f"(type{get} is str and v.startswith({self.constant(expected)}))"
        if isinstance(expected, bool | str) or (
            isinstance(expected, list) and all(isinstance(item, str) for item in expected)
        ):
            kind = self.constant(str if isinstance(expected, list) else type(expected))
            check = f"type{get} is {kind}"
        else:
            check = f"type{get} in {self.constant(_NUMERIC_TYPES)}"
            expected = (
                [_as_decimal(item) for item in expected]
                if isinstance(expected, list)
                else _as_decimal(expected)
            )
        if op in ("in", "not_in"):
            members = self.constant(frozenset(expected))
            return f"({check} and v {'in' if op == 'in' else 'not in'} {members})"
        symbol = {"eq": "==", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
        return f"({check} and v {symbol} {self.constant(expected)})"

    def node(self, node: Condition, segments: Mapping[str, Condition]) -> str:
        if isinstance(node, AllOf):
            return "(" + " and ".join(self.node(child, segments) for child in node.all) + ")"
        if isinstance(node, AnyOf):
            return "(" + " or ".join(self.node(child, segments) for child in node.any) + ")"
        if isinstance(node, NotOf):
            return f"(not {self.node(node.not_, segments)})"
        if isinstance(node, SegmentRef):
            return self.node(segments[node.segment], segments)
        return self.leaf(node)


def compile_condition(node: Condition, segments: Mapping[str, Condition]) -> Predicate:
    """Turn a checked tree into one predicate function; segments are inlined by name.

    The tree becomes a single Python expression compiled once, so evaluating a campaign
    is one function call rather than a call per node.
    """
    emitter = _Emitter()
    expression = emitter.node(node, segments)
    source = f"def predicate(f):\n    g = f.get\n    return bool({expression})\n"
    predicate: Predicate = _define(source, emitter.constants)["predicate"]
    return predicate


def _define(source: str, constants: Mapping[str, object]) -> dict[str, Any]:
    """Run generated source with only the builtins the expressions use."""
    namespace: dict[str, Any] = {
        "__builtins__": {"type": type, "bool": bool, "str": str, "frozenset": frozenset}
    }
    namespace.update(constants)
    exec(compile(source, "<campaign condition>", "exec"), namespace)
    return namespace


def compile_stages(
    stages: Sequence[tuple[Condition | None, StageTag]], segments: Mapping[str, Condition]
) -> Callable[[Facts], StageTag | None]:
    """One function for conditions tested in turn: the tag of the first one that is false,
    or None when all hold (a None condition always holds).

    The engine tests a campaign's trigger, then its audience, and needs to know which one
    failed; one generated function does both without a call per tree.
    """
    emitter = _Emitter()
    lines = ["def stages(f):", "    g = f.get"]
    for node, tag in stages:
        if node is not None:
            lines.append(f"    if not {emitter.node(node, segments)}:")
            lines.append(f"        return {emitter.constant(tag)}")
    lines.append("    return None\n")
    namespace = _define("\n".join(lines), emitter.constants)
    function: Callable[[Facts], StageTag | None] = namespace["stages"]
    return function


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
