"""Dry-run a stream of events against a rule set: what would fire, when, and what not.

Each event is decided as if it were processed when it happened, with customer profiles
and send history rebuilt in memory from the events before it. Nothing is sent or
stored; the report counts, per campaign and day, emails, holdouts and skips by reason.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from triggers.decide import PastSend, Policy, Subject, decide
from triggers.events import AnyEvent, PurchaseEvent
from triggers.facts import CustomerProfile, apply_customer, apply_purchase, build_facts, purchase_of
from triggers.loader import RuleSet
from triggers.schedule import resolve_zone


@dataclass
class DayTally:
    emails: int = 0
    held_out: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass
class SimulationReport:
    events: int = 0
    counted_events: int = 0
    by_campaign_day: dict[tuple[str, date], DayTally] = field(
        default_factory=lambda: defaultdict(DayTally)
    )
    not_matched: Counter[str] = field(default_factory=Counter)

    def emails_per_day(self) -> dict[date, int]:
        totals: Counter[date] = Counter()
        for (_, day), tally in self.by_campaign_day.items():
            totals[day] += tally.emails
        return dict(sorted(totals.items()))

    def totals(self, campaign_id: str) -> DayTally:
        total = DayTally()
        for (campaign, _), tally in self.by_campaign_day.items():
            if campaign == campaign_id:
                total.emails += tally.emails
                total.held_out += tally.held_out
                total.skipped.update(tally.skipped)
        return total


def simulate(
    events: Iterable[AnyEvent],
    rules: RuleSet,
    policy: Policy,
    *,
    count_from: datetime | None = None,
    is_suppressed: Callable[[str | None], bool] = lambda _email: False,
) -> SimulationReport:
    """Replay ``events`` in time order; only events at or after ``count_from`` are counted."""
    report = SimulationReport()
    profiles: dict[str, CustomerProfile] = {}
    history: dict[str, list[PastSend]] = defaultdict(list)
    orders: set[str] = set()
    seen: set[str] = set()
    for event in sorted(events, key=lambda e: e.occurred_at):
        if event.id in seen:
            continue
        seen.add(event.id)
        report.events += 1
        customer_id = event.customer.id
        profile = apply_customer(
            profiles.get(customer_id, CustomerProfile(customer_id)), event.customer
        )
        if isinstance(event, PurchaseEvent) and event.data.order_id not in orders:
            orders.add(event.data.order_id)
            profile = apply_purchase(profile, *purchase_of(event))
        profiles[customer_id] = profile
        now = event.occurred_at
        decisions = decide(
            rules=rules,
            event_type=event.type,
            event_id=event.id,
            triggered_at=now,
            facts=build_facts(event, profile, now),
            subject=Subject(
                customer_id,
                bool(profile.email),
                profile.email_marketing,
                is_suppressed(profile.email),
                profile.timezone,
            ),
            history=history[customer_id],
            policy=policy,
            now=now,
        )
        counted = count_from is None or now >= count_from
        report.counted_events += counted
        for decision in decisions:
            if decision.outcome in ("planned", "held_out"):
                history[customer_id].append(
                    PastSend(decision.campaign_id, decision.outcome, decision.send_at or now)
                )
            if not counted:
                continue
            if decision.outcome == "not_matched":
                report.not_matched[decision.campaign_id] += 1
                continue
            moment = decision.send_at or now
            zone = resolve_zone("customer", profile.timezone, policy.default_timezone)
            tally = report.by_campaign_day[(decision.campaign_id, moment.astimezone(zone).date())]
            if decision.outcome == "planned":
                tally.emails += 1
            elif decision.outcome == "held_out":
                tally.held_out += 1
            else:
                tally.skipped[decision.reason or "unknown"] += 1
    return report
