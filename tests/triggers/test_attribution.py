"""The attribution rules against a brute-force reference written from the documented
definition (docs/measurement.md), on hand-picked cases and on generated ones."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triggers.attribution import Attribution, Purchase, Touch, attribute, window_for

T0 = datetime(2026, 11, 17, 10, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


def touch(
    send_id: int,
    campaign: str,
    at: datetime,
    group: str = "sent",
    window: timedelta = WEEK,
    offered: tuple[str, ...] = (),
    variant: str | None = "A",
) -> Touch:
    return Touch(send_id, campaign, variant, group, at, window, frozenset(offered))  # type: ignore[arg-type]


def purchase(at: datetime, *skus: str) -> Purchase:
    return Purchase("O-1", at, frozenset(skus))


@pytest.mark.parametrize(
    ("offset", "counted"),
    [
        (timedelta(0), False),  # at the very moment of the email: not after it
        (timedelta(seconds=1), True),
        (WEEK - timedelta(seconds=1), True),
        (WEEK, True),  # the window's end is included
        (WEEK + timedelta(seconds=1), False),
        (-timedelta(hours=1), False),  # before the email
    ],
)
def test_the_window_is_open_at_its_start_and_closed_at_its_end(
    offset: timedelta, counted: bool
) -> None:
    found = attribute(purchase(T0 + offset, "X"), [touch(1, "a", T0)])
    assert bool(found) is counted


def test_direct_when_the_order_holds_an_offered_product_else_influenced() -> None:
    offered = touch(1, "a", T0, offered=("CASE", "CHARGER"))
    assert attribute(purchase(T0 + timedelta(days=1), "CHARGER", "X"), [offered])[0].kind == (
        "direct"
    )
    assert attribute(purchase(T0 + timedelta(days=1), "X"), [offered])[0].kind == "influenced"
    nothing = touch(2, "a", T0)
    assert attribute(purchase(T0 + timedelta(days=1), "X"), [nothing])[0].kind == "influenced"


def test_a_purchase_counts_for_every_campaign_and_is_credited_to_the_latest_email() -> None:
    touches = [
        touch(1, "early", T0),
        touch(2, "late", T0 + timedelta(days=2)),
        touch(3, "control", T0 + timedelta(days=3), group="held_out"),
    ]
    found = attribute(purchase(T0 + timedelta(days=4), "X"), touches)
    assert [(a.campaign_id, a.credited, a.group) for a in found] == [
        ("control", False, "held_out"),  # the latest touch, but no email to credit
        ("early", False, "sent"),
        ("late", True, "sent"),
    ]


def test_within_a_campaign_the_latest_touch_holding_the_purchase_wins() -> None:
    touches = [
        touch(1, "a", T0, variant="A", offered=("X",)),
        touch(2, "a", T0 + timedelta(days=1), variant="B"),
        touch(3, "a", T0 + timedelta(days=9), variant="A"),  # after the purchase
    ]
    (only,) = attribute(purchase(T0 + timedelta(days=2), "X"), touches)
    assert (only.send_id, only.variant, only.kind) == (2, "B", "influenced")


def test_a_campaign_window_override_applies_to_its_touches_only() -> None:
    assert window_for(None, WEEK) == WEEK
    assert window_for(timedelta(days=2), WEEK) == timedelta(days=2)
    touches = [touch(1, "short", T0, window=timedelta(days=2)), touch(2, "long", T0)]
    found = attribute(purchase(T0 + timedelta(days=3), "X"), touches)
    assert [a.campaign_id for a in found] == ["long"]


# --- generated histories against a brute-force reference ---------------------------


def reference(p: Purchase, touches: list[Touch]) -> dict[str, tuple[int, str, bool]]:
    """campaign -> (send id, kind, credited), straight from the documented definition."""
    answer: dict[str, tuple[int, str, bool]] = {}
    holding = [
        t
        for t in touches
        if t.touched_at < p.ordered_at and p.ordered_at - t.touched_at <= t.window
    ]
    campaigns = sorted({t.campaign_id for t in holding})
    chosen = []
    for campaign in campaigns:
        mine = sorted(
            (t for t in holding if t.campaign_id == campaign),
            key=lambda t: (t.touched_at, t.send_id),
        )
        chosen.append(mine[-1])
    emailed = sorted(
        (t for t in chosen if t.group == "sent"), key=lambda t: (t.touched_at, t.send_id)
    )
    credited_id = emailed[-1].send_id if emailed else None
    for t in chosen:
        kind = "direct" if any(sku in t.offered_skus for sku in p.skus) else "influenced"
        answer[t.campaign_id] = (t.send_id, kind, t.send_id == credited_id)
    return answer


SKUS = ("A", "B", "C", "D")
touch_strategy = st.builds(
    lambda campaign, hours, group, window_days, offered: (
        campaign,
        T0 + timedelta(hours=hours),
        group,
        timedelta(days=window_days),
        offered,
    ),
    st.sampled_from(["c1", "c2", "c3"]),
    st.integers(0, 24 * 20),
    st.sampled_from(["sent", "held_out"]),
    st.integers(1, 10),
    st.frozensets(st.sampled_from(SKUS), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(touch_strategy, max_size=8),
    st.integers(0, 24 * 30),
    st.frozensets(st.sampled_from(SKUS), min_size=1, max_size=3),
    st.randoms(use_true_random=False),
)
def test_attribution_equals_the_reference_in_any_order(
    specs: list[tuple[str, datetime, str, timedelta, frozenset[str]]],
    hours: int,
    bought: frozenset[str],
    shuffler: random.Random,
) -> None:
    touches = [
        touch(index + 1, campaign, at, group, window, tuple(offered))
        for index, (campaign, at, group, window, offered) in enumerate(specs)
    ]
    p = Purchase("O-1", T0 + timedelta(hours=hours), bought)
    expected = reference(p, touches)
    shuffler.shuffle(touches)
    found = attribute(p, touches)
    assert {a.campaign_id: (a.send_id, a.kind, a.credited) for a in found} == expected
    assert sum(a.credited for a in found) == (1 if any(a.group == "sent" for a in found) else 0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(touch_strategy, min_size=1, max_size=6),
    st.lists(touch_strategy, max_size=6),
    st.integers(0, 24 * 30),
)
def test_other_campaigns_never_change_a_campaigns_own_measurement(
    own: list[tuple[str, datetime, str, timedelta, frozenset[str]]],
    others: list[tuple[str, datetime, str, timedelta, frozenset[str]]],
    hours: int,
) -> None:
    """What keeps each campaign's lift unbiased: whether its emailed or held-out touch
    counts a purchase does not depend on what other campaigns did."""
    mine = [
        touch(i + 1, "mine", at, group, w, tuple(o)) for i, (_, at, group, w, o) in enumerate(own)
    ]
    theirs = [
        touch(100 + i, campaign, at, group, w, tuple(o))
        for i, (campaign, at, group, w, o) in enumerate(others)
    ]
    p = Purchase("O-1", T0 + timedelta(hours=hours), frozenset({"A"}))

    def measured(found: tuple[Attribution, ...]) -> list[tuple[int, str, str]]:
        return [(a.send_id, a.group, a.kind) for a in found if a.campaign_id == "mine"]

    assert measured(attribute(p, mine)) == measured(attribute(p, mine + theirs))
