"""The prefilter never hides a campaign that would match: it only skips sure misses."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.triggers.builders import compiled, rule_set
from tests.triggers.reference import prefilter_candidates
from triggers.conditions import AllOf, AnyOf, Leaf
from triggers.prefilter import guard, split_guard
from triggers.rule_set import CompiledCampaign

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
        "cats-then-audience",
        where={
            "all": [
                {"field": "event.total", "op": "lt", "value": 1500},
                {"field": "event.categories", "op": "contains_any", "value": ["mice", "bags"]},
                {"field": "event.currency", "op": "ne", "value": "RON"},
            ]
        },
        audience={"field": "customer.orders_count", "op": "gte", "value": 2},
    ),
    compiled(
        "only-guard",
        where={"all": [{"field": "event.currency", "op": "eq", "value": "RON"}]},
        audience={"not": {"field": "customer.orders_count", "op": "exists", "value": True}},
    ),
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


@settings(max_examples=300, deadline=None)
@given(
    categories=st.none() | st.frozensets(st.sampled_from(CATEGORIES)),
    total=st.integers(min_value=0, max_value=2000),
    currency=st.sampled_from(["EUR", "RON", None]),
    orders=st.none() | st.integers(min_value=0, max_value=3),
)
def test_a_candidates_check_agrees_with_its_where_and_audience(
    categories: frozenset[str] | None, total: int, currency: str | None, orders: int | None
) -> None:
    # The engine's check skips the leaf the prefilter filed a campaign under; for every
    # candidate it must say what evaluating both trees in full says.
    facts: dict[str, object] = {
        "event.categories": categories,
        "event.total": total,
        "event.currency": currency,
        "customer.orders_count": orders,
    }
    active = RULES.active_for("purchase")
    candidates = RULES.candidates("purchase", facts)
    assert list(candidates) == sorted(prefilter_candidates(RULES._prefilters["purchase"], facts))
    for position in candidates:
        campaign = active[position]
        expected = (
            campaign.miss_trigger
            if not campaign.where(facts)
            else campaign.miss_audience
            if not campaign.audience(facts)
            else None
        )
        assert RULES.checks("purchase")[position](facts) is expected, campaign.id


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


def test_split_guard_leaves_the_rest_of_the_trigger() -> None:
    metric = Leaf(field="event.metric", op="eq", value="logins_per_week")
    total = Leaf(field="event.total", op="gt", value=1)
    wide = Leaf(field="event.total", op="lt", value=9)
    accepted = ("event.metric", frozenset({"logins_per_week"}))
    assert split_guard(metric) == (accepted, None)
    assert split_guard(AllOf(all=[metric])) == (accepted, None)
    assert split_guard(AllOf(all=[total, metric])) == (accepted, total)
    assert split_guard(AllOf(all=[total, metric, wide])) == (accepted, AllOf(all=[total, wide]))
    assert split_guard(AnyOf(any=[metric, total])) == (None, AnyOf(any=[metric, total]))
    assert split_guard(total) == (None, total)
    assert split_guard(None) == (None, None)


def test_a_campaign_built_without_segments_checks_with_its_predicates() -> None:
    # CompiledCampaign made directly (no segments to generate from) falls back to calling
    # where and audience in full: slower, and the same answer for every candidate.
    source = RULES.active_for("purchase")
    rebuilt = [CompiledCampaign(c.campaign, c.source, c.where, c.audience) for c in source]
    facts: dict[str, object] = {
        "event.categories": frozenset({"mice"}),
        "event.total": 10,
        "event.currency": "EUR",
        "customer.orders_count": 1,
    }
    candidates = RULES.candidates("purchase", facts)
    assert len(candidates) < len(source)
    for position in candidates:
        assert rebuilt[position].check(facts) == source[position].check(facts)
    # It evaluates the whole trigger, so it is right for non-candidates too.
    for campaign in rebuilt:
        if not campaign.where(facts):
            assert campaign.check(facts) == campaign.miss_trigger
