"""One campaign file's text: parsed as YAML, validated, its conditions and steps checked,
with the positions the cross-file checks point at (``triggers.rule_checks``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.comments import CommentedMap

from triggers.campaigns import Campaign, subject_key
from triggers.conditions import Condition, Problem, check_condition
from triggers.fields import FieldType, fields_for
from triggers.lint_issues import LintIssue
from triggers.lint_messages import locate, problem_issue, pydantic_issues
from triggers.sequences import sequence_problems
from triggers.yaml_source import plain_data, read_yaml


def parse_campaign(
    text: str,
    filename: str,
    segments: Mapping[str, Condition],
    attributes: Mapping[str, FieldType] | None = None,
) -> tuple[Campaign | None, Any, list[LintIssue]]:
    """Parse and validate one campaign file's text; returns the campaign or its issues."""
    document, syntax = read_yaml(text, filename, "a campaign file")
    if syntax:
        return None, document, syntax
    try:
        campaign = Campaign.model_validate(plain_data(document))
    except ValidationError as exc:
        return None, document, pydantic_issues(filename, document, exc)
    problems: list[Problem] = []
    fields = fields_for(campaign.trigger.event, attributes)
    names = list(segments)
    if campaign.trigger.where is not None:
        problems += check_condition(campaign.trigger.where, fields, names, ("trigger", "where"))
    if campaign.audience is not None:
        problems += check_condition(campaign.audience, fields, names, ("audience",))
    problems += _variant_problems(campaign)
    problems += sequence_problems(campaign, names, attributes)
    issues = [problem_issue(filename, document, problem) for problem in problems]
    return (None if issues else campaign), document, issues


def _variant_problems(campaign: Campaign) -> list[Problem]:
    variants = campaign.experiment.variants
    problems = []
    seen: set[str] = set()
    for index, variant in enumerate(variants):
        if variant.id in seen:
            problems.append(
                Problem(
                    ("experiment", "variants", index, "id"),
                    "bad-value",
                    f"variant id {variant.id!r} is used twice",
                )
            )
        seen.add(variant.id)
    if all(variant.weight == 0 for variant in variants):
        problems.append(
            Problem(
                ("experiment", "variants"),
                "bad-value",
                "at least one variant needs a weight above 0",
            )
        )
    return problems


@dataclass(frozen=True, slots=True)
class SubjectAt:
    """Where one subject text is written: the scalar (``line``, ``col``), the key as
    written (``pt-BR``; None for one text for every locale) and, when the text stands on
    that line exactly as written (no escapes, no block scalar), the column of its first
    character, so that a column inside the text is a column of the file."""

    line: int
    col: int
    key: str | None = None
    text_col: int | None = None


# Per variant (or step): (locale key as the campaign holds it, or None for one text;
# where it is written).
SubjectTexts = tuple[tuple[str | None, SubjectAt], ...]


def _text_col(lines: list[str], line: int, col: int, text: object) -> int | None:
    """The file column of ``text``'s first character when the scalar at ``line``:``col``
    holds it verbatim (plain or quoted, on one line), else None."""
    if not isinstance(text, str) or not 0 < line <= len(lines):
        return None
    raw = lines[line - 1]
    start = col if raw[col - 1 : col] in ("'", '"') else col - 1
    return start + 1 if raw[start : start + len(text)] == text and "\n" not in text else None


def subject_texts(document: Any, path: tuple[str | int, ...], lines: list[str]) -> SubjectTexts:
    """Where each text of the ``subject:`` at ``path`` is written (empty when none)."""
    node = document
    for step in path[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return ()
    if not isinstance(node, CommentedMap) or path[-1] not in node:
        return ()
    value = node[path[-1]]
    if isinstance(value, CommentedMap):
        found: list[tuple[str | None, SubjectAt]] = []
        for key, text in value.items():
            line, col = (n + 1 for n in value.lc.value(key))
            at = SubjectAt(line, col, str(key), _text_col(lines, line, col, text))
            found.append((subject_key(str(key)), at))
        return tuple(found)
    line, col = (n + 1 for n in node.lc.value(path[-1]))
    return ((None, SubjectAt(line, col, None, _text_col(lines, line, col, value))),)


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """One campaign file, parsed and checked, with the positions later checks point at.

    Plain data only, so files can be parsed in worker processes and sent back.
    """

    name: str
    campaign: Campaign | None
    issues: tuple[LintIssue, ...]
    id_at: tuple[int, int] = (1, 1)
    templates_at: tuple[tuple[int, int], ...] = ()
    subjects_at: tuple[tuple[int, int] | None, ...] = ()
    # Each step's ``template:`` (or its ``id:`` when it has none), for the template check.
    step_templates_at: tuple[tuple[int, int], ...] = ()
    # Each variant's subject texts, where they are written.
    subject_texts_at: tuple[SubjectTexts, ...] = ()
    # Each step's own subject texts (empty for a step without ``subject:``).
    step_subject_texts_at: tuple[SubjectTexts, ...] = ()


def parse_campaign_text(
    name: str,
    text: str,
    segments: Mapping[str, Condition],
    attributes: Mapping[str, FieldType] | None = None,
) -> ParsedFile:
    """Parse and check one campaign file's text; ``name`` (its path) is the file every
    issue names."""
    campaign, document, found = parse_campaign(text, name, segments, attributes)
    if campaign is None:
        return ParsedFile(name, None, tuple(found))
    if campaign.experiment.holdout_percent >= 100:
        found = [*found, _everyone_held_out(name, document)]
    variants = range(len(campaign.experiment.variants))
    lines = text.splitlines()
    return ParsedFile(
        name,
        campaign,
        tuple(found),
        locate(document, ("id",)),
        tuple(locate(document, ("experiment", "variants", i, "template")) for i in variants),
        tuple(
            locate(document, ("experiment", "variants", i, "subject"))
            if campaign.experiment.variants[i].subject is not None
            else None
            for i in variants
        ),
        tuple(
            locate(document, ("steps", i, "template" if step.template else "id"))
            for i, step in enumerate(campaign.steps or ())
        ),
        tuple(
            subject_texts(document, ("experiment", "variants", i, "subject"), lines)
            for i in variants
        ),
        tuple(
            subject_texts(document, ("steps", i, "subject"), lines)
            if step.subject is not None
            else ()
            for i, step in enumerate(campaign.steps or ())
        ),
    )


def _everyone_held_out(name: str, document: Any) -> LintIssue:
    """The warning for ``holdout_percent: 100``: valid (a control group may be the whole
    audience for a while), but it sends nothing and leaves no sent group to compare the
    held-out one with, so its lift can never be measured."""
    line, col = locate(document, ("experiment", "holdout_percent"))
    message = (
        "every matching customer is held out: the campaign sends no email and its lift "
        "cannot be measured (no one is sent to compare with); to stop sending, set "
        "status: paused"
    )
    return LintIssue(
        name, line, col, "everyone-held-out", "experiment.holdout_percent", message, "warning"
    )


# Parsing YAML is the slow part of a lint (ruamel's round-trip parser is pure Python);
# large rule sets are parsed on every core.
