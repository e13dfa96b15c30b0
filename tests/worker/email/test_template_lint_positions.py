"""Where lint points for an error in a template: the real column (or the line's first
non-blank one, never a wrong one), each distinct issue once, complete YAML messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from triggers.lint_issues import LintIssue, RuleSetError
from triggers.yaml_source import read_yaml, syntax_message
from worker.core.settings import PROJECT_ROOT, Settings
from worker.decide.rules import load_rules
from worker.email.rendering import Renderer
from worker.email.template_lint import _unknown_variable, code_column, syntax_column

# (template source, the column lint must give on the error's line); ^ marks nothing, the
# column is counted by hand in each comment.
SYNTAX = [
    ("{{ customer.first_name }, hi", 24),  # the lone }
    ("Hello {{ customer.first_name }, hi", 30),
    ("Hi {{ a }} and {{ b }", 21),  # not a } of the closing }}
    ("Hi {{ customer.first_name , hi", 4),  # the unclosed {{
    ("Hi {%- if a x", 13),  # got 'x'
    ("  x {{ a !b }}", 10),  # Jinja's lexer gives the offset
    ('x {{ "abc }}', 6),
    ("x {% fi a %}y{% endif %}", 6),  # the unknown tag's name
    ("x {{ a b }}", 8),  # got 'b'
    ("line one\n  line2 {{ a.b( }}\nline3", 9),  # no token: the one {{ on the line
    ("x {% if a %}y", 3),  # the unclosed block: the one {% on the line
    ("x é {% for x in %} done", 5),  # inside the one tag (the tryout's case)
    ("x {% for x in %} done {% endfor %}", 1),  # two tags: not certain, first non-blank
    ("{{ a }} and {{ b }} {{ c d d }}", 1),  # 'd' twice: not certain
]


@pytest.mark.parametrize(("source", "column"), SYNTAX)
def test_a_syntax_error_points_at_its_column(source: str, column: int) -> None:
    with pytest.raises(TemplateSyntaxError) as caught:
        SandboxedEnvironment().parse(source)
    error = caught.value
    assert syntax_column(source, error.lineno, error.message or "") == column


CONTEXT = {"customer": {"first_name": "Ana", "email": "a@b"}, "event": {"data": {"id": 1}}}

UNDEFINED = [
    # (source, line, Jinja's message, column, what the message must name)
    (
        "Dear customer, {{ customer.frist_name }}",
        1,
        "has no attribute 'frist_name'",
        19,
        "first_name",
    ),
    (
        "{% if x %}\n  {{ event.data.ordr_id }}\n{% endif %}",
        2,
        "has no attribute 'ordr_id'",
        6,
        "event.data.ordr_id",
    ),
    (
        'Hi {{ customer["frist_name"] }}',
        1,
        "has no attribute 'frist_name'",
        7,
        "customer.frist_name",
    ),
    ("custmer {{ custmer.first_name }}", 1, "'custmer' is undefined", 12, "'customer'"),
    ("  {{ nothing_here }}", 1, "has no attribute 'gone'", 3, "gone"),  # not found: first non-blank
]


@pytest.mark.parametrize(("source", "line", "message", "column", "named"), UNDEFINED)
def test_an_unknown_variable_points_at_the_expression(
    source: str, line: int, message: str, column: int, named: str
) -> None:
    described, found = _unknown_variable(message, source, line, CONTEXT)
    assert found == column
    assert named in described


YAML_ERRORS = [
    ("a: 1\n---\nb: 2\n", "expected a single document in the stream", "but found another document"),
    ("a: [1, 2\nb: 3\n", "while parsing a flow sequence (line 1, column 4)", "expected ',' or ']'"),
    ("a: {b: 1\n", "while parsing a flow mapping", "expected ',' or '}'"),
    ("a: 'x\n", "while scanning a quoted scalar", "found unexpected end of stream"),
    ("a:\n  b: 1\n c: 2\n", "while parsing a block mapping", "expected <block end>"),
    ("a: b: c\n", "mapping values are not allowed here", ""),
]


@pytest.mark.parametrize(("text", "context", "problem"), YAML_ERRORS)
def test_a_yaml_syntax_message_keeps_context_and_problem(
    text: str, context: str, problem: str
) -> None:
    with pytest.raises(MarkedYAMLError) as caught:
        YAML(typ="rt").load(text)
    message = syntax_message(caught.value)
    assert context in message and problem in message, message
    _, (issue,) = read_yaml(text, "c.yaml", "a campaign file")
    assert issue.code == "yaml-syntax" and context in issue.message and problem in issue.message


def test_rule_set_error_holds_each_distinct_issue_once() -> None:
    one = LintIssue("t/body.txt", 3, 22, "unknown-variable", "", "unknown variable x")
    other = LintIssue("t/body.txt", 4, 1, "unknown-variable", "", "unknown variable y")
    error = RuleSetError([one, other, one, other, one])
    assert error.issues == (one, other)
    assert str(error).count("unknown variable x") == 1


CAMPAIGN = """\
id: {id}
name: Broken template shared by variants
status: active
kind: cross_sell
trigger:
  event: purchase
offer:
  type: complementary
  categories: [laptop-bags, mice]
  max_items: 2
schedule:
  delay: 1d
  window: {{days: [mon, tue, wed, thu, fri], from: "09:00", to: "19:00"}}
  expire_after: 7d
experiment:
  variants:
    - {{id: A, weight: 1, template: broken}}
    - id: B
      weight: 1
      template: broken
      subject: {{en: "Hi", ro: "Salut", it: "Ciao", de: "Hallo"}}
"""

BROKEN_LINES = {
    "body.txt": ("Hello there, dear {{ customer.frist_name }}\n", (1, 22)),
    "subject.txt": ("Your order, {{ customer.first_name or 'friend' }\n", (1, 48)),
}


@pytest.mark.parametrize("part", sorted(BROKEN_LINES))
def test_a_broken_template_used_twice_is_reported_once_at_its_column(
    tmp_path: Path, part: str
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "templates", templates)
    shutil.copytree(templates / "accessories", templates / "broken")
    text, (line, col) = BROKEN_LINES[part]
    (templates / "broken" / part).write_text(text, encoding="utf-8")
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    for name in ("first", "second"):  # two campaigns, each with two variants
        (campaigns / f"{name}.yaml").write_text(CAMPAIGN.format(id=name), encoding="utf-8")
    settings = Settings(
        campaigns_dir=campaigns,
        templates_dir=templates,
        segments_file=PROJECT_ROOT / "config" / "segments.yaml",
        attributes_file=PROJECT_ROOT / "config" / "attributes.yaml",
    )
    with pytest.raises(RuleSetError) as caught:
        load_rules(settings, Renderer(settings))
    errors = caught.value.errors
    assert [(Path(e.file).name, e.line, e.col) for e in errors] == [(part, line, col)], errors


@pytest.mark.parametrize(
    ("source", "line", "column"),
    [
        ("x é ü {{ 1/0 }} done", 1, 7),  # a runtime error: the one {{ on its line
        ("first\n   {%- include 'nonexist.txt' %}", 2, 4),
        ("{{ a }} and {{ b }}", 1, 1),  # two: not certain, the first non-blank column
        ("  {{ a }} {# a comment #}", 1, 3),  # a comment is not code
        ("{{ a\n  + b }} x", 2, 3),  # opened on the line before: none opened here
        ("", 1, 1),
    ],
)
def test_an_error_placed_by_line_only_points_at_the_one_construct_there(
    source: str, line: int, column: int
) -> None:
    """Jinja gives a runtime error (``{{ 1/0 }}``, a missing include) only a line; on a
    line with one ``{{``/``{%`` the error is in it, so lint points there."""
    assert code_column(source, line) == column
