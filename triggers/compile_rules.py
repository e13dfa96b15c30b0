"""Campaign files' text to a rule set: parse each, check them together, compile; all or
nothing (``RuleSetError`` when any issue is an error).

A source is a ``(name, text)`` pair: the name (a file path for the shell) is what every
``file:line:col`` message carries. Reading files is ``worker.decide.rule_files``'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from triggers.campaign_text import ParsedFile, parse_campaign_text
from triggers.conditions import Condition
from triggers.definitions import Definitions
from triggers.fields import FieldType
from triggers.lint_issues import LintIssue, RuleSetError
from triggers.rule_checks import (
    TemplateCheck,
    duplicate_id_issue,
    template_check_issues,
    unknown_template_issues,
)
from triggers.rule_set import CompiledCampaign, RuleSet, compile_campaign
from triggers.yaml_source import Source


def compile_rule_set(
    sources: Sequence[Source],
    definitions: Definitions | None = None,
    template_names: Iterable[str] | None = None,
    template_check: TemplateCheck | None = None,
) -> RuleSet:
    """Parse, check and compile campaign texts in order; raises RuleSetError. Without
    ``template_names`` templates are not looked up; without ``template_check`` not
    checked."""
    definitions = definitions or Definitions()
    segments = dict(definitions.segments)
    parsed = [
        parse_campaign_text(name, text, segments, definitions.attributes) for name, text in sources
    ]
    return compile_parsed_files(parsed, segments, template_names, template_check)


def compile_parsed_files(
    parsed_files: Iterable[ParsedFile],
    segments: Mapping[str, Condition],
    template_names: Iterable[str] | None = None,
    template_check: TemplateCheck | None = None,
    attributes: Mapping[str, FieldType] | None = None,
) -> RuleSet:
    """Check already parsed files together and compile them (for callers that parse in
    several processes); raises RuleSetError. Warnings come back in ``RuleSet.warnings``."""
    segments = dict(segments)
    templates = set(template_names) if template_names is not None else None
    issues: list[LintIssue] = []
    compiled: list[CompiledCampaign] = []
    first_seen: dict[str, str] = {}
    reported: set[LintIssue] = set()
    for parsed in parsed_files:
        issues += parsed.issues
        campaign = parsed.campaign
        if campaign is None:
            continue
        duplicate = duplicate_id_issue(parsed, first_seen)
        if duplicate is not None:
            issues.append(duplicate)
            continue
        if templates is not None:
            unknown = unknown_template_issues(parsed, templates)
            if unknown:
                issues += unknown
                continue
        if template_check is not None:
            checked = template_check_issues(parsed, template_check)
            # A template shared by several variants (or campaigns) is reported once.
            issues += [issue for issue in checked if issue not in reported]
            reported.update(checked)
            if any(issue.level == "error" for issue in checked):
                continue
        compiled.append(compile_campaign(campaign, parsed.name, segments))
    if any(issue.level == "error" for issue in issues):
        raise RuleSetError(issues)
    return RuleSet(tuple(compiled), segments, tuple(issues), dict(attributes or {}))
