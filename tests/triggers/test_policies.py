"""Per-campaign max_sends, the over-cap policy (drop or defer), and the dry-run simulator."""

from __future__ import annotations

from datetime import timedelta

from tests.triggers.builders import TUESDAY_10, compiled, rule_set
from tests.triggers.test_decide import CUSTOMER, run
from triggers.decide import PastSend, Policy, cap_frees_at
from triggers.events import validate_event
from triggers.simulate import simulate


def test_max_sends_limits_a_campaign_per_period() -> None:
    rules = rule_set(compiled("c", frequency={"max_sends": {"count": 2, "period": "30d"}}))
    two = [PastSend("c", "sent", TUESDAY_10 - timedelta(days=d)) for d in (3, 20)]
    assert run(rules, history=two)[0].reason == "max_sends"
    older = [two[0], PastSend("c", "sent", TUESDAY_10 - timedelta(days=31))]
    assert run(rules, history=older)[0].outcome == "planned"


def test_over_cap_drop_skips() -> None:
    policy = Policy(
        max_emails_per_customer=2, cap_window=timedelta(days=7), quiet_from=None, quiet_to=None
    )
    history = [PastSend("other", "sent", TUESDAY_10 - timedelta(days=d)) for d in (1, 5)]
    (decision,) = run(rule_set(compiled("c")), history=history, policy=policy)
    assert (decision.outcome, decision.reason) == ("skipped", "frequency_cap")


def test_over_cap_defer_plans_when_the_oldest_counted_email_leaves_the_window() -> None:
    policy = Policy(
        max_emails_per_customer=2,
        cap_window=timedelta(days=7),
        quiet_from=None,
        quiet_to=None,
        over_cap="defer",
    )
    oldest = TUESDAY_10 - timedelta(days=5)
    history = [
        PastSend("other", "sent", TUESDAY_10 - timedelta(days=1)),
        PastSend("other", "sent", oldest),
    ]
    rules = rule_set(compiled("c", schedule={"expire_after": "7d"}))
    (decision,) = run(rules, history=history, policy=policy)
    assert (decision.outcome, decision.reason) == ("planned", "deferred_by_cap")
    assert decision.send_at == oldest + policy.cap_window
    # Deferred emails count too: with it planned, the next slot opens when the newer
    # of the two sent emails leaves the window.
    later = [*history, PastSend("c", "planned", decision.send_at)]
    assert cap_frees_at(later, policy, TUESDAY_10) == history[0].at + policy.cap_window


def test_over_cap_defer_past_expiry_is_a_cap_skip() -> None:
    policy = Policy(
        max_emails_per_customer=1,
        cap_window=timedelta(days=30),
        quiet_from=None,
        quiet_to=None,
        over_cap="defer",
    )
    history = [PastSend("other", "sent", TUESDAY_10 - timedelta(days=1))]
    rules = rule_set(compiled("c", schedule={"expire_after": "2d"}))
    (decision,) = run(rules, history=history, policy=policy)
    assert (decision.outcome, decision.reason) == ("skipped", "frequency_cap")


def _purchase(event_id: str, days_ago: float, total: str = "2000.00") -> dict[str, object]:
    return {
        "id": event_id,
        "type": "purchase",
        "occurred_at": (TUESDAY_10 - timedelta(days=days_ago)).isoformat(),
        "customer": {
            "id": CUSTOMER.id,
            "email": "a@example.ro",
            "consent": {"email_marketing": True},
        },
        "data": {
            "order_id": f"O-{event_id}",
            "currency": "EUR",
            "total": total,
            "items": [{"sku": "S", "category": "laptops", "unit_price": total}],
        },
    }


def test_simulation_replays_profiles_and_history_in_time_order() -> None:
    rules = rule_set(
        compiled(
            "big",
            where={"field": "event.total", "op": "gte", "value": 1000},
            audience={"field": "customer.orders_count", "op": "gte", "value": 2},
            frequency={"cooldown": "10d"},
        )
    )
    events = [
        validate_event(_purchase(name, days))
        for name, days in (("e3", 2), ("e1", 20), ("e2", 9), ("e4", 1))
    ]
    events.append(validate_event(_purchase("e1", 20)))  # the same event again
    small = _purchase("e5", 0.5, total="10.00")
    events.append(validate_event(small))
    report = simulate(events, rules, Policy(quiet_from=None, quiet_to=None))
    assert report.events == 5  # the duplicate id is processed once
    totals = report.totals("big")
    # e1: first order (audience needs 2) → not matched; e2 → email; e3: 7 days later,
    # inside the 10-day cooldown; e4 likewise; e5 is too small.
    assert totals.emails == 1
    assert totals.skipped == {"cooldown": 2}
    assert report.not_matched["big"] == 2
    assert sum(report.emails_per_day().values()) == 1


def test_simulation_counts_only_from_the_given_time() -> None:
    rules = rule_set(compiled("any"))
    events = [validate_event(_purchase(name, days)) for name, days in (("a", 30), ("b", 1))]
    report = simulate(
        events,
        rules,
        Policy(quiet_from=None, quiet_to=None),
        count_from=TUESDAY_10 - timedelta(days=2),
    )
    assert report.counted_events == 1
    assert report.totals("any").emails == 1


def test_simulation_at_a_given_clock_decides_in_arrival_order_at_that_moment() -> None:
    rules = rule_set(
        compiled(
            "second-big-order",
            where={"field": "event.total", "op": "gte", "value": 1000},
            audience={"field": "customer.orders_count", "op": "gte", "value": 2},
        )
    )
    # Arrival order differs from time order: the later, big purchase arrives first.
    events = [
        validate_event(_purchase("big", 1)),
        validate_event(_purchase("small", 3, total="10.00")),
    ]
    policy = Policy(quiet_from=None, quiet_to=None)
    at = TUESDAY_10 + timedelta(hours=1)
    arrived = simulate(events, rules, policy, at=at)
    assert arrived.clock.startswith(at.isoformat())
    # Ingested as they arrive, the big order is the customer's first: not in the audience.
    assert arrived.outcomes == {}
    assert arrived.not_matched["second-big-order"] == 2
    live = simulate(events, rules, policy)
    assert live.clock == "each event's own time"
    # In time order the big order is the second one, and at its own time it is planned.
    assert dict(live.outcomes) == {("second-big-order", "planned", None): 1}


def test_an_erased_event_counts_its_order_and_decides_nothing() -> None:
    """Replayed as ingest stores an event from before its customer's erasure request:
    its order counts in the aggregates (so the next purchase is the second), it decides
    nothing, and a later copy of its id is a duplicate."""
    rules = rule_set(
        compiled(
            "second-order",
            audience={"field": "customer.orders_count", "op": "gte", "value": 2},
        )
    )
    events = [
        validate_event(_purchase("before", 3)),
        validate_event(_purchase("before", 3)),  # a copy: a duplicate, erased or not
        validate_event(_purchase("after", 1)),
    ]
    policy = Policy(quiet_from=None, quiet_to=None)
    report = simulate(events, rules, policy, erased=lambda event: event.id == "before")
    assert (report.events, report.erased_events, report.counted_events) == (2, 1, 1)
    assert report.not_matched["second-order"] == 0  # "before" was not decided at all
    assert dict(report.outcomes) == {("second-order", "planned", None): 1}
    plain = simulate(events, rules, policy)
    assert plain.erased_events == 0 and plain.not_matched["second-order"] == 1
