"""Shared definitions campaigns build on: custom attribute types and named segments.

``config/attributes.yaml`` declares the type of each custom customer attribute, so a
condition on ``customer.attributes.<name>`` is type-checked like a built-in field.
``config/segments.yaml`` names reusable conditions (``{segment: repeat-buyers}``); a
segment may use other segments, never itself, directly or through others.

Both are parsed from text; ``worker.decide.rule_files`` reads the files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from triggers.conditions import (
    AllOf,
    AnyOf,
    Condition,
    NotOf,
    Problem,
    SegmentRef,
    check_condition,
    did_you_mean,
)
from triggers.fields import FieldType, fields_for
from triggers.lint_issues import LintIssue, RuleSetError
from triggers.lint_messages import locate, problem_issue, pydantic_issues
from triggers.yaml_source import Source, plain_data, read_yaml

_CONDITION: TypeAdapter[Condition] = TypeAdapter(Condition)
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True)
class Definitions:
    attributes: Mapping[str, FieldType] = field(default_factory=dict)
    segments: Mapping[str, Condition] = field(default_factory=dict)


def _read(name: str, text: str, what: str) -> tuple[Any, list[LintIssue]]:
    """The YAML document of a definitions text; an empty text is no document."""
    if not text.strip():
        return None, []
    return read_yaml(text, name, what)


def parse_attributes(name: str, text: str) -> tuple[dict[str, FieldType], list[LintIssue]]:
    """Custom attribute types declared in an attributes file's text, and the issues."""
    filename = name
    document, issues = _read(filename, text, "an attributes file")
    if document is None:
        return {}, issues
    kinds = [kind.value for kind in FieldType]
    found: dict[str, FieldType] = {}
    for key, kind in document.items():
        if not isinstance(key, str) or not key or not set(key) <= _NAME_CHARS:
            line, col = document.lc.key(key)
            issues.append(
                LintIssue(
                    filename,
                    line + 1,
                    col + 1,
                    "bad-key",
                    str(key),
                    "attribute names use a-z, 0-9, _ and -",
                )
            )
        elif kind not in kinds:
            line, col = locate(document, (key,))
            issues.append(
                LintIssue(
                    filename,
                    line,
                    col,
                    "bad-value",
                    key,
                    f"type must be one of {', '.join(kinds)}" + did_you_mean(str(kind), kinds),
                )
            )
        else:
            found[key] = FieldType(kind)
    return found, issues


def _references(node: Condition) -> set[str]:
    if isinstance(node, AllOf | AnyOf):
        children = node.all if isinstance(node, AllOf) else node.any
        return set().union(*(_references(child) for child in children))
    if isinstance(node, NotOf):
        return _references(node.not_)
    if isinstance(node, SegmentRef):
        return {node.segment}
    return set()


def _cycle(name: str, graph: Mapping[str, set[str]]) -> list[str] | None:
    """A path name → … → name through segment references, if there is one."""
    stack: list[tuple[str, list[str]]] = [(name, [name])]
    seen: set[str] = set()
    while stack:
        current, trail = stack.pop()
        for target in sorted(graph.get(current, ())):
            if target == name:
                return [*trail, name]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*trail, target]))
    return None


def parse_segments(
    name: str, text: str, attributes: Mapping[str, FieldType]
) -> tuple[dict[str, Condition], list[LintIssue]]:
    """Named segments in a segments file's text (checked against ``attributes``)."""
    document, issues = _read(name, text, "a segments file")
    if document is None:
        return {}, issues
    filename = name
    fields = fields_for(None, attributes)
    names = [str(name) for name in document]
    found: dict[str, Condition] = {}
    for name, raw in document.items():
        try:
            condition = _CONDITION.validate_python(plain_data(raw))
        except ValidationError as exc:
            wrapped = [
                LintIssue(
                    i.file, i.line, i.col, i.code, f"{name}.{i.path}" if i.path else name, i.message
                )
                for i in pydantic_issues(filename, raw, exc)
            ]
            issues += wrapped or [LintIssue(filename, 1, 1, "bad-value", name, str(exc))]
            continue
        problems: list[Problem] = list(check_condition(condition, fields, names, (name,)))
        issues += [problem_issue(filename, document, problem) for problem in problems]
        if not problems:
            found[str(name)] = condition
    graph = {name: _references(condition) for name, condition in found.items()}
    reported: set[frozenset[str]] = set()
    for name in found:  # file order, so a cycle is reported at its first member
        cycle = _cycle(name, graph)
        if cycle and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            line, col = locate(document, (name,), at_key=True)
            issues.append(
                LintIssue(
                    filename,
                    line,
                    col,
                    "segment-cycle",
                    name,
                    "segments refer to each other in a circle: " + " -> ".join(cycle),
                )
            )
    return found, issues


def parse_definitions(
    attributes_source: Source | None, segments_source: Source | None
) -> Definitions:
    """Attributes, then segments (which may test attributes); either may be absent.
    Raises RuleSetError with every issue of both."""
    attributes, issues = parse_attributes(*attributes_source) if attributes_source else ({}, [])
    segments, segment_issues = (
        parse_segments(*segments_source, attributes) if segments_source else ({}, [])
    )
    issues += segment_issues
    if issues:
        raise RuleSetError(issues)
    return Definitions(attributes, segments)
