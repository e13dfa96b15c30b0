"""Condition trees: every operator per field type, no coercion, missing values, explain, lint."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from triggers.conditions import (
    AllOf,
    AnyOf,
    Condition,
    Leaf,
    NotOf,
    Problem,
    SegmentRef,
    check_condition,
    compile_condition,
    compile_stages,
    explain_condition,
)
from triggers.fields import ALL_OPERATORS, BUILTIN_FIELDS, OPERATORS, FieldType, fields_for

CONDITION: TypeAdapter[Any] = TypeAdapter(Condition)

NUMBER = "event.total"
TEXT = "customer.loyalty_tier"
TEXT_SET = "event.categories"
YES_NO = "customer.email_marketing"


def tree(raw: object) -> Condition:
    return CONDITION.validate_python(raw)  # type: ignore[no-any-return]


def holds(raw: dict[str, Any], facts: dict[str, object]) -> bool:
    return compile_condition(tree(raw), {})(facts)


def leaf(field: str, op: str, value: object) -> dict[str, Any]:
    return {"field": field, "op": op, "value": value}


def problems(raw: dict[str, Any], event_type: str = "purchase") -> list[Problem]:
    return list(check_condition(tree(raw), fields_for(event_type), ["vip"], ("audience",)))


# --- operators, per type ------------------------------------------------------------------

# (field, op, value, actual fact, expected result)
OPERATOR_CASES: list[tuple[str, str, object, object, bool]] = [
    # number
    (NUMBER, "eq", 1500, Decimal("1500.00"), True),
    (NUMBER, "eq", 1500, Decimal("1499.99"), False),
    (NUMBER, "ne", 1500, Decimal("1499.99"), True),
    (NUMBER, "ne", 1500, Decimal("1500"), False),
    (NUMBER, "gt", 1500, Decimal("1500.01"), True),
    (NUMBER, "gt", 1500, Decimal("1500"), False),
    (NUMBER, "gte", 1500, Decimal("1500"), True),
    (NUMBER, "gte", 1500, Decimal("1499.99"), False),
    (NUMBER, "lt", 10, 9, True),
    (NUMBER, "lt", 10, 10, False),
    (NUMBER, "lte", 10, 10, True),
    (NUMBER, "lte", 10, Decimal("10.01"), False),
    (NUMBER, "lte", Decimal("-50"), Decimal("-75.00"), True),
    (NUMBER, "gte", Decimal("0.1"), 0.1, True),
    (NUMBER, "in", [1, 2, 3], 2, True),
    (NUMBER, "in", [1, 2, 3], Decimal("2.00"), True),
    (NUMBER, "in", [1, 2, 3], 4, False),
    (NUMBER, "not_in", [1, 2], 3, True),
    (NUMBER, "not_in", [1, 2], 1, False),
    (NUMBER, "exists", True, 0, True),
    (NUMBER, "exists", False, 0, False),
    # text
    (TEXT, "eq", "gold", "gold", True),
    (TEXT, "eq", "gold", "Gold", False),
    (TEXT, "ne", "gold", "silver", True),
    (TEXT, "ne", "gold", "gold", False),
    (TEXT, "in", ["gold", "silver"], "silver", True),
    (TEXT, "in", ["gold", "silver"], "bronze", False),
    (TEXT, "not_in", ["gold"], "silver", True),
    (TEXT, "not_in", ["gold"], "gold", False),
    (TEXT, "starts_with", "go", "gold", True),
    (TEXT, "starts_with", "go", "silver", False),
    (TEXT, "exists", True, "", True),
    (TEXT, "exists", False, "gold", False),
    # set of texts
    (TEXT_SET, "contains", "laptops", frozenset({"laptops", "mice"}), True),
    (TEXT_SET, "contains", "laptops", frozenset({"mice"}), False),
    (TEXT_SET, "contains_any", ["laptops", "phones"], frozenset({"phones", "mice"}), True),
    (TEXT_SET, "contains_any", ["laptops", "phones"], frozenset({"mice"}), False),
    (TEXT_SET, "contains_all", ["laptops", "mice"], frozenset({"laptops", "mice", "bags"}), True),
    (TEXT_SET, "contains_all", ["laptops", "mice"], frozenset({"laptops"}), False),
    (TEXT_SET, "is_empty", True, frozenset(), True),
    (TEXT_SET, "is_empty", True, frozenset({"mice"}), False),
    (TEXT_SET, "is_empty", False, frozenset({"mice"}), True),
    (TEXT_SET, "is_empty", False, frozenset(), False),
    (TEXT_SET, "exists", True, frozenset(), True),
    # yes/no
    (YES_NO, "eq", True, True, True),
    (YES_NO, "eq", True, False, False),
    (YES_NO, "eq", False, False, True),
    (YES_NO, "eq", False, True, False),
    (YES_NO, "exists", True, False, True),
]


@pytest.mark.parametrize(("field", "op", "value", "actual", "expected"), OPERATOR_CASES)
def test_operator(field: str, op: str, value: object, actual: object, expected: bool) -> None:
    raw = leaf(field, op, value)
    assert problems(raw) == [], "the case itself must be a valid condition"
    assert holds(raw, {field: actual}) is expected


def test_every_operator_of_every_type_is_exercised() -> None:
    types = {NUMBER: FieldType.NUMBER, TEXT: FieldType.STRING}
    types |= {TEXT_SET: FieldType.STRING_SET, YES_NO: FieldType.BOOLEAN}
    covered = {(types[field], op) for field, op, *_ in OPERATOR_CASES}
    wanted = {(kind, op) for kind, ops in OPERATORS.items() for op in ops}
    assert covered == wanted
    for field, kind in types.items():
        assert BUILTIN_FIELDS[field].type is kind


# Every valid (field, op, value) above except "exists: false", which asks for absence.
PRESENCE_CASES = sorted(
    {(f, op, repr(v)): (f, op, v) for f, op, v, *_ in OPERATOR_CASES}.values(),
    key=repr,
)


@pytest.mark.parametrize(
    ("field", "op", "value"),
    [case for case in PRESENCE_CASES if not (case[1] == "exists" and case[2] is False)],
)
@pytest.mark.parametrize("missing", ["absent", "none"])
def test_a_missing_value_makes_a_leaf_false(
    field: str, op: str, value: object, missing: str
) -> None:
    facts: dict[str, object] = {} if missing == "absent" else {field: None}
    assert holds(leaf(field, op, value), facts) is False


@pytest.mark.parametrize("field", [NUMBER, TEXT, TEXT_SET, YES_NO])
def test_exists_false_is_true_only_for_a_missing_value(field: str) -> None:
    assert holds(leaf(field, "exists", False), {}) is True
    assert holds(leaf(field, "exists", False), {field: None}) is True


def test_missing_value_under_not_is_true() -> None:
    # A leaf on a missing value is false, so its negation holds.
    raw = {"not": leaf("event.change_pct", "lte", -50)}
    assert holds(raw, {"event.change_pct": None}) is True
    assert holds(raw, {"event.change_pct": Decimal("-75")}) is False


# --- no type coercion ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "op", "value", "actual"),
    [
        (TEXT, "eq", "5", 5),
        (TEXT, "in", ["5", "6"], 5),
        (TEXT, "ne", "5", 5),
        (TEXT, "starts_with", "5", 55),
        (NUMBER, "eq", 5, "5"),
        (NUMBER, "gte", 5, "10"),
        (NUMBER, "in", [5], "5"),
        (NUMBER, "ne", 5, "6"),
        (NUMBER, "eq", 1, True),
        (NUMBER, "gte", 0, True),
        (NUMBER, "eq", 0, False),
        (YES_NO, "eq", True, 1),
        (YES_NO, "eq", False, 0),
        (YES_NO, "eq", True, "true"),
        (TEXT_SET, "contains", "laptops", "laptops"),
        (TEXT_SET, "contains_any", ["laptops"], ["laptops"]),
        (TEXT_SET, "is_empty", True, ""),
    ],
)
def test_values_are_never_coerced(field: str, op: str, value: object, actual: object) -> None:
    assert holds(leaf(field, op, value), {field: actual}) is False


# --- all / any / not / segments -------------------------------------------------------------

BIG = leaf(NUMBER, "gte", 1000)
LAPTOP = leaf(TEXT_SET, "contains", "laptops")
GOLD = leaf(TEXT, "eq", "gold")


@pytest.mark.parametrize(
    ("total", "categories", "tier"),
    [
        (total, categories, tier)
        for total in (Decimal(10), Decimal(5000))
        for categories in (frozenset({"laptops"}), frozenset({"mice"}))
        for tier in ("gold", "silver")
    ],
)
def test_nested_all_any_not_follow_boolean_logic(
    total: Decimal, categories: frozenset[str], tier: str
) -> None:
    facts: dict[str, object] = {NUMBER: total, TEXT_SET: categories, TEXT: tier}
    big, laptop, gold = total >= 1000, "laptops" in categories, tier == "gold"

    assert holds({"all": [BIG, LAPTOP]}, facts) is (big and laptop)
    assert holds({"any": [BIG, LAPTOP]}, facts) is (big or laptop)
    assert holds({"not": GOLD}, facts) is (not gold)
    raw = {"all": [{"any": [BIG, GOLD]}, {"not": {"all": [LAPTOP, {"not": GOLD}]}}]}
    assert holds(raw, facts) is ((big or gold) and not (laptop and not gold))


def test_not_not_is_identity() -> None:
    facts: dict[str, object] = {TEXT: "gold"}
    assert holds({"not": {"not": GOLD}}, facts) is holds(GOLD, facts) is True


def test_tree_nodes_are_recognised_by_their_key() -> None:
    parsed = tree({"all": [{"any": [GOLD]}, {"not": BIG}, {"segment": "vip"}, LAPTOP]})
    assert isinstance(parsed, AllOf)
    kinds = [type(child) for child in parsed.all]
    assert kinds == [AnyOf, NotOf, SegmentRef, Leaf]


@pytest.mark.parametrize("raw", [{"all": []}, {"any": []}, "laptops", [GOLD], {"not": None}])
def test_malformed_trees_are_rejected(raw: object) -> None:
    with pytest.raises(ValidationError):
        tree(raw)


def test_a_leaf_with_an_unknown_key_is_rejected() -> None:
    with pytest.raises(ValidationError):
        tree({"field": TEXT, "op": "eq", "value": "gold", "vaule": "x"})


def test_segments_are_inlined_by_name() -> None:
    segments = {"vip": tree({"any": [GOLD, BIG]})}
    predicate = compile_condition(tree({"all": [{"segment": "vip"}, LAPTOP]}), segments)
    laptops = frozenset({"laptops"})
    assert predicate({TEXT: "gold", TEXT_SET: laptops}) is True
    assert predicate({TEXT: "silver", NUMBER: Decimal(5), TEXT_SET: laptops}) is False
    assert predicate({TEXT: "gold", TEXT_SET: frozenset({"mice"})}) is False


def test_stages_report_the_first_false_condition_or_none() -> None:
    segments = {"vip": tree({"any": [GOLD, BIG]})}
    stages = compile_stages(
        [(tree(LAPTOP), "trigger"), (None, "never"), (tree({"segment": "vip"}), "audience")],
        segments,
    )
    laptops, mice = frozenset({"laptops"}), frozenset({"mice"})
    assert stages({TEXT_SET: mice, TEXT: "gold"}) == "trigger"
    assert stages({TEXT_SET: laptops, TEXT: "silver", NUMBER: Decimal(5)}) == "audience"
    assert stages({TEXT_SET: laptops, TEXT: "gold"}) is None
    assert compile_stages([], {})({}) is None


@pytest.mark.parametrize(
    "raw",
    [
        BIG,
        {"all": [BIG, LAPTOP]},
        {"any": [BIG, GOLD]},
        {"not": {"all": [LAPTOP, {"not": GOLD}]}},
        {"all": [{"any": [BIG, GOLD]}, {"not": {"all": [LAPTOP, {"not": GOLD}]}}]},
    ],
)
def test_a_stage_agrees_with_the_compiled_predicate(raw: dict[str, Any]) -> None:
    condition = tree(raw)
    predicate = compile_condition(condition, {})
    stage = compile_stages([(condition, "miss")], {})
    for total in (None, Decimal(10), Decimal(5000)):
        for categories in (None, frozenset({"laptops"}), frozenset({"mice"})):
            for tier in (None, "gold", "silver"):
                facts = {NUMBER: total, TEXT_SET: categories, TEXT: tier}
                assert (stage(facts) is None) is predicate(facts)


# --- explain ---------------------------------------------------------------------------------


def test_explain_reports_every_leaf_with_its_actual_value_without_short_circuit() -> None:
    raw = {"any": [GOLD, {"all": [BIG, {"not": LAPTOP}]}, leaf("customer.orders_count", "gte", 1)]}
    facts: dict[str, object] = {
        TEXT: "gold",
        NUMBER: Decimal("250.00"),
        TEXT_SET: frozenset({"mice", "laptops"}),
    }

    result, outcomes = explain_condition(tree(raw), facts, {}, "trigger.where")

    assert result is holds(raw, facts) is True
    assert [(o.path, o.field, o.op, o.expected, o.actual, o.result) for o in outcomes] == [
        ("trigger.where.any[0]", TEXT, "eq", "gold", "gold", True),
        ("trigger.where.any[1].all[0]", NUMBER, "gte", 1000, Decimal("250.00"), False),
        (
            "trigger.where.any[1].all[1].not",
            TEXT_SET,
            "contains",
            "laptops",
            ["laptops", "mice"],
            True,
        ),
        ("trigger.where.any[2]", "customer.orders_count", "gte", 1, None, False),
    ]


def test_explain_agrees_with_the_compiled_predicate() -> None:
    raw = {"all": [{"not": GOLD}, {"any": [BIG, LAPTOP]}]}
    cases: list[dict[str, object]] = [
        {TEXT: "gold", NUMBER: Decimal(2000)},
        {TEXT: "silver", NUMBER: Decimal(2000)},
        {TEXT: "silver", TEXT_SET: frozenset({"mice"})},
        {},
    ]
    for facts in cases:
        result, outcomes = explain_condition(tree(raw), facts, {}, "audience")
        assert result is holds(raw, facts)
        assert len(outcomes) == 3


def test_explain_walks_into_segments() -> None:
    segments = {"vip": tree(GOLD)}
    result, outcomes = explain_condition(tree({"segment": "vip"}), {TEXT: "gold"}, segments, "a")
    assert result is True
    assert [(o.path, o.actual) for o in outcomes] == [("a<segment vip>", "gold")]


# --- check_condition -------------------------------------------------------------------------


def test_unknown_field_suggests_the_closest_one() -> None:
    found = problems(leaf("event.totl", "gte", 1))
    assert [(p.code, p.path) for p in found] == [("unknown-field", ("audience", "field"))]
    assert "'event.totl'" in found[0].message
    assert "did you mean 'event.total'" in found[0].message


def test_unknown_field_far_from_any_has_no_suggestion() -> None:
    (found,) = problems(leaf("zzz", "eq", "x"))
    assert found.code == "unknown-field"
    assert "did you mean" not in found.message


def test_fields_are_scoped_to_the_trigger_event_type() -> None:
    assert problems(leaf("event.years", "gte", 1), "anniversary") == []
    assert [p.code for p in problems(leaf("event.years", "gte", 1), "purchase")] == [
        "unknown-field"
    ]
    assert [p.code for p in problems(leaf("event.total", "gte", 1), "usage_change")] == [
        "unknown-field"
    ]
    for event_type in ("purchase", "anniversary", "usage_change"):
        assert problems(leaf("customer.orders_count", "gte", 1), event_type) == []
        assert problems(leaf("event.type", "eq", event_type), event_type) == []


@pytest.mark.parametrize(
    ("field", "op"),
    [
        (NUMBER, "contains"),
        (NUMBER, "starts_with"),
        (TEXT, "gt"),
        (TEXT, "contains_any"),
        (TEXT_SET, "eq"),
        (TEXT_SET, "in"),
        (YES_NO, "ne"),
        (YES_NO, "gte"),
    ],
)
def test_an_operator_of_another_type_is_wrong_operator(field: str, op: str) -> None:
    assert op in ALL_OPERATORS
    (found,) = problems(leaf(field, op, "x"))
    assert found.code == "wrong-operator"
    assert found.path == ("audience", "op")
    assert str(BUILTIN_FIELDS[field].type) in found.message


def test_an_unknown_operator_suggests_one_valid_for_the_field() -> None:
    (found,) = problems(leaf(NUMBER, "gtee", 1))
    assert found.code == "unknown-operator"
    assert "did you mean 'gte'" in found.message

    (found,) = problems(leaf(TEXT_SET, "contain", "x"))
    assert found.code == "unknown-operator"
    assert "did you mean 'contains'" in found.message


@pytest.mark.parametrize(
    ("field", "op", "value"),
    [
        (NUMBER, "gte", "1500"),
        (NUMBER, "gte", True),
        (NUMBER, "eq", None),
        (NUMBER, "in", 1),
        (NUMBER, "in", []),
        (NUMBER, "in", [1, "2"]),
        (NUMBER, "in", [1, False]),
        (TEXT, "eq", 5),
        (TEXT, "eq", True),
        (TEXT, "in", "gold"),
        (TEXT, "in", []),
        (TEXT, "not_in", ["gold", 1]),
        (TEXT, "starts_with", ["go"]),
        (TEXT_SET, "contains", ["laptops"]),
        (TEXT_SET, "contains_any", "laptops"),
        (TEXT_SET, "contains_all", []),
        (TEXT_SET, "contains_any", ["laptops", 3]),
        (TEXT_SET, "is_empty", "yes"),
        (YES_NO, "eq", "yes"),
        (YES_NO, "eq", 1),
        (YES_NO, "exists", None),
        (NUMBER, "exists", 1),
    ],
)
def test_a_value_of_the_wrong_type_is_bad_value(field: str, op: str, value: object) -> None:
    (found,) = problems(leaf(field, op, value))
    assert found.code == "bad-value"
    assert found.path == ("audience", "value")


def test_problems_carry_the_path_of_nested_leaves() -> None:
    raw = {
        "all": [
            GOLD,
            {"any": [leaf("event.totl", "gte", 1), {"not": leaf(TEXT, "gt", "a")}]},
            {"segment": "vipp"},
            leaf(NUMBER, "gte", "1"),
        ]
    }
    assert [(p.path, p.code) for p in problems(raw)] == [
        (("audience", "all", 1, "any", 0, "field"), "unknown-field"),
        (("audience", "all", 1, "any", 1, "not", "op"), "wrong-operator"),
        (("audience", "all", 2, "segment"), "unknown-segment"),
        (("audience", "all", 3, "value"), "bad-value"),
    ]
    unknown_segment = problems(raw)[2]
    assert "did you mean 'vip'" in unknown_segment.message


def test_a_valid_tree_has_no_problems() -> None:
    raw = {"all": [GOLD, {"any": [BIG, {"not": LAPTOP}]}, {"segment": "vip"}]}
    assert problems(raw) == []


NON_FINITE = [
    float("nan"),
    float("inf"),
    float("-inf"),
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
]


@pytest.mark.parametrize("value", NON_FINITE, ids=str)
@pytest.mark.parametrize("op", ["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in"])
def test_a_number_condition_takes_only_finite_numbers(op: str, value: object) -> None:
    """YAML's ``.nan`` and ``.inf`` are numbers to a YAML reader; compared with an event's
    ``Decimal`` a NaN raises ``InvalidOperation`` on every event the leaf sees, so lint
    refuses them, alone or inside a list, where any other bad value is refused."""
    operand = [Decimal(1), value] if op in ("in", "not_in") else value
    (found,) = problems(leaf(NUMBER, op, operand))
    assert (found.code, found.path) == ("bad-value", ("audience", "value"))
    assert "finite number" in found.message


@pytest.mark.parametrize("value", [0, -1, 10**40, Decimal("1e-30"), 2.5, Decimal("-0")], ids=str)
def test_any_finite_number_is_a_number_operand(value: object) -> None:
    assert problems(leaf(NUMBER, "gte", value)) == []
    assert problems(leaf(NUMBER, "in", [value])) == []
