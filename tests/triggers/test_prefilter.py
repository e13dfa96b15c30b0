"""The prefilter never hides a campaign that would match: it only skips sure misses."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.triggers.builders import compiled, rule_set
from triggers.conditions import AllOf, AnyOf, Leaf
from triggers.prefilter import guard

CATEGORIES = ["laptops", "phones", "mice", "bags", "cameras"]
METRICS = ["logins_per_week", "orders_per_month"]

RULES = rule_set(
    compiled(
        "cats",
        where={
            "all": [
                {"field": "event.categories", "op": "contains_any", "value": ["laptops", "phones"]},
                {"field": "event.total", "op": "gte", "value": 100},
            ]
        },
    ),
    compiled("one-cat", where={"field": "event.categories", "op": "contains", "value": "mice"}),
    compiled("by-currency", where={"field": "event.currency", "op": "in", "value": ["EUR"]}),
    compiled(
        "either",
        where={
            "any": [
                {"field": "event.categories", "op": "contains", "value": "bags"},
                {"field": "event.total", "op": "gt", "value": 1000},
            ]
        },
    ),
    compiled("no-where"),
    compiled(
        "not-cats",
        where={"not": {"field": "event.categories", "op": "contains", "value": "cameras"}},
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    categories=st.frozensets(st.sampled_from(CATEGORIES)),
    total=st.integers(min_value=0, max_value=2000),
    currency=st.sampled_from(["EUR", "RON", None]),
)
def test_every_matching_campaign_is_a_candidate(
    categories: frozenset[str], total: int, currency: str | None
) -> None:
    facts: dict[str, object] = {
        "event.categories": categories,
        "event.total": total,
        "event.currency": currency,
    }
    candidates = RULES.candidates("purchase", facts)
    for position, campaign in enumerate(RULES.active_for("purchase")):
        if campaign.where(facts):
            assert position in candidates, campaign.id


def test_only_required_leaves_guard() -> None:
    leaf = Leaf(field="event.metric", op="eq", value="logins_per_week")
    assert guard(leaf) == ("event.metric", frozenset({"logins_per_week"}))
    assert guard(AllOf(all=[Leaf(field="event.total", op="gt", value=1), leaf])) == (
        "event.metric",
        frozenset({"logins_per_week"}),
    )
    assert guard(AnyOf(any=[leaf])) is None  # one alternative among others: not required
    assert guard(Leaf(field="event.metric", op="ne", value="x")) is None
    assert guard(None) is None
