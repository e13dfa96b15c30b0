"""Checks across a campaign and what it refers to: its templates exist and pass the
template check (for each variant and each sequence step), its id is not used twice."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from triggers.campaign_text import ParsedFile, SubjectTexts
from triggers.campaigns import Campaign, Experiment, Variant
from triggers.conditions import did_you_mean
from triggers.lint_issues import Level, LintIssue


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A problem a template check found; located in the template file when it knows where,
    else at the variant's ``template:`` (or, with ``at="subject"``, ``subject:``) line of
    the campaign."""

    variant: int
    code: str
    message: str
    file: str | None = None
    line: int = 1
    col: int = 1
    level: Level = "error"
    at: Literal["template", "subject"] = "template"
    # A problem inside the subject text itself (``at="subject"``): the locale key of the
    # text it is in (None: the one text for every locale), and its line and column in that
    # text when known (0: not known).
    subject_locale: str | None = None
    text_line: int = 0
    text_col: int = 0


def _in_subject(
    problem: TemplateProblem, texts: SubjectTexts, path: str
) -> tuple[int, int, str] | None:
    """Line, column and path of a problem inside a subject text, from where that text is
    written (a column inside it only where the text stands verbatim on one line)."""
    if problem.at != "subject" or not problem.text_line:
        return None
    at = next((at for key, at in texts if key == problem.subject_locale), None)
    if at is None:
        return None
    line, col = at.line, at.col
    if problem.text_line == 1 and problem.text_col and at.text_col is not None:
        col = at.text_col + problem.text_col - 1
    return line, col, f"{path}.subject" + (f".{at.key}" if at.key else "")


TemplateCheck = Callable[[Campaign], Iterable[TemplateProblem]]


def _in_template(problem: TemplateProblem) -> LintIssue:
    """A template check's problem located in the template file itself."""
    assert problem.file is not None
    return LintIssue(
        problem.file, problem.line, problem.col, problem.code, "", problem.message, problem.level
    )


def _at_variant(parsed: ParsedFile, problem: TemplateProblem) -> LintIssue:
    index, code, message, level, at = (
        problem.variant,
        problem.code,
        problem.message,
        problem.level,
        problem.at,
    )
    texts = parsed.subject_texts_at[index] if index < len(parsed.subject_texts_at) else ()
    inside = _in_subject(problem, texts, f"experiment.variants[{index}]")
    if inside is not None:
        line, col, path = inside
        return LintIssue(parsed.name, line, col, problem.code, path, problem.message, level)
    subject_at = parsed.subjects_at[index] if index < len(parsed.subjects_at) else None
    if at == "subject" and subject_at is not None:
        line, col = subject_at
    else:
        line, col = parsed.templates_at[index]
        at = "template"
    path = f"experiment.variants[{index}].{at}"
    return LintIssue(parsed.name, line, col, code, path, message, level)


def _step_template_issues(
    parsed: ParsedFile, campaign: Campaign, template_check: TemplateCheck
) -> list[LintIssue]:
    """The template check for each sequence step, as the step will render: its template,
    subject and offer (or the campaign's), located in the template or at the step."""
    issues: list[LintIssue] = []
    first = campaign.experiment.variants[0]
    for index, step in enumerate(campaign.steps or ()):
        variant = Variant(
            id=first.id,
            template=step.template or first.template,
            subject=step.subject or first.subject,
        )
        probe = campaign.model_copy(
            update={
                "offer": step.offer or campaign.offer,
                "experiment": Experiment(variants=[variant]),
                "steps": None,
            }
        )
        # A subject problem points inside the subject text it comes from: the step's own,
        # or the first variant's that the step inherits.
        if step.subject is not None:
            texts, owner = _texts(parsed.step_subject_texts_at, index), f"steps[{index}]"
        else:
            texts, owner = _texts(parsed.subject_texts_at, 0), "experiment.variants[0]"
        for problem in template_check(probe):
            if problem.file:
                issues.append(_in_template(problem))
                continue
            inside = _in_subject(problem, texts, owner)
            if inside is not None:
                line, col, path = inside
            else:
                line, col = parsed.step_templates_at[index]
                path = f"steps[{index}]"
            code, message, level = problem.code, problem.message, problem.level
            issues.append(LintIssue(parsed.name, line, col, code, path, message, level))
    return issues


def _texts(all_texts: tuple[SubjectTexts, ...], index: int) -> SubjectTexts:
    return all_texts[index] if index < len(all_texts) else ()


def duplicate_id_issue(parsed: ParsedFile, first_seen: dict[str, str]) -> LintIssue | None:
    """The issue when the campaign's id was already used by an earlier file, else None
    (and the id is recorded in ``first_seen``: id -> file)."""
    assert parsed.campaign is not None
    campaign_id = parsed.campaign.id
    if campaign_id in first_seen:
        line, col = parsed.id_at
        message = f"campaign id {campaign_id!r} is also used by {first_seen[campaign_id]}"
        return LintIssue(parsed.name, line, col, "duplicate-id", "id", message)
    first_seen[campaign_id] = parsed.name
    return None


def unknown_template_issues(parsed: ParsedFile, templates: set[str]) -> list[LintIssue]:
    """A variant's or a step's template that is not among ``templates``."""
    campaign = parsed.campaign
    assert campaign is not None
    unknown = [
        _at_variant(
            parsed,
            TemplateProblem(
                index,
                "unknown-template",
                f"no template {variant.template!r}"
                + did_you_mean(variant.template, sorted(templates)),
            ),
        )
        for index, variant in enumerate(campaign.experiment.variants)
        if variant.template not in templates
    ]
    unknown += [
        LintIssue(
            parsed.name,
            *parsed.step_templates_at[index],
            "unknown-template",
            f"steps[{index}].template",
            f"no template {step.template!r}" + did_you_mean(step.template, sorted(templates)),
        )
        for index, step in enumerate(campaign.steps or ())
        if step.template is not None and step.template not in templates
    ]
    return unknown


def template_check_issues(parsed: ParsedFile, template_check: TemplateCheck) -> list[LintIssue]:
    """The template check's findings for every variant and every step of the campaign."""
    campaign = parsed.campaign
    assert campaign is not None
    checked = [
        _in_template(problem) if problem.file else _at_variant(parsed, problem)
        for problem in template_check(campaign)
    ]
    return checked + _step_template_issues(parsed, campaign, template_check)
