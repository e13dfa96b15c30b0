"""The engine: which campaigns an event fires, why others do not, and when sends are planned."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.triggers.builders import TUESDAY_10, campaign_document, compiled, make_campaign, rule_set
from triggers.campaigns import Campaign
from triggers.decide import (
    COUNTED_STATUSES,
    Decision,
    Decisions,
    Displaced,
    Later,
    PastSend,
    Policy,
    Subject,
    decide,
    dedupe_key,
    frequency_block,
    recheck,
)
from triggers.outcomes import SkipReason
from triggers.rule_set import CompiledCampaign, RuleSet, compile_campaign

LAPTOP_FACTS: dict[str, object] = {
    "event.type": "purchase",
    "event.categories": frozenset({"laptops"}),
    "event.total": Decimal("4299.00"),
    "customer.orders_count": 1,
}
BIG_ORDER = {"field": "event.total", "op": "gte", "value": 1500}
CUSTOMER = Subject(
    id="C-1001", has_email=True, email_marketing=True, suppressed=False, timezone="UTC"
)
POLICY = Policy()


def run(
    rules: RuleSet,
    *,
    facts: dict[str, object] | None = None,
    subject: Subject = CUSTOMER,
    history: Sequence[PastSend] = (),
    policy: Policy = POLICY,
    event_id: str = "evt-1",
    event_type: str = "purchase",
    triggered_at: datetime = TUESDAY_10,
    now: datetime | None = None,
) -> Decisions:
    return decide(
        rules=rules,
        event_type=event_type,
        event_id=event_id,
        triggered_at=triggered_at,
        facts=LAPTOP_FACTS if facts is None else facts,
        subject=subject,
        history=history,
        policy=policy,
        now=triggered_at if now is None else now,
    )


def by_id(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.campaign_id: d for d in decisions}


def outcomes(decisions: list[Decision]) -> dict[str, tuple[str, str | None]]:
    return {d.campaign_id: (d.outcome, d.reason) for d in decisions}


def sent(campaign_id: str, ago: timedelta, status: str = "sent") -> PastSend:
    return PastSend(campaign_id, status, TUESDAY_10 - ago)


# --- matching ---------------------------------------------------------------------------------


def test_a_matching_campaign_is_planned_now_when_nothing_holds_it_back() -> None:
    (decision,) = run(rule_set(compiled("laptop", where=BIG_ORDER)))
    assert decision.outcome == "planned"
    assert decision.reason is None
    assert (decision.variant, decision.template) == ("A", "accessories")
    assert decision.send_at == TUESDAY_10
    assert decision.expires_at == TUESDAY_10 + make_campaign("laptop").schedule.expire_after
    assert decision.dedupe_key is not None


def test_unmatched_campaigns_are_reported_with_the_failing_part() -> None:
    rules = rule_set(
        compiled("too-small", where={"field": "event.total", "op": "gte", "value": 10_000}),
        compiled(
            "wrong-audience", audience={"field": "customer.orders_count", "op": "gte", "value": 5}
        ),
        compiled("fits", where=BIG_ORDER),
    )
    assert outcomes(run(rules)) == {
        "too-small": ("not_matched", "trigger_conditions"),
        "wrong-audience": ("not_matched", "audience"),
        "fits": ("planned", None),
    }


def test_paused_draft_and_other_event_campaigns_are_not_considered() -> None:
    rules = rule_set(
        compiled("paused", status="paused"),
        compiled("draft", status="draft"),
        compiled("anniversary", event="anniversary"),
        compiled("live"),
    )
    assert [d.campaign_id for d in run(rules)] == ["live"]


# --- priority -------------------------------------------------------------------------------


def test_highest_priority_wins_and_the_rest_are_lower_priority() -> None:
    rules = rule_set(
        compiled("low", priority=10), compiled("high", priority=90), compiled("mid", priority=50)
    )
    decisions = run(rules)
    assert outcomes(decisions) == {
        "high": ("planned", None),
        "mid": ("skipped", "lower_priority"),
        "low": ("skipped", "lower_priority"),
    }
    assert [d.campaign_id for d in decisions] == ["high", "mid", "low"]


def test_max_campaigns_per_event_allows_several_in_priority_order() -> None:
    rules = rule_set(
        compiled("low", priority=10), compiled("high", priority=90), compiled("mid", priority=50)
    )
    unspaced = replace(POLICY, max_campaigns_per_event=2, min_gap=timedelta(0))
    decisions = run(rules, policy=unspaced)
    assert outcomes(decisions) == {
        "high": ("planned", None),
        "mid": ("planned", None),
        "low": ("skipped", "lower_priority"),
    }


@pytest.mark.parametrize("order", list(itertools.permutations(["b-camp", "a-camp", "c-camp"])))
def test_equal_priority_ties_are_broken_by_id_whatever_the_file_order(
    order: tuple[str, ...],
) -> None:
    rules = rule_set(*(compiled(cid, priority=70) for cid in order))
    decisions = run(rules)
    assert [d.campaign_id for d in decisions] == ["a-camp", "b-camp", "c-camp"]
    assert outcomes(decisions)["a-camp"] == ("planned", None)
    assert {d.reason for d in decisions[1:]} == {"lower_priority"}


def test_a_skipped_higher_priority_campaign_leaves_its_slot_to_the_next() -> None:
    rules = rule_set(
        compiled("high", priority=90, frequency={"once_per_customer": True}),
        compiled("next", priority=50),
    )
    decisions = run(rules, history=[sent("high", timedelta(days=400))])
    assert outcomes(decisions) == {
        "high": ("skipped", "once_per_customer"),
        "next": ("planned", None),
    }


# --- consent and suppression ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"email_marketing": False}, "no_consent"),
        ({"email_marketing": None}, "no_consent"),
        ({"has_email": False}, "no_email"),
        ({"has_email": False, "email_marketing": False}, "no_email"),
        ({"suppressed": True}, "suppressed"),
        ({"suppressed": True, "email_marketing": False}, "no_consent"),
    ],
)
def test_consent_email_and_suppression_block_every_campaign(
    change: dict[str, Any], reason: str
) -> None:
    rules = rule_set(compiled("high", priority=90), compiled("low", priority=10))
    decisions = run(rules, subject=replace(CUSTOMER, **change))
    assert outcomes(decisions) == {"high": ("skipped", reason), "low": ("skipped", reason)}
    assert all(d.send_at is None for d in decisions)


def test_consent_is_checked_even_for_a_campaign_without_conditions_or_limits() -> None:
    rules = rule_set(compiled("anything-goes"))
    (decision,) = run(rules, subject=replace(CUSTOMER, email_marketing=False))
    assert (decision.outcome, decision.reason) == ("skipped", "no_consent")


# --- frequency ------------------------------------------------------------------------------


def test_once_per_customer() -> None:
    rules = rule_set(compiled("once", frequency={"once_per_customer": True}))
    long_ago = timedelta(days=3 * 365)
    for status in ("sent", "planned", "queued", "sending", "held_out"):
        (decision,) = run(rules, history=[sent("once", long_ago, status)])
        assert (decision.outcome, decision.reason) == ("skipped", "once_per_customer"), status
    for status in ("skipped", "failed", "bounced"):
        (decision,) = run(rules, history=[sent("once", long_ago, status)])
        assert decision.outcome == "planned", status
    (decision,) = run(rules, history=[sent("another", long_ago)])
    assert decision.outcome == "planned"


def test_cooldown() -> None:
    cooldown = timedelta(days=14)
    rules = rule_set(compiled("cool", frequency={"cooldown": "14d"}))

    (inside,) = run(rules, history=[sent("cool", cooldown - timedelta(minutes=1))])
    assert (inside.outcome, inside.reason) == ("skipped", "cooldown")
    (held,) = run(rules, history=[sent("cool", timedelta(days=1), "held_out")])
    assert (held.outcome, held.reason) == ("skipped", "cooldown")
    (after,) = run(rules, history=[sent("cool", cooldown)])
    assert after.outcome == "planned"
    (other,) = run(rules, history=[sent("another", timedelta(days=1))])
    assert other.outcome == "planned"


def test_global_cap_counts_every_campaign_inside_the_cap_window() -> None:
    policy = Policy(max_emails_per_customer=3, cap_window=timedelta(days=7))
    rules = rule_set(compiled("capped"))
    recent = [
        sent(f"other-{n}", timedelta(days=n + 1)) for n in range(policy.max_emails_per_customer)
    ]

    (full,) = run(rules, history=recent, policy=policy)
    assert (full.outcome, full.reason) == ("skipped", "frequency_cap")
    (room,) = run(rules, history=recent[:-1], policy=policy)
    assert room.outcome == "planned"
    old = sent("other-old", policy.cap_window)
    (aged,) = run(rules, history=[*recent[:-1], old], policy=policy)
    assert aged.outcome == "planned", "a send older than the cap window does not count"
    not_sent = [sent("x", timedelta(hours=1), "skipped"), sent("y", timedelta(hours=1), "held_out")]
    (ignored,) = run(rules, history=[*recent[:-1], *not_sent], policy=policy)
    assert ignored.outcome == "planned", "skipped and held-out sends are not emails"


def test_global_cap_counts_sends_planned_earlier_in_the_same_event() -> None:
    policy = Policy(max_emails_per_customer=2, max_campaigns_per_event=3)
    rules = rule_set(
        compiled("a", priority=30), compiled("b", priority=20), compiled("c", priority=10)
    )
    history = [sent("old", timedelta(days=1))]
    assert outcomes(run(rules, history=history, policy=policy)) == {
        "a": ("planned", None),
        "b": ("skipped", "frequency_cap"),
        "c": ("skipped", "frequency_cap"),
    }


def test_a_campaign_cannot_loosen_the_global_cap() -> None:
    # No campaign setting turns the cap off: a campaign without limits is still capped.
    policy = Policy(max_emails_per_customer=1)
    (decision,) = run(
        rule_set(compiled("free")), history=[sent("x", timedelta(hours=2))], policy=policy
    )
    assert (decision.outcome, decision.reason) == ("skipped", "frequency_cap")


def test_frequency_block_order_of_reasons() -> None:
    campaign = make_campaign("c", frequency={"once_per_customer": True, "cooldown": "1d"})
    history = [PastSend("c", "sent", TUESDAY_10 - timedelta(hours=1))] * 5
    assert frequency_block(campaign, history, POLICY, TUESDAY_10) == "once_per_customer"
    assert frequency_block(make_campaign("free"), [], POLICY, TUESDAY_10) is None
    extra = POLICY.max_emails_per_customer
    assert frequency_block(make_campaign("free"), [], POLICY, TUESDAY_10, extra) == "frequency_cap"


# --- holdout ----------------------------------------------------------------------------------


def test_a_held_out_customer_is_tracked_not_sent() -> None:
    (decision,) = run(rule_set(compiled("all-held", holdout_percent=100)))
    assert (decision.outcome, decision.reason) == ("held_out", "holdout")
    assert decision.variant == "A"
    assert decision.dedupe_key is not None
    assert decision.send_at is not None


def test_no_holdout_means_planned() -> None:
    (decision,) = run(rule_set(compiled("none-held", holdout_percent=0)))
    assert decision.outcome == "planned"


def test_holdout_share_is_respected_by_the_engine() -> None:
    rules = rule_set(compiled("ten-percent", holdout_percent=10))
    customers = [replace(CUSTOMER, id=f"C-{n}") for n in range(4000)]
    held = sum(run(rules, subject=c)[0].outcome == "held_out" for c in customers)
    assert abs(held / len(customers) - 0.10) < 0.025


# --- timing and expiry -----------------------------------------------------------------------


def test_send_time_follows_delay_window_and_the_customers_time_zone() -> None:
    rules = rule_set(
        compiled(
            "windowed",
            schedule={
                "delay": "2h",
                "window": {
                    "days": ["mon", "tue", "wed", "thu", "fri"],
                    "from": "09:00",
                    "to": "19:00",
                },
            },
        )
    )
    new_york = ZoneInfo("America/New_York")
    subject = replace(CUSTOMER, timezone="America/New_York")
    triggered = datetime(2026, 11, 17, 23, 30, tzinfo=UTC)  # Tuesday 18:30 in New York
    (decision,) = run(rules, subject=subject, triggered_at=triggered)
    assert decision.send_at == datetime(2026, 11, 18, 9, 0, tzinfo=new_york)


def test_quiet_hours_apply_to_every_campaign() -> None:
    triggered = datetime(2026, 11, 17, 1, 0, tzinfo=UTC)
    (decision,) = run(rule_set(compiled("no-window")), triggered_at=triggered)
    assert POLICY.quiet_to is not None
    assert decision.send_at == datetime.combine(triggered.date(), POLICY.quiet_to, tzinfo=UTC)
    no_quiet = replace(POLICY, quiet_from=None, quiet_to=None)
    (decision,) = run(rule_set(compiled("no-window")), triggered_at=triggered, policy=no_quiet)
    assert decision.send_at == triggered


def test_an_unknown_customer_zone_falls_back_to_the_default() -> None:
    triggered = datetime(2026, 11, 17, 6, 0, tzinfo=UTC)  # quiet in UTC, not in Bucharest
    subject = replace(CUSTOMER, timezone="Not/AZone")
    policy = replace(POLICY, default_timezone="UTC")
    (decision,) = run(
        rule_set(compiled("c")), subject=subject, triggered_at=triggered, policy=policy
    )
    assert decision.send_at == datetime(2026, 11, 17, 8, 0, tzinfo=UTC)


def test_a_send_that_cannot_go_out_before_it_expires_is_skipped() -> None:
    rules = rule_set(compiled("soon", schedule={"delay": "1h", "expire_after": "1d"}))
    late = TUESDAY_10 + timedelta(hours=1) + timedelta(days=1) + timedelta(minutes=1)
    (decision,) = run(rules, now=late)
    assert (decision.outcome, decision.reason) == ("skipped", "expired")
    assert decision.send_at is not None and decision.expires_at is not None
    assert decision.send_at > decision.expires_at


def test_an_expired_campaign_does_not_use_up_the_event_slot() -> None:
    sunday_only = {
        "window": {"days": ["sun"], "from": "10:00", "to": "12:00"},
        "expire_after": "1d",
    }
    rules = rule_set(
        compiled("sunday", priority=90, schedule=sunday_only), compiled("anyday", priority=10)
    )
    assert outcomes(run(rules)) == {
        "sunday": ("skipped", "expired"),
        "anyday": ("planned", None),
    }


# --- dedupe keys ------------------------------------------------------------------------------


def _key(campaign: CompiledCampaign, **options: Any) -> str | None:
    (decision,) = run(rule_set(campaign), **options)
    return decision.dedupe_key


def test_dedupe_key_is_stable_for_the_same_inputs() -> None:
    for frequency in (None, {"once_per_customer": True}, {"cooldown": "14d"}):
        campaign = compiled("stable", frequency=frequency)
        assert _key(campaign) == _key(campaign)
        assert _key(campaign) == dedupe_key(campaign.campaign, CUSTOMER.id, "evt-1", TUESDAY_10)


def test_dedupe_key_without_frequency_is_per_event() -> None:
    campaign = compiled("per-event")
    assert _key(campaign, event_id="evt-1") != _key(campaign, event_id="evt-2")


def test_dedupe_key_once_per_customer_is_one_for_ever() -> None:
    campaign = compiled("once", frequency={"once_per_customer": True})
    later = TUESDAY_10 + timedelta(days=900)
    assert _key(campaign, event_id="evt-1") == _key(campaign, event_id="evt-2", triggered_at=later)


def test_dedupe_key_with_cooldown_is_one_per_cooldown_window() -> None:
    cooldown = timedelta(days=14)
    campaign = compiled("cool", frequency={"cooldown": "14d"})
    epoch_start = datetime(1970, 1, 1, tzinfo=UTC)
    window_start = epoch_start + (TUESDAY_10 - epoch_start) // cooldown * cooldown
    first = _key(campaign, event_id="evt-1", triggered_at=window_start)
    same = _key(
        campaign, event_id="evt-2", triggered_at=window_start + cooldown - timedelta(seconds=1)
    )
    assert first == same
    for later in (window_start + cooldown, window_start + 2 * cooldown, TUESDAY_10 + cooldown):
        assert _key(campaign, event_id="evt-3", triggered_at=later) != first


def test_dedupe_key_is_the_same_in_any_time_zone_representation() -> None:
    campaign = compiled("cool", frequency={"cooldown": "14d"})
    as_bucharest = TUESDAY_10.astimezone(ZoneInfo("Europe/Bucharest"))
    assert _key(campaign, triggered_at=as_bucharest) == _key(campaign, triggered_at=TUESDAY_10)


def test_dedupe_keys_differ_per_customer_and_per_campaign() -> None:
    one, two = compiled("one", priority=2), compiled("two", priority=1)
    keys = {
        d.dedupe_key
        for subject in (CUSTOMER, replace(CUSTOMER, id="C-2"))
        for d in run(
            rule_set(one, two), subject=subject, policy=replace(POLICY, max_campaigns_per_event=2)
        )
    }
    assert len(keys) == 4


def test_skipped_decisions_have_their_own_per_event_key() -> None:
    rules = rule_set(compiled("once", frequency={"once_per_customer": True}))
    subject = replace(CUSTOMER, email_marketing=False)
    (first,) = run(rules, subject=subject, event_id="evt-1")
    (second,) = run(rules, subject=subject, event_id="evt-2")
    (planned,) = run(rules, event_id="evt-1")
    assert first.dedupe_key is not None and second.dedupe_key is not None
    assert first.dedupe_key != second.dedupe_key
    assert first.dedupe_key != planned.dedupe_key


def test_decide_is_pure() -> None:
    rules = rule_set(
        compiled("a", priority=3),
        compiled("b", priority=2, holdout_percent=50),
        compiled("c", priority=1, frequency={"cooldown": "1d"}),
    )
    history = [sent("c", timedelta(hours=3))]
    policy = replace(POLICY, max_campaigns_per_event=3, quiet_to=time(7))
    assert run(rules, history=history, policy=policy) == run(rules, history=history, policy=policy)


# --- spacing (min_gap) ------------------------------------------------------------------------

NO_QUIET = replace(POLICY, quiet_from=None, quiet_to=None)


def test_a_second_email_within_the_gap_is_dropped_with_reason_min_gap() -> None:
    # The demo's case: one event planned an email for now, a second event of the same
    # customer, seconds later, matched another campaign. Before spacing both went out.
    rules = rule_set(compiled("second"))
    first = PastSend("first", "planned", TUESDAY_10)
    (decision,) = run(rules, history=[first], now=TUESDAY_10 + timedelta(seconds=5))
    assert (decision.outcome, decision.reason) == ("skipped", "min_gap")
    assert decision.reason is SkipReason.MIN_GAP


def test_under_defer_the_second_email_moves_to_last_plus_gap_then_into_the_window() -> None:
    window = {
        "window": {"days": ["mon", "tue", "wed", "thu", "fri"], "from": "09:00", "to": "12:00"}
    }
    rules = rule_set(compiled("second", schedule=window))
    policy = replace(NO_QUIET, over_cap="defer", min_gap=timedelta(hours=20))
    first = PastSend("first", "sent", TUESDAY_10 - timedelta(hours=1))
    (decision,) = run(rules, history=[first], policy=policy)
    # 09:00 + 20 h is Wednesday 05:00, before the window opens at 09:00.
    assert (decision.outcome, decision.reason) == ("planned", "deferred_by_gap")
    assert decision.send_at == datetime(2026, 11, 18, 9, 0, tzinfo=UTC)


def test_a_gap_deferral_past_expiry_is_a_min_gap_skip() -> None:
    rules = rule_set(compiled("second", schedule={"expire_after": "10h"}))
    policy = replace(NO_QUIET, over_cap="defer")
    (decision,) = run(rules, history=[PastSend("first", "sent", TUESDAY_10)], policy=policy)
    assert (decision.outcome, decision.reason) == ("skipped", "min_gap")


def test_an_email_planned_later_also_needs_the_gap_before_it() -> None:
    rules = rule_set(compiled("now"))
    upcoming = PastSend("later", "planned", TUESDAY_10 + timedelta(hours=5))
    (decision,) = run(rules, history=[upcoming], policy=NO_QUIET)
    assert decision.reason == "min_gap"
    far = PastSend("later", "planned", TUESDAY_10 + timedelta(days=2))
    assert run(rules, history=[far], policy=NO_QUIET)[0].outcome == "planned"


@pytest.mark.parametrize(
    ("status", "counts"),
    [
        ("sent", True),
        ("sending", True),
        ("queued", True),
        ("planned", True),
        ("held_out", False),
        ("skipped", False),
        ("failed", False),
    ],
)
def test_only_emails_count_for_the_gap(status: str, counts: bool) -> None:
    rules = rule_set(compiled("c"))
    history = [PastSend("other", status, TUESDAY_10 - timedelta(hours=2))]
    reason = run(rules, history=history, policy=NO_QUIET)[0].reason
    assert (reason == "min_gap") is counts
    assert (status in COUNTED_STATUSES) is counts


@pytest.mark.parametrize(
    ("campaign_gap", "global_gap", "hours_since", "blocked"),
    [
        ("2d", timedelta(hours=20), 30, True),  # the campaign asks for more
        ("2d", timedelta(hours=20), 49, False),
        ("1h", timedelta(hours=20), 10, True),  # and never gets less
        (None, timedelta(hours=20), 19, True),
        (None, timedelta(hours=20), 21, False),
        ("3h", timedelta(0), 2, True),  # a campaign may space itself with the global one off
        (None, timedelta(0), 0, False),
    ],
)
def test_the_longer_of_the_global_and_the_campaign_gap_applies(
    campaign_gap: str | None, global_gap: timedelta, hours_since: int, blocked: bool
) -> None:
    frequency = {"min_gap": campaign_gap} if campaign_gap else None
    rules = rule_set(compiled("c", frequency=frequency))
    history = [PastSend("other", "sent", TUESDAY_10 - timedelta(hours=hours_since))]
    policy = replace(NO_QUIET, min_gap=global_gap)
    assert (run(rules, history=history, policy=policy)[0].reason == "min_gap") is blocked


def test_priority_decides_which_goes_first_when_one_event_plans_several() -> None:
    rules = rule_set(
        compiled("low", priority=10), compiled("high", priority=90), compiled("mid", priority=50)
    )
    policy = replace(NO_QUIET, max_campaigns_per_event=3, over_cap="defer")
    plans = by_id(run(rules, policy=policy))
    assert plans["high"].send_at == TUESDAY_10 and plans["high"].reason is None
    assert plans["mid"].send_at == TUESDAY_10 + policy.min_gap
    assert plans["low"].send_at == TUESDAY_10 + 2 * policy.min_gap
    assert plans["mid"].reason == plans["low"].reason == "deferred_by_gap"
    dropped = outcomes(run(rules, policy=replace(policy, over_cap="drop")))
    assert dropped == {
        "high": ("planned", None),
        "mid": ("skipped", "min_gap"),
        "low": ("skipped", "min_gap"),
    }


def test_a_held_out_customer_takes_no_spacing_room() -> None:
    rules = rule_set(
        compiled("control", priority=90, holdout_percent=100), compiled("real", priority=10)
    )
    policy = replace(NO_QUIET, max_campaigns_per_event=2)
    assert outcomes(run(rules, policy=policy)) == {
        "control": ("held_out", "holdout"),
        "real": ("planned", None),
    }


_HOURS = st.integers(min_value=-96, max_value=96)


def _hours(text: str | None) -> timedelta:
    """A reference reading of the few durations the property uses (not the engine's parser)."""
    table = {None: 0, "1h": 1, "30h": 30, "3d": 72}
    return timedelta(hours=table[text])


@settings(max_examples=300, deadline=None)
@given(
    past=st.lists(
        st.tuples(_HOURS, st.sampled_from(["sent", "planned", "queued", "held_out", "skipped"])),
        max_size=5,
    ),
    gap_hours=st.integers(min_value=0, max_value=60),
    own_gap=st.sampled_from([None, "1h", "30h", "3d"]),
    over_cap=st.sampled_from(["drop", "defer"]),
    per_event=st.integers(min_value=1, max_value=3),
    delay_hours=st.integers(min_value=0, max_value=30),
)
def test_no_two_emails_are_ever_planned_closer_than_their_gap(
    past: list[tuple[int, str]],
    gap_hours: int,
    own_gap: str | None,
    over_cap: str,
    per_event: int,
    delay_hours: int,
) -> None:
    """Brute force over the result: every planned email against every other email."""
    frequency = {"min_gap": own_gap} if own_gap else None
    rules = rule_set(
        compiled("a", priority=30, frequency=frequency),
        compiled("b", priority=20, schedule={"delay": f"{delay_hours}h", "expire_after": "5d"}),
        compiled("c", priority=10, schedule={"window": {"from": "09:00", "to": "11:00"}}),
    )
    policy = replace(
        NO_QUIET,
        min_gap=timedelta(hours=gap_hours),
        over_cap=over_cap,  # type: ignore[arg-type]
        max_campaigns_per_event=per_event,
        max_emails_per_customer=50,
    )
    history = [PastSend("old", status, TUESDAY_10 + timedelta(hours=h)) for h, status in past]
    decisions = run(rules, history=history, policy=policy)
    own = {"a": _hours(own_gap), "b": timedelta(0), "c": timedelta(0), "old": timedelta(0)}
    emails = [(p.at, "old") for p in history if p.status in ("sent", "planned", "queued")]
    planned = [d for d in decisions if d.outcome == "planned"]
    assert len(planned) <= per_event
    for decision in planned:
        assert decision.send_at is not None and decision.send_at >= TUESDAY_10
        others = emails + [
            (d.send_at, d.campaign_id) for d in planned if d is not decision and d.send_at
        ]
        for at, campaign_id in others:
            gap = max(timedelta(hours=gap_hours), own[decision.campaign_id], own[campaign_id])
            assert abs(decision.send_at - at) >= gap, (decision, at, campaign_id)
    if over_cap == "drop":
        assert all(d.reason != "deferred_by_gap" for d in decisions)


# --- recheck: may a planned send still go now? ------------------------------------------------


def _of_kind(campaign_id: str, kind: str, **options: Any) -> CompiledCampaign:
    document = campaign_document(campaign_id, **options)
    document["kind"] = kind
    return compile_campaign(Campaign.model_validate(document), f"{campaign_id}.yaml", {})


def _recheck(
    campaign: CompiledCampaign,
    *,
    subject: Subject = CUSTOMER,
    history: Sequence[PastSend] = (),
    policy: Policy = NO_QUIET,
    now: datetime = TUESDAY_10,
    expires_at: datetime | None = None,
) -> SkipReason | Later | None:
    return recheck(
        rules=rule_set(campaign),
        campaign_id=campaign.id,
        facts=LAPTOP_FACTS,
        subject=subject,
        history=history,
        policy=policy,
        now=now,
        expires_at=expires_at,
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"has_email": False}, "no_email"),
        ({"email_marketing": None}, "no_consent"),
        ({"email_marketing": False}, "no_consent"),
        ({"suppressed": True}, "suppressed"),
        ({"opted_out_kinds": frozenset({"loyalty"})}, "opted_out"),
        ({"opted_out_kinds": frozenset({"upsell"})}, None),
        ({}, None),
    ],
)
def test_recheck_and_decide_agree_on_the_customers_standing(
    change: dict[str, Any], expected: str | None
) -> None:
    campaign = _of_kind("loyal", "loyalty")
    subject = replace(CUSTOMER, **change)
    assert _recheck(campaign, subject=subject) == expected
    (decision,) = run(rule_set(campaign), subject=subject, policy=NO_QUIET)
    assert decision.reason == expected


def test_recheck_reasons_in_the_engines_order() -> None:
    capped = compiled("c", frequency={"cooldown": "7d"}, audience=BIG_ORDER)
    mine = PastSend("c", "sent", TUESDAY_10 - timedelta(days=1))
    other = PastSend("other", "sent", TUESDAY_10 - timedelta(hours=2))
    inactive = compiled("c", status="paused")
    assert _recheck(inactive) == "campaign_inactive"
    assert _recheck(capped, expires_at=TUESDAY_10 - timedelta(seconds=1)) == "expired"
    no_consent = replace(CUSTOMER, email_marketing=False)
    assert _recheck(capped, subject=no_consent, history=[mine]) == "no_consent"
    small = compiled("c", audience={"field": "event.total", "op": "gte", "value": 99999})
    assert _recheck(small, history=[mine]) == "audience"
    assert _recheck(capped, history=[mine, other]) == "cooldown"
    assert _recheck(capped, history=[other]) == "min_gap"
    assert _recheck(capped) is None


def test_recheck_counts_only_emails_that_went_out() -> None:
    campaign = compiled("c")
    planned_elsewhere = PastSend("other", "planned", TUESDAY_10 - timedelta(minutes=1))
    assert _recheck(campaign, history=[planned_elsewhere]) is None
    gone = PastSend("other", "sending", TUESDAY_10 - timedelta(minutes=1))
    assert _recheck(campaign, history=[gone]) == "min_gap"


def test_recheck_defers_by_the_gap_and_into_the_window() -> None:
    campaign = compiled("c", schedule={"window": {"from": "09:00", "to": "12:00"}})
    gone = PastSend("other", "sent", TUESDAY_10 - timedelta(hours=2))
    later = _recheck(campaign, history=[gone], policy=replace(NO_QUIET, over_cap="defer"))
    # 08:00 + 20 h = Wednesday 04:00, the window opens at 09:00.
    assert later == Later(datetime(2026, 11, 18, 9, 0, tzinfo=UTC), SkipReason.DEFERRED_BY_GAP)
    evening = _recheck(campaign, now=TUESDAY_10.replace(hour=15))
    assert evening == Later(datetime(2026, 11, 18, 9, 0, tzinfo=UTC), SkipReason.OUTSIDE_WINDOW)


def test_skip_reasons_keep_their_stored_strings() -> None:
    for reason in SkipReason:
        assert reason == reason.value and isinstance(reason, str)
        assert f"{reason}" == reason.value


# --- events close together: priority decides which goes first ----------------------------------


IN_AN_HOUR = TUESDAY_10 + timedelta(hours=1)


def _low_priority_anniversary(priority: int = 10, **options: Any) -> CompiledCampaign:
    return compiled("low", priority=priority, event="anniversary", **options)


def test_a_higher_priority_email_takes_the_place_of_a_planned_lower_one() -> None:
    # The demo's case after spacing: a loyalty email planned first (its event came
    # first) kept the laptop accessories email of a later event out, whatever priority.
    rules = rule_set(compiled("high", priority=90), _low_priority_anniversary())
    waiting = PastSend("low", "planned", TUESDAY_10 + timedelta(hours=1), send_id=7)
    decisions = run(rules, history=[waiting], policy=NO_QUIET)
    assert outcomes(decisions)["high"] == ("planned", None)
    assert decisions.displaced == [Displaced(7, "low", "skipped", SkipReason.MIN_GAP, None)]


def test_under_defer_the_displaced_email_moves_past_the_gap_into_its_window() -> None:
    window = {"window": {"from": "09:00", "to": "12:00"}}
    rules = rule_set(compiled("high", priority=90), _low_priority_anniversary(schedule=window))
    waiting = PastSend(
        "low",
        "planned",
        TUESDAY_10 + timedelta(hours=1),
        send_id=7,
        expires_at=TUESDAY_10 + timedelta(days=3),
    )
    policy = replace(NO_QUIET, over_cap="defer")
    decisions = run(rules, history=[waiting], policy=policy)
    assert by_id(decisions)["high"].send_at == TUESDAY_10
    # 10:00 + 20 h = Wednesday 06:00; the low campaign's window opens at 09:00.
    moved = Displaced(
        7, "low", "planned", SkipReason.DEFERRED_BY_GAP, datetime(2026, 11, 18, 9, tzinfo=UTC)
    )
    assert decisions.displaced == [moved]
    expiring = replace(waiting, expires_at=TUESDAY_10 + timedelta(hours=12))
    dropped = run(rules, history=[expiring], policy=policy).displaced
    assert dropped == [Displaced(7, "low", "skipped", SkipReason.MIN_GAP, None)]


@pytest.mark.parametrize(
    ("past", "low_priority", "why"),
    [
        (PastSend("low", "queued", TUESDAY_10, send_id=7), 10, "already on its way"),
        (PastSend("low", "planned", TUESDAY_10, send_id=7), 10, "due now: may be on its way"),
        (PastSend("low", "sent", TUESDAY_10, send_id=7), 10, "already sent"),
        (PastSend("low", "planned", TUESDAY_10), 10, "no send id: cannot be changed"),
        (PastSend("low", "planned", IN_AN_HOUR, send_id=7), 90, "equal priority keeps its place"),
        (PastSend("low", "planned", IN_AN_HOUR, send_id=7), 95, "higher priority"),
        (PastSend("gone", "planned", IN_AN_HOUR, send_id=7), 10, "campaign no longer exists"),
    ],
)
def test_only_planned_lower_priority_emails_make_room(
    past: PastSend, low_priority: int, why: str
) -> None:
    rules = rule_set(compiled("high", priority=90), _low_priority_anniversary(low_priority))
    decisions = run(rules, history=[past], policy=NO_QUIET)
    assert outcomes(decisions)["high"] == ("skipped", "min_gap"), why
    assert decisions.displaced == [], why


@settings(max_examples=300, deadline=None)
@given(
    past=st.lists(
        st.tuples(
            _HOURS,
            st.sampled_from(["sent", "planned", "queued", "held_out"]),
            st.sampled_from(["low", "top", "gone"]),
        ),
        max_size=5,
    ),
    over_cap=st.sampled_from(["drop", "defer"]),
    per_event=st.integers(min_value=1, max_value=3),
)
def test_after_making_room_every_new_or_moved_email_keeps_its_gap(
    past: list[tuple[int, str, str]], over_cap: str, per_event: int
) -> None:
    rules = rule_set(
        compiled("a", priority=30),
        compiled("b", priority=20, frequency={"min_gap": "30h"}),
        _low_priority_anniversary(priority=25, frequency={"min_gap": "2d"}),
        compiled("top", priority=99, event="anniversary"),
    )
    policy = replace(
        NO_QUIET,
        over_cap=over_cap,  # type: ignore[arg-type]
        max_campaigns_per_event=per_event,
        max_emails_per_customer=50,
    )
    history = [
        PastSend(name, status, TUESDAY_10 + timedelta(hours=h), send_id=n)
        for n, (h, status, name) in enumerate(past)
    ]
    decisions = run(rules, history=history, policy=policy)
    own = {"a": 0, "b": 30, "low": 48, "top": 0, "gone": 0}
    moves = {d.send_id: d for d in decisions.displaced}
    for move in decisions.displaced:
        before = history[move.send_id]
        assert before.status == "planned"
        assert before.campaign_id == "low", "only the lower-priority planned one yields"
    final = [
        (
            moves[p.send_id].send_at if p.send_id in moves else p.at,
            p.campaign_id,
            p.send_id in moves,
        )
        for p in history
        if p.status in ("sent", "planned", "queued")
        and not (p.send_id in moves and moves[p.send_id].outcome == "skipped")
    ]
    final += [(d.send_at, d.campaign_id, True) for d in decisions if d.outcome == "planned"]
    for index, (at, name, new) in enumerate(final):
        for other_at, other_name, other_new in final[index + 1 :]:
            if not (new or other_new):
                continue  # two old emails: not this decision's doing
            assert at is not None and other_at is not None
            gap = max(timedelta(hours=20), timedelta(hours=max(own[name], own[other_name])))
            assert abs(at - other_at) >= gap, (final, decisions.displaced)
