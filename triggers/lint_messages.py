"""pydantic's validation errors and the condition checks' problems as lint issues, each
located at its line and column in the YAML document and worded for a marketer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from triggers.campaigns import Campaign
from triggers.conditions import Problem, did_you_mean
from triggers.lint_issues import LintIssue


def locate(document: Any, path: Sequence[str | int], at_key: bool = False) -> tuple[int, int]:
    """1-based line and column of the deepest node of ``path`` present in the document.

    Points at the value of the last key, or at the key itself when ``at_key`` is set.
    Steps that are not in the document (pydantic's union tags such as ``complementary``
    or ``Leaf``) are skipped when the step after them is there. A key merged in with
    ``<<:`` points at the mapping that merges it.
    """
    line, col = 0, 0
    if isinstance(document, CommentedMap) and document:
        line, col = document.lc.key(next(iter(document)))
    node = document
    for index, step in enumerate(path):
        last = index == len(path) - 1
        if isinstance(node, CommentedMap):
            if step not in node:
                following = path[index + 1] if not last else None
                if following is not None and following in node:
                    continue
                if step in _union_tags():
                    continue
                return line + 1, col + 1
            if step not in node.lc.data:
                # Merged in by ``<<:`` from another mapping: the nearest position written
                # here is the enclosing key's.
                return line + 1, col + 1
            line, col = node.lc.key(step)
            value = node[step]
            scalar = not isinstance(value, CommentedMap | CommentedSeq)
            # A list written inline is itself the wrong value: point at it.
            inline = (
                last
                and isinstance(value, CommentedSeq)
                and (not value or bool(value.fa.flow_style()))
            )
            if (scalar or inline) and not (at_key and last):
                line, col = node.lc.value(step)
            node = value
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and step < len(node):
            line, col = node.lc.item(step)
            node = node[step]
        elif isinstance(step, str) and step in _union_tags():
            continue
        else:
            break
    return line + 1, col + 1


def _without_tags(document: Any, path: Sequence[str | int]) -> list[str | int]:
    """Drop pydantic's union tags (``complementary``, ``Leaf``…) that are not document keys."""
    kept: list[str | int] = []
    node = document
    for index, step in enumerate(path):
        following = path[index + 1] if index + 1 < len(path) else None
        if isinstance(node, CommentedMap) and step not in node:
            if step in _union_tags() or (following is not None and following in node):
                continue
            kept.append(step)
            node = None
        elif isinstance(node, CommentedMap) or (
            isinstance(node, CommentedSeq) and isinstance(step, int) and step < len(node)
        ):
            kept.append(step)
            node = node[step]
        elif isinstance(step, str) and step in _union_tags():
            continue
        else:
            kept.append(step)
            node = None
    return kept


def _dotted(path: Sequence[str | int]) -> str:
    text = ""
    for step in path:
        if isinstance(step, int):
            text += f"[{step}]"
        elif step not in _union_tags():
            text += f".{step}" if text else step
    return text


def _models_in(annotation: Any) -> Iterable[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in getattr(annotation, "__args__", ()) or ():
        yield from _models_in(argument)
    for extra in getattr(annotation, "__metadata__", ()) or ():
        yield from _models_in(extra)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and origin is not annotation:
        yield from _models_in(origin)


def _tag_of(model: type[BaseModel]) -> str:
    """The name pydantic puts in error locations for a union member."""
    field = model.model_fields.get("type")
    if field is not None and get_args(field.annotation):
        return str(get_args(field.annotation)[0])
    return model.__name__


@cache
def _union_tags() -> frozenset[str]:
    """Names pydantic inserts into error locations that are not keys of the document."""
    offers = _models_in(Campaign.model_fields["offer"].annotation)
    return frozenset({"AllOf", "AnyOf", "NotOf", "SegmentRef", "Leaf"}) | {
        _tag_of(model) for model in offers
    }


def _keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _models_at(path: Sequence[str | int]) -> tuple[list[type[BaseModel]], list[type[BaseModel]]]:
    """The models a mapping at ``path`` may be, and its union siblings (for hints)."""
    models: list[type[BaseModel]] = [Campaign]
    siblings: list[type[BaseModel]] = []
    for step in path:
        if isinstance(step, int):
            continue
        tagged = [model for model in models if _tag_of(model) == step]
        if tagged:
            siblings, models = models, tagged
            continue
        following: list[type[BaseModel]] = []
        for model in models:
            for name, info in model.model_fields.items():
                if (info.alias or name) == step:
                    following += _models_in(info.annotation)
        models, siblings = list(dict.fromkeys(following)), []
    return models, siblings


def _unknown_key_message(loc: Sequence[str | int]) -> str:
    key = str(loc[-1])
    models, siblings = _models_at(loc[:-1])
    allowed = sorted({k for model in models for k in _keys(model)})
    owners = [_tag_of(m) for m in siblings if key in _keys(m) and m not in models]
    if owners:
        return f"unknown key {key!r} here: it belongs to {' and '.join(owners)} offers"
    hint = did_you_mean(key, allowed)
    listing = "" if hint or not allowed else f" (keys here: {', '.join(allowed)})"
    return f"unknown key {key!r}{hint}{listing}"


_CODES = {
    "extra_forbidden": "unknown-key",
    "missing": "missing-key",
    "bad-duration": "bad-duration",
    "bad-time": "bad-time",
}


def _message(item: Any, loc: tuple[str | int, ...], code: str) -> tuple[str, tuple[str | int, ...]]:
    """A marketer's wording for a pydantic error, and the location to point at."""
    kind = item["type"]
    message = str(item["msg"]).removeprefix("Value error, ")
    if code == "unknown-key" and loc and isinstance(loc[-1], str):
        return _unknown_key_message(loc), loc
    if code == "missing-key" and loc:
        return f"missing required key {loc[-1]!r}", loc
    if kind == "bool_type":
        return "write true or false (YAML 1.2 reads yes, no, on and off as text)", loc
    if kind == "union_tag_invalid":
        context = item.get("ctx") or {}
        tag, expected = str(context.get("tag", "")), str(context.get("expected_tags", ""))
        choices = [choice.strip(" '") for choice in expected.split(",")]
        listing = ", ".join(repr(choice) for choice in choices)
        return f"unknown type {tag!r}{did_you_mean(tag, choices)} (one of {listing})", (
            *loc,
            "type",
        )
    if kind == "literal_error":
        choices = _literal_choices(item)
        written = item.get("input")
        hint = did_you_mean(str(written), choices)
        listing = ", ".join(repr(choice) for choice in choices)
        return f"{written!r} is not allowed{hint} (one of {listing})", loc
    return message, loc


def _literal_choices(item: Any) -> list[str]:
    expected = str((item.get("ctx") or {}).get("expected", ""))
    return [part.strip(" '") for part in expected.replace(" or ", ",").split(",") if part.strip()]


def pydantic_issues(filename: str, document: Any, error: ValidationError) -> list[LintIssue]:
    issues = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        code = _CODES.get(item["type"], "bad-value")
        message, loc = _message(item, loc, code)
        if "bad duration" in message or "write a duration" in message:
            code = "bad-duration"
        elif "bad time" in message or "time of day" in message:
            code = "bad-time"
        clean = _without_tags(document, loc)
        line, col = locate(document, clean, at_key=code == "unknown-key")
        issues.append(LintIssue(filename, line, col, code, _dotted(clean), message))
    return sorted(issues, key=lambda issue: (issue.line, issue.col))


def problem_issue(filename: str, document: Any, problem: Problem) -> LintIssue:
    line, col = locate(document, problem.path)
    return LintIssue(filename, line, col, problem.code, _dotted(problem.path), problem.message)
