"""Dry-run a stream of events against a rule set: what would fire, when, and what not.

Customer profiles and send history are rebuilt in memory from the events before each one,
exactly as ingest builds them in the database; nothing is sent or stored. Two clocks:

* ``at=None``: each event is decided at its own ``occurred_at``, events in time order —
  what a worker that had processed them live would have done;
* ``at`` given: every event is decided at that one instant, in the order given (arrival
  order, as a consumer drains its queue) — what the worker plans if it ingests them now.
  With the pipeline's clock and settings this predicts the pipeline's plan exactly.

The report counts, per campaign and day, emails, holdouts and skips by reason, and per
(campaign, outcome, reason) the same figures the ``sends`` table would hold.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from zoneinfo import ZoneInfo

from triggers.decide import Displaced, PastSend, Policy, Subject, decide, subject_for
from triggers.events import AnyEvent, PurchaseEvent
from triggers.facts import CustomerProfile, apply_customer, apply_purchase, build_facts, purchase_of
from triggers.loader import RuleSet
from triggers.outcomes import SkipReason
from triggers.schedule import resolve_zone

# What ``outcomes`` files a plan under when its dedupe key was already taken: ingest
# writes no send for it (the event's outcome says ``already_planned:<send id>``).
DUPLICATE = "duplicate"


@dataclass
class DayTally:
    emails: int = 0
    held_out: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass
class SimulationReport:
    clock: str = "each event's own time"
    events: int = 0
    counted_events: int = 0
    by_campaign_day: dict[tuple[str, date], DayTally] = field(
        default_factory=lambda: defaultdict(DayTally)
    )
    not_matched: Counter[str] = field(default_factory=Counter)
    # (campaign, outcome, reason) -> count: the rows ``sends`` would get, plus DUPLICATE.
    outcomes: Counter[tuple[str, str, str | None]] = field(default_factory=Counter)

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


def _make_room(
    report: SimulationReport,
    history: list[PastSend],
    moved: Displaced,
    counted: bool,
    reason_before: str | None,
    zone: ZoneInfo,
) -> None:
    """Apply what ingest applies to a planned send that made room for a higher-priority
    one: its history entry moves or goes, and the report moves its count."""
    index = next(i for i, past in enumerate(history) if past.send_id == moved.send_id)
    before = history.pop(index)
    if moved.outcome == "planned" and moved.send_at is not None:
        history.append(replace(before, at=moved.send_at))
    if not counted:
        return
    report.outcomes[(before.campaign_id, "planned", reason_before)] -= 1
    report.outcomes[(before.campaign_id, moved.outcome, moved.reason)] += 1
    old_day = before.at.astimezone(zone).date()
    report.by_campaign_day[(before.campaign_id, old_day)].emails -= 1
    if moved.outcome == "planned" and moved.send_at is not None:
        new_day = moved.send_at.astimezone(zone).date()
        report.by_campaign_day[(before.campaign_id, new_day)].emails += 1
    else:
        report.by_campaign_day[(before.campaign_id, old_day)].skipped[moved.reason] += 1


def unknown_standing(profile: CustomerProfile) -> Subject:
    """A customer as the events alone describe them: not suppressed, nothing opted out."""
    return subject_for(profile, suppressed=False)


def simulate(
    events: Iterable[AnyEvent],
    rules: RuleSet,
    policy: Policy,
    *,
    count_from: datetime | None = None,
    at: datetime | None = None,
    subject_of: Callable[[CustomerProfile], Subject] = unknown_standing,
) -> SimulationReport:
    """Replay ``events``; only events at or after ``count_from`` are counted.

    ``at`` is the clock (see the module docstring). ``subject_of`` adds what events do not
    carry — the suppression list and opted-out campaign kinds — from the caller's store.
    """
    report = SimulationReport()
    if at is not None:
        report.clock = f"{at.isoformat()} for every event, in arrival order"
    profiles: dict[str, CustomerProfile] = {}
    history: dict[str, list[PastSend]] = defaultdict(list)
    orders: set[str] = set()
    seen: set[str] = set()
    taken: set[str] = set()
    # Per simulated send (its id is the index): counted in the report, and its reason.
    rows: list[tuple[bool, str | None]] = []
    ordered = sorted(events, key=lambda e: e.occurred_at) if at is None else events
    for event in ordered:
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
        now = event.occurred_at if at is None else at
        decisions = decide(
            rules=rules,
            event_type=event.type,
            event_id=event.id,
            triggered_at=event.occurred_at,
            facts=build_facts(event, profile, now),
            subject=subject_of(profile),
            history=history[customer_id],
            policy=policy,
            now=now,
        )
        counted = count_from is None or event.occurred_at >= count_from
        report.counted_events += counted
        zone = resolve_zone("customer", profile.timezone, policy.default_timezone)
        for decision in decisions:
            duplicate = False
            if decision.outcome != "not_matched" and decision.dedupe_key is not None:
                duplicate = decision.dedupe_key in taken
                taken.add(decision.dedupe_key)
            if decision.outcome in ("planned", "held_out") and not duplicate:
                send_id = len(rows)
                history[customer_id].append(
                    PastSend(
                        decision.campaign_id,
                        decision.outcome,
                        decision.send_at or now,
                        send_id,
                        decision.expires_at,
                    )
                )
                rows.append((counted, decision.reason))
            if not counted:
                continue
            if decision.outcome == "not_matched":
                report.not_matched[decision.campaign_id] += 1
                continue
            moment = decision.send_at or now
            tally = report.by_campaign_day[(decision.campaign_id, moment.astimezone(zone).date())]
            if duplicate:
                tally.skipped[SkipReason.ALREADY_PLANNED] += 1
                report.outcomes[(decision.campaign_id, DUPLICATE, SkipReason.ALREADY_PLANNED)] += 1
                continue
            report.outcomes[(decision.campaign_id, decision.outcome, decision.reason)] += 1
            if decision.outcome == "planned":
                tally.emails += 1
            elif decision.outcome == "held_out":
                tally.held_out += 1
            else:
                tally.skipped[decision.reason or "unknown"] += 1
        for moved in decisions.displaced:
            counted_before, reason_before = rows[moved.send_id]
            rows[moved.send_id] = (counted_before, moved.reason)
            _make_room(report, history[customer_id], moved, counted_before, reason_before, zone)
    return report
