"""Attributes and segments parsed from text, and campaigns compiled with them."""

from __future__ import annotations

import pytest

from tests.triggers.test_campaign_text import GOOD, TEMPLATES, edit, spot
from triggers.compile_rules import compile_rule_set
from triggers.definitions import parse_definitions
from triggers.fields import FieldType
from triggers.lint_issues import RuleSetError

ATTRIBUTES = "loyalty_tier: string\nnewsletter_opens_30d: number\n"
SEGMENTS = """\
engaged:
  field: customer.attributes.newsletter_opens_30d
  op: gte
  value: 3
loyal:
  any:
    - {field: customer.attributes.loyalty_tier, op: in, value: [silver, gold]}
    - {segment: engaged}
"""


def test_segments_may_test_the_declared_attributes_and_other_segments() -> None:
    definitions = parse_definitions(("attributes.yaml", ATTRIBUTES), ("segments.yaml", SEGMENTS))
    assert dict(definitions.attributes) == {
        "loyalty_tier": FieldType.STRING,
        "newsletter_opens_30d": FieldType.NUMBER,
    }
    assert list(definitions.segments) == ["engaged", "loyal"]

    text = edit(
        "      - {field: event.total, op: gte, value: 1500}",
        "      - {segment: loyal}",
    )
    rules = compile_rule_set([("c.yaml", text)], definitions, TEMPLATES)
    (compiled,) = rules.campaigns
    laptops = frozenset({"laptops"})
    assert compiled.where(
        {"event.categories": laptops, "customer.attributes.newsletter_opens_30d": 5}
    )
    assert not compiled.where(
        {"event.categories": laptops, "customer.attributes.newsletter_opens_30d": 1}
    )


def test_absent_and_empty_definitions_are_none() -> None:
    assert parse_definitions(None, None) == parse_definitions(("a.yaml", "\n"), ("s.yaml", ""))
    assert not parse_definitions(None, None).segments


def test_issues_of_both_texts_come_together_named_by_their_names() -> None:
    segments = SEGMENTS.replace("newsletter_opens_30d\n", "newsletter_opens\n", 1)
    with pytest.raises(RuleSetError) as caught:
        parse_definitions(("attrs.yaml", ATTRIBUTES + "b2b: yes-no\n"), ("segs.yaml", segments))
    found = [(i.file, i.line, i.code) for i in caught.value.issues]
    assert found == [
        ("attrs.yaml", 3, "bad-value"),
        ("segs.yaml", spot(segments, "customer.attributes.newsletter_opens").line, "unknown-field"),
    ]


def test_a_segment_cycle_is_reported_at_its_first_member() -> None:
    text = "a:\n  segment: b\nb:\n  segment: a\n"
    with pytest.raises(RuleSetError) as caught:
        parse_definitions(None, ("segments.yaml", text))
    (issue,) = caught.value.issues
    assert (issue.file, issue.line, issue.col, issue.code) == (
        "segments.yaml",
        1,
        1,
        "segment-cycle",
    )
    assert "a -> b -> a" in issue.message


def test_a_campaign_using_an_unknown_segment_names_its_source() -> None:
    text = edit("      - {field: event.total, op: gte, value: 1500}", "      - {segment: loyl}")
    definitions = parse_definitions(("a.yaml", ATTRIBUTES), ("s.yaml", SEGMENTS))
    with pytest.raises(RuleSetError) as caught:
        compile_rule_set([("c.yaml", text)], definitions)
    (issue,) = caught.value.issues
    assert (issue.file, issue.line) == ("c.yaml", spot(text, "loyl").line)
    assert "did you mean 'loyal'" in issue.message


def test_good_text_without_definitions_compiles() -> None:
    assert [c.id for c in compile_rule_set([("c.yaml", GOOD)]).campaigns] == ["laptop-accessories"]
