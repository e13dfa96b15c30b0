"""Campaign texts: YAML 1.2, strict validation, and every problem reported as file:line:col.

The core is given ``(name, text)`` sources; ``tests/worker/decide/test_campaign_files.py`` covers
reading them from disk."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import time, timedelta
from decimal import Decimal
from time import perf_counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triggers.campaign_text import parse_campaign
from triggers.campaigns import ComplementaryOffer
from triggers.compile_rules import compile_rule_set
from triggers.lint_issues import LintIssue, RuleSetError
from triggers.yaml_source import MAX_YAML_BYTES, MAX_YAML_NODES, plain_data, read_yaml

TEMPLATES = {"accessories", "accessories_bundle"}

GOOD = """\
# yaml-language-server: $schema=../../schema/campaign.schema.json
id: laptop-accessories
name: Accessories for new laptop owners
status: active
kind: cross_sell
priority: 80
trigger:
  event: purchase
  where:
    all:
      - {field: event.categories, op: contains_any, value: [laptops]}
      - {field: event.total, op: gte, value: 1500}
audience:
  all:
    - field: customer.orders_count
      op: gte
      value: 1
    - not: {field: customer.categories_bought, op: contains_any, value: [laptop-bags]}
offer:
  type: complementary
  categories: [laptop-bags, mice, docking-stations]
  max_items: 3
  exclude_owned: true
  unavailable: skip_item
schedule:
  delay: 2d
  window: {days: [mon, tue, wed, thu, fri], from: "09:00", to: "19:00"}
  timezone: customer
  expire_after: 7d
frequency: {once_per_customer: true, cooldown: 30d}
experiment:
  holdout_percent: 10
  variants:
    - {id: A, weight: 50, template: accessories, subject: "{{ customer.first_name }}, hi"}
    - {id: B, weight: 50, template: accessories_bundle}
"""


@dataclass(frozen=True)
class Spot:
    line: int
    col: int


def spot(text: str, needle: str, nth: int = 1) -> Spot:
    """1-based line and column of the ``nth`` occurrence of ``needle`` in ``text``."""
    index = -1
    for _ in range(nth):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return Spot(line, col)


def edit(old: str, new: str, text: str = GOOD) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once in the campaign"
    return text.replace(old, new)


def only_issue(text: str, name: str = "campaign.yaml") -> LintIssue:
    with pytest.raises(RuleSetError) as caught:
        compile_rule_set([(name, text)], template_names=TEMPLATES)
    assert len(caught.value.issues) == 1, caught.value
    issue = caught.value.issues[0]
    assert issue.file == name
    return issue


def assert_issue(issue: LintIssue, code: str, at: Spot, path: str | None = None) -> None:
    assert (issue.code, issue.line, issue.col) == (code, at.line, at.col), str(issue)
    if path is not None:
        assert issue.path == path


# --- good files ----------------------------------------------------------------------------


def test_the_design_example_loads() -> None:
    rules = compile_rule_set([("laptop.yaml", GOOD)], template_names=TEMPLATES)

    (compiled,) = rules.campaigns
    campaign = compiled.campaign
    assert compiled.id == "laptop-accessories"
    assert compiled.source == "laptop.yaml"
    assert campaign.priority == 80
    assert isinstance(campaign.offer, ComplementaryOffer)
    assert campaign.offer.categories == ["laptop-bags", "mice", "docking-stations"]
    assert campaign.schedule.delay == timedelta(days=2)
    assert campaign.schedule.expire_after == timedelta(days=7)
    assert campaign.schedule.window is not None
    assert (campaign.schedule.window.from_, campaign.schedule.window.to) == (time(9), time(19))
    assert campaign.frequency.cooldown == timedelta(days=30)
    assert [v.id for v in campaign.experiment.variants] == ["A", "B"]


def test_rule_set_lookups() -> None:
    sources = [("a.yaml", GOOD)]
    sources.append(
        (
            "b.yaml",
            edit(
                "id: laptop-accessories", "id: paused-one", edit("status: active", "status: paused")
            ),
        )
    )
    sources.append(
        (
            "c.yaml",
            edit(
                "id: laptop-accessories", "id: draft-one", edit("status: active", "status: draft")
            ),
        )
    )
    sources.append(
        (
            "d.yaml",
            edit(
                "id: laptop-accessories",
                "id: other-event",
                edit(
                    "  event: purchase\n  where:\n    all:\n"
                    "      - {field: event.categories, op: contains_any, value: [laptops]}\n"
                    "      - {field: event.total, op: gte, value: 1500}\n",
                    "  event: anniversary\n",
                ),
            ),
        )
    )

    rules = compile_rule_set(sources, template_names=TEMPLATES)

    assert [c.id for c in rules.active_for("purchase")] == ["laptop-accessories"]
    assert [c.id for c in rules.active_for("anniversary")] == ["other-event"]
    assert not rules.active_for("usage_change")
    by_id = rules.by_id("paused-one")
    assert by_id is not None and by_id.campaign.status == "paused"
    assert rules.by_id("nope") is None


def test_compiled_conditions_match_the_file() -> None:
    rules = compile_rule_set([("c.yaml", GOOD)], template_names=TEMPLATES)
    (compiled,) = rules.campaigns
    laptop = {"event.categories": frozenset({"laptops"}), "event.total": Decimal("1500.00")}
    assert compiled.where(laptop) is True
    assert compiled.where({**laptop, "event.total": Decimal("1499.99")}) is False
    owner = {"customer.orders_count": 1, "customer.categories_bought": frozenset({"laptops"})}
    assert compiled.audience(owner) is True
    bag_owner = {**owner, "customer.categories_bought": frozenset({"laptop-bags"})}
    assert compiled.audience(bag_owner) is False


def test_misspelt_top_level_key() -> None:
    text = edit("priority: 80", "priorty: 80")
    issue = only_issue(text)
    assert_issue(issue, "unknown-key", spot(text, "priorty"), "priorty")
    assert "did you mean 'priority'" in issue.message


def test_misspelt_nested_key() -> None:
    text = edit("  delay: 2d", "  delya: 2d")
    issue = only_issue(text)
    assert_issue(issue, "unknown-key", spot(text, "delya"), "schedule.delya")
    assert "did you mean 'delay'" in issue.message


def test_misspelt_key_inside_a_flow_leaf() -> None:
    text = edit(
        "{field: event.total, op: gte, value: 1500}", "{field: event.total, op: gte, valeu: 1500}"
    )
    with pytest.raises(RuleSetError) as caught:
        compile_rule_set([("campaign.yaml", text)], template_names=TEMPLATES)
    unknown = [issue for issue in caught.value.issues if issue.code == "unknown-key"]
    assert len(unknown) == 1
    assert_issue(unknown[0], "unknown-key", spot(text, "valeu"), "trigger.where.all[1].valeu")
    assert "did you mean 'value'" in unknown[0].message


def test_unknown_field_points_at_the_field_value() -> None:
    text = edit("field: event.total,", "field: event.totl,")
    issue = only_issue(text)
    assert_issue(issue, "unknown-field", spot(text, "event.totl"), "trigger.where.all[1].field")
    assert "did you mean 'event.total'" in issue.message


def test_field_of_another_event_type_is_unknown() -> None:
    text = edit("field: event.total, op: gte, value: 1500", "field: event.years, op: gte, value: 1")
    issue = only_issue(text)
    assert_issue(issue, "unknown-field", spot(text, "event.years"))


def test_wrong_operator_for_the_field_type_in_block_style() -> None:
    text = edit("      op: gte\n", "      op: contains\n")
    issue = only_issue(text)
    assert_issue(issue, "wrong-operator", spot(text, "contains\n"), "audience.all[0].op")
    assert "number field customer.orders_count" in issue.message


def test_unknown_operator() -> None:
    text = edit("op: contains_any, value: [laptops]", "op: contains_anny, value: [laptops]")
    issue = only_issue(text)
    assert_issue(issue, "unknown-operator", spot(text, "contains_anny"))
    assert "did you mean 'contains_any'" in issue.message


def test_quoted_number_is_a_bad_value_without_coercion() -> None:
    text = edit("op: gte, value: 1500}", 'op: gte, value: "1500"}')
    issue = only_issue(text)
    assert_issue(issue, "bad-value", spot(text, '"1500"'), "trigger.where.all[1].value")


def test_condition_inside_not() -> None:
    text = edit(
        "customer.categories_bought, op: contains_any",
        "customer.categories_bougt, op: contains_any",
    )
    issue = only_issue(text)
    assert_issue(issue, "unknown-field", spot(text, "customer.categories_bougt"))
    assert issue.path == "audience.all[1].not.field"


@pytest.mark.parametrize("bad", ["2 days", "2", "-1d", "1.5h", "2D"])
def test_bad_duration_text(bad: str) -> None:
    text = edit("  delay: 2d", f'  delay: "{bad}"')
    issue = only_issue(text)
    assert_issue(issue, "bad-duration", spot(text, f'"{bad}"'), "schedule.delay")
    assert "e.g. 90m" in issue.message


def test_bare_number_duration_is_a_bad_duration() -> None:
    # A marketer writing "7" for seven days gets the duration error code, like any
    # other unreadable duration (and like a bare number where a time of day belongs).
    text = edit("  expire_after: 7d", "  expire_after: 7")
    issue = only_issue(text)
    assert_issue(issue, "bad-duration", spot(text, "7\n"), "schedule.expire_after")


@pytest.mark.parametrize("bad", ['"9:00"', '"25:00"', '"09:60"', "9:00", '"9am"'])
def test_bad_time(bad: str) -> None:
    text = edit('from: "09:00"', f"from: {bad}")
    issue = only_issue(text)
    assert_issue(issue, "bad-time", spot(text, bad), "schedule.window.from")
    assert "HH:MM" in issue.message


def test_bare_number_time_is_a_bad_time() -> None:
    text = edit('to: "19:00"', "to: 1900")
    issue = only_issue(text)
    assert_issue(issue, "bad-time", spot(text, "1900"), "schedule.window.to")
    assert "quoted" in issue.message


def test_window_from_equal_to_is_rejected() -> None:
    text = edit('to: "19:00"', 'to: "09:00"')
    issue = only_issue(text)
    assert_issue(issue, "bad-value", spot(text, "window:"), "schedule.window")


def test_duplicate_key() -> None:
    text = edit("kind: cross_sell\n", "kind: cross_sell\nkind: upsell\n")
    issue = only_issue(text)
    assert_issue(issue, "duplicate-key", spot(text, "kind:", nth=2))
    assert "'kind'" in issue.message


def test_duplicate_key_inside_a_flow_mapping() -> None:
    text = edit("op: gte, value: 1500}", "op: gte, op: lt, value: 1500}")
    issue = only_issue(text)
    assert_issue(issue, "duplicate-key", spot(text, "op: lt"))
    assert "'op'" in issue.message


def test_duplicate_id_across_files_points_at_the_second_id() -> None:
    second_text = "# copied from a.yaml\n\n" + GOOD

    with pytest.raises(RuleSetError) as caught:
        compile_rule_set([("a.yaml", GOOD), ("b.yaml", second_text)], template_names=TEMPLATES)

    (issue,) = caught.value.issues
    assert issue.file == "b.yaml"
    assert_issue(issue, "duplicate-id", spot(second_text, "laptop-accessories"), "id")
    assert "also used by a.yaml" in issue.message


def test_unknown_template() -> None:
    text = edit("template: accessories_bundle}", "template: acessories_bundle}")
    issue = only_issue(text)
    assert_issue(
        issue,
        "unknown-template",
        spot(text, "acessories_bundle"),
        "experiment.variants[1].template",
    )
    assert "did you mean 'accessories_bundle'" in issue.message


def test_templates_are_not_checked_when_no_names_are_given() -> None:
    text = edit("template: accessories_bundle}", "template: anything}")
    rules = compile_rule_set([("c.yaml", text)])
    assert [c.id for c in rules.campaigns] == ["laptop-accessories"]


def test_bad_enum_value() -> None:
    text = edit("kind: cross_sell", "kind: crosssell")
    issue = only_issue(text)
    assert_issue(issue, "bad-value", spot(text, "crosssell"), "kind")


def test_bad_weekday() -> None:
    text = edit("days: [mon, tue,", "days: [mon, tues,")
    issue = only_issue(text)
    assert_issue(issue, "bad-value", spot(text, "tues"), "schedule.window.days[1]")


def test_bad_variant_value() -> None:
    text = edit("{id: A, weight: 50,", "{id: A, weight: -5,")
    issue = only_issue(text)
    assert_issue(issue, "bad-value", spot(text, "-5"), "experiment.variants[0].weight")


def test_missing_required_key() -> None:
    text = edit("kind: cross_sell\n", "")
    issue = only_issue(text)
    assert issue.code == "missing-key"
    assert issue.path == "kind"
    assert "'kind'" in issue.message


def test_misspelt_key_inside_the_offer() -> None:
    text = edit("  max_items: 3", "  max_itemz: 3")
    issue = only_issue(text)
    assert_issue(issue, "unknown-key", spot(text, "max_itemz"), "offer.max_itemz")
    assert "did you mean 'max_items'" in issue.message


def test_bad_value_inside_the_offer() -> None:
    text = edit("  max_items: 3", "  max_items: 30")
    issue = only_issue(text)
    assert_issue(issue, "bad-value", spot(text, "30"), "offer.max_items")


def test_unknown_offer_type() -> None:
    text = edit("  type: complementary", "  type: coupon")
    issue = only_issue(text)
    assert issue.code == "bad-value"
    assert "'complementary'" in issue.message


def test_yaml_syntax_error() -> None:
    text = edit("value: [laptops]}", "value: [laptops}")
    issue = only_issue(text)
    assert issue.code == "yaml-syntax"
    assert issue.line == spot(text, "[laptops}").line


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "", "42\n"])
def test_a_file_that_is_not_a_mapping(text: str) -> None:
    assert_issue(only_issue(text), "not-a-mapping", Spot(1, 1))


def test_issue_text_format() -> None:
    text = edit("priority: 80", "priorty: 80")
    issue = only_issue(text)
    at = spot(text, "priorty")
    assert str(issue) == (
        f"campaign.yaml:{at.line}:{at.col}: error[unknown-key] priorty: "
        "unknown key 'priorty'; did you mean 'priority'?"
    )


def test_several_problems_in_one_file_are_all_reported_in_line_order() -> None:
    text = edit("priority: 80", "priorty: 80", edit("  delay: 2d", "  delay: soon"))
    with pytest.raises(RuleSetError) as caught:
        compile_rule_set([("c.yaml", text)])
    assert [(i.code, i.line) for i in caught.value.issues] == [
        ("unknown-key", spot(text, "priorty").line),
        ("bad-duration", spot(text, "soon").line),
    ]
    assert str(caught.value).count("error[") == 2


# --- all or nothing -------------------------------------------------------------------------


def test_on_and_no_stay_strings_in_condition_values() -> None:
    text = edit(
        "      - {field: event.total, op: gte, value: 1500}",
        "      - {field: customer.loyalty_tier, op: in, value: [on, no, yes, off]}",
    )
    rules = compile_rule_set([("c.yaml", text)], template_names=TEMPLATES)
    (compiled,) = rules.campaigns
    laptops = frozenset({"laptops"})
    for tier in ("on", "no", "yes", "off"):
        assert compiled.where({"event.categories": laptops, "customer.loyalty_tier": tier})
    assert not compiled.where({"event.categories": laptops, "customer.loyalty_tier": True})
    assert not compiled.where({"event.categories": laptops, "customer.loyalty_tier": False})


def test_yes_is_not_a_boolean_for_a_yes_no_field() -> None:
    text = edit(
        "      - {field: event.total, op: gte, value: 1500}",
        "      - {field: customer.email_marketing, op: eq, value: yes}",
    )
    issue = only_issue(text)
    assert_issue(issue, "bad-value", spot(text, "yes}"), "trigger.where.all[1].value")


def test_unquoted_time_of_day_is_a_string_not_sexagesimal() -> None:
    # YAML 1.1 would read 22:00 as 1320; YAML 1.2 keeps the text, which is a valid time.
    text = edit(
        'window: {days: [mon, tue, wed, thu, fri], from: "09:00", to: "19:00"}',
        "window: {days: [mon, tue, wed, thu, fri], from: 22:00, to: 23:30}",
    )
    rules = compile_rule_set([("c.yaml", text)], template_names=TEMPLATES)
    window = rules.campaigns[0].campaign.schedule.window
    assert window is not None
    assert (window.from_, window.to) == (time(22, 0), time(23, 30))


def test_unquoted_single_digit_hour_errors_as_bad_time_not_as_a_number() -> None:
    text = edit('from: "09:00"', "from: 9:30")
    issue = only_issue(text)
    assert_issue(issue, "bad-time", spot(text, "9:30"))
    assert "'9:30'" in issue.message


def test_yaml_float_condition_value_is_an_exact_decimal() -> None:
    text = edit("op: gte, value: 1500}", "op: gte, value: 1500.10}")
    rules = compile_rule_set([("c.yaml", text)], template_names=TEMPLATES)
    where = rules.campaigns[0].where
    laptops = frozenset({"laptops"})
    assert where({"event.categories": laptops, "event.total": Decimal("1500.10")})
    assert not where({"event.categories": laptops, "event.total": Decimal("1500.09")})


def test_parse_campaign_returns_issues_instead_of_raising() -> None:
    campaign, _document, issues = parse_campaign(edit("priority: 80", "priority: high"), "x", {})
    assert campaign is None
    assert [(i.file, i.code) for i in issues] == [("x", "bad-value")]

    campaign, _document, issues = parse_campaign(GOOD, "x", {})
    assert campaign is not None and issues == []


def test_yaml_1_1_boolean_word_is_not_a_boolean() -> None:
    # YAML 1.2 reads `no` as text; it must not be coerced to false behind the marketer's back.
    text = edit("once_per_customer: true", "once_per_customer: no")
    issue = only_issue(text)
    assert_issue(issue, "bad-value", spot(text, "no, cooldown"), "frequency.once_per_customer")


# --- limits: file size, alias expansion ("billion laughs"), depth --------------------------


def count_values(data: object) -> int:
    """Brute force: values in plain data, keys included (every alias copied out)."""
    if isinstance(data, dict):
        return 1 + sum(1 + count_values(value) for value in data.values())
    if isinstance(data, list):
        return 1 + sum(count_values(item) for item in data)
    return 1


# A bomb: its text, its size once every alias is expanded (the whole document), and the
# nodes that multiply, in the order they are completed: (expanded size, line, column).
Bomb = tuple[str, int, list[tuple[int, int, int]]]


def _document(lines: list[str], sizes: list[int]) -> int:
    """Expanded size of a document of ``name: value`` lines: the root, each key and value."""
    return 1 + sum(1 + size for size in sizes)


def list_bomb(fanout: int, levels: int) -> Bomb:
    """``l0: &l0 [lol, lol …]``, ``l1: &l1 [*l0, *l0 …]`` …, the classic billion laughs."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * fanout)}]"]
    sizes = [1 + fanout]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * fanout)}]")
        sizes.append(1 + fanout * sizes[-1])
    nodes = [(size, n + 1, 5) for n, size in enumerate(sizes)]  # at "&lN"
    return "\n".join(lines) + "\n", _document(lines, sizes), nodes


def map_bomb(fanout: int, levels: int) -> Bomb:
    """Nested mappings: ``m1: &m1 {k0: *m0, k1: *m0 …}``."""
    lines = ["m0: &m0 {k: lol}"]
    sizes = [3]
    for level in range(1, levels):
        pairs = ", ".join(f"k{n}: *m{level - 1}" for n in range(fanout))
        lines.append(f"m{level}: &m{level} {{{pairs}}}")
        sizes.append(1 + fanout * (1 + sizes[-1]))
    nodes = [(size, n + 1, 5) for n, size in enumerate(sizes)]
    return "\n".join(lines) + "\n", _document(lines, sizes), nodes


def merge_bomb(fanout: int, levels: int) -> Bomb:
    """Merge keys: ``a1: &a1 {<<: *a0, x1: [*a0, *a0 …]}``."""
    lines = ["a0: &a0 {k: lol}"]
    sizes = [3]
    nodes = [(3, 1, 5)]
    for level in range(1, levels):
        items = ", ".join([f"*a{level - 1}"] * fanout)
        line = f"a{level}: &a{level} {{<<: *a{level - 1}, x{level}: [{items}]}}"
        lines.append(line)
        listed = 1 + fanout * sizes[-1]
        # the mapping: itself, the merge key and what it merges, the list's key and the list
        sizes.append(1 + (1 + sizes[-1]) + (1 + listed))
        nodes += [(listed, level + 1, line.index("[") + 1), (sizes[-1], level + 1, 5)]
    return "\n".join(lines) + "\n", _document(lines, sizes), nodes


def measured(read: Callable[[], object]) -> tuple[object, float, int]:
    """Result, seconds and peak traced memory (bytes) of ``read()``."""
    tracemalloc.start()
    started = perf_counter()
    try:
        result = read()
    finally:
        elapsed = perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, elapsed, peak


@pytest.mark.parametrize("bomb", [list_bomb, map_bomb, merge_bomb])
def test_alias_bombs_are_an_issue_in_bounded_time_and_memory(
    bomb: Callable[[int, int], Bomb],
) -> None:
    text, total, nodes = bomb(9, 10)  # billions of values once expanded, well under 1 KiB
    assert len(text) < 1024 and total > 10**9

    def lint() -> object:
        with pytest.raises(RuleSetError) as caught:
            compile_rule_set([("bomb.yaml", text)], template_names=TEMPLATES)
        return list(caught.value.issues)

    issues, seconds, peak = measured(lint)
    assert isinstance(issues, list) and len(issues) == 1
    # The smallest node over the limit: where the file multiplies once too often.
    _size, line, col = next(node for node in nodes if node[0] > MAX_YAML_NODES)
    assert_issue(issues[0], "yaml-aliases", Spot(line, col))
    assert seconds < 2, seconds
    assert peak < 32 * 2**20, peak


def test_an_alias_inside_the_node_it_names_is_an_issue() -> None:
    issue = only_issue("a: &loop [x, *loop]\n")
    assert_issue(issue, "yaml-aliases", Spot(1, 4))
    assert "loop" in issue.message


@settings(max_examples=40, deadline=None, database=None)
@given(fanout=st.integers(1, 12), levels=st.integers(1, 8))
def test_aliases_are_accepted_exactly_up_to_the_expansion_limit(fanout: int, levels: int) -> None:
    text, total, _nodes = list_bomb(fanout, levels)
    document, issues = read_yaml(text, "f.yaml", "a file")
    if total > MAX_YAML_NODES:
        assert [issue.code for issue in issues] == ["yaml-aliases"]
    else:
        assert issues == []
        assert count_values(plain_data(document)) == total


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 5000 + "]" * 5000 + "\n",  # flow, one line
        "a: " + "{b: " * 200 + "c" + "}" * 200 + "\n",
        "a:\n" + "".join(" " * n + "- \n" for n in range(1, 400)),  # block sequences
    ],
    ids=["flow-lists", "flow-maps", "block"],
)
def test_nesting_deeper_than_the_limit_is_an_issue(text: str) -> None:

    def lint() -> object:
        with pytest.raises(RuleSetError) as caught:
            compile_rule_set([("deep.yaml", text)], template_names=TEMPLATES)
        return list(caught.value.issues)

    issues, seconds, _peak = measured(lint)
    assert isinstance(issues, list) and [i.code for i in issues] == ["yaml-too-deep"]
    assert seconds < 2, seconds


def test_a_text_over_the_size_limit_is_an_issue_too() -> None:
    _document, issues = read_yaml("a: b\n" * (MAX_YAML_BYTES // 5 + 1), "t.yaml", "a file")
    assert [issue.code for issue in issues] == ["yaml-too-large"]


@pytest.mark.parametrize(
    ("before", "after", "path", "found"),
    [
        ("name: Accessories for", 'name: "Bad\\u202e Accessories for', "name", "U+202E"),
        ("name: Accessories for", 'name: "Tab\\tAccessories for', "name", "U+0009"),
        ("name: Accessories for", 'name: "NUL\\0Accessories for', "name", "U+0000"),
        ("name: Accessories for", 'name: "Bell\\aAccessories for', "name", "U+0007"),
        ("name: Accessories for", 'name: "Line\\u2028Accessories for', "name", "U+2028"),
        (
            'subject: "{{ customer.first_name }}, hi"',
            'subject: "{{ customer.first_name }}\\u2066, hi"',
            "experiment.variants[0].subject",
            "U+2066",
        ),
        (
            'subject: "{{ customer.first_name }}, hi"',
            'subject: "{{ customer.first_name }}\\u0085, hi"',
            "experiment.variants[0].subject",
            "U+0085",
        ),
    ],
)
def test_a_name_or_subject_with_a_control_or_bidi_character_is_a_bad_value(
    before: str, after: str, path: str, found: str
) -> None:
    """A campaign's name and subjects become headers and report labels: one line, no
    control character and no bidirectional override (the rule event names follow)."""
    text = edit(before, after)
    if after.startswith('name: "'):
        text = text.replace("new laptop owners\n", 'new laptop owners"\n', 1)
    issue = only_issue(text)
    assert (issue.code, issue.path) == ("bad-value", path)
    assert found in issue.message


@pytest.mark.parametrize("expire_after", ["0s", "0m", "0"])
def test_an_email_that_expires_when_it_is_due_is_a_bad_value(expire_after: str) -> None:
    text = edit("  expire_after: 7d", f"  expire_after: {expire_after}")
    issue = only_issue(text)
    where = spot(text, f"expire_after: {expire_after}")
    assert_issue(issue, "bad-value", Spot(where.line, where.col + 14), "schedule.expire_after")
    assert "never goes out" in issue.message


def _with_coupon(coupon: str) -> str:
    """The campaign with ``offer.coupon: <coupon>`` (flow YAML)."""
    return edit("  unavailable: skip_item\n", f"  unavailable: skip_item\n  coupon: {coupon}\n")


@pytest.mark.parametrize(
    ("coupon", "path", "message"),
    [
        ("{expires_after: 0s}", "offer.coupon.expires_after", "void"),
        ("{expires_after: '0'}", "offer.coupon.expires_after", "void"),
        ("{discount_percent: 0}", "offer.coupon.discount_percent", "greater than 0"),
        ("{discount_percent: 101}", "offer.coupon.discount_percent", "less than or equal to 100"),
        ("{discount_percent: -5}", "offer.coupon.discount_percent", "greater than 0"),
    ],
)
def test_a_coupon_no_customer_can_use_is_a_bad_value(coupon: str, path: str, message: str) -> None:
    """A coupon that expires as the email is sent, or takes nothing off, is a typo: it
    is refused at its line like the schedule's ``expire_after: 0s``."""
    text = _with_coupon(coupon)
    issue = only_issue(text)
    assert (issue.code, issue.path) == ("bad-value", path)
    assert message in issue.message
    assert issue.line == spot(text, "coupon:").line


@pytest.mark.parametrize("coupon", ["{}", "{discount_percent: 0.5, expires_after: 1h}"])
def test_a_usable_coupon_passes(coupon: str) -> None:
    text = _with_coupon(coupon)
    rules = compile_rule_set([("campaign.yaml", text)], template_names=TEMPLATES)
    assert [issue.level for issue in rules.warnings if issue.level == "error"] == []


@pytest.mark.parametrize(
    ("before", "after", "path"),
    [
        ("priority: 80", "priority: .inf", "priority"),
        ("priority: 80", "priority: -.inf", "priority"),
        ("priority: 80", "priority: 1e400", "priority"),
        ("priority: 80", "priority: .nan", "priority"),
        ("  max_items: 3", "  max_items: .inf", "offer.max_items"),
        ("{id: A, weight: 50,", "{id: A, weight: .inf,", "experiment.variants[0].weight"),
    ],
)
def test_an_infinite_whole_number_is_a_bad_value_not_a_traceback(
    before: str, after: str, path: str
) -> None:
    """``int(Decimal('Infinity'))`` raised OverflowError out of lint, status and a reload."""
    issue = only_issue(edit(before, after))
    assert (issue.code, issue.path) == ("bad-value", path)
    assert "finite whole number" in issue.message


@pytest.mark.parametrize(
    ("before", "after", "path", "message"),
    [
        ("name: Accessories for new laptop owners", 'name: "   "', "name", "must not be blank"),
        (
            "frequency: {once_per_customer: true, cooldown: 30d}",
            "frequency: {once_per_customer: true, cooldown: 30d}\nattribution_window: 0s",
            "attribution_window",
            "must be longer than 0",
        ),
    ],
)
def test_a_blank_name_and_a_zero_attribution_window_say_so_plainly(
    before: str, after: str, path: str, message: str
) -> None:
    issue = only_issue(edit(before, after))
    assert (issue.code, issue.path) == ("bad-value", path)
    assert message in issue.message and "datetime" not in issue.message


@pytest.mark.parametrize(
    ("written", "warned"),
    [("100", True), ("100.0", True), ("99.99", False), ("10.5", False), ("0", False)],
)
def test_a_holdout_of_everyone_is_a_warning_at_its_line(written: str, warned: bool) -> None:
    text = GOOD.replace("holdout_percent: 10\n", f"holdout_percent: {written}\n")
    assert text != GOOD
    rules = compile_rule_set([("c.yaml", text)], template_names=TEMPLATES)  # still usable
    line = text.splitlines().index(f"  holdout_percent: {written}") + 1
    expected = [("c.yaml", line, 20, "warning", "everyone-held-out", "experiment.holdout_percent")]
    found = [(i.file, i.line, i.col, i.level, i.code, i.path) for i in rules.warnings]
    assert found == (expected if warned else [])


def test_a_merged_in_holdout_is_reported_at_the_mapping_that_merges_it() -> None:
    """``experiment: {<<: {holdout_percent: 100}, …}`` crashed the lint (KeyError in
    ``locate``: a merged key has no position of its own)."""
    text = GOOD.replace("  holdout_percent: 10\n", "  <<: {holdout_percent: 100}\n")
    assert text != GOOD
    rules = compile_rule_set([("c.yaml", text)], template_names=TEMPLATES)
    line = text.splitlines().index("experiment:") + 1
    assert [(i.code, i.line) for i in rules.warnings] == [("everyone-held-out", line)]
