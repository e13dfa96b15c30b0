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

Sequences (campaigns with ``steps``) are replayed whole: entries, each step judged when it
falls due as the worker's step planner judges it (live: between the events; with ``at``:
after all of them, as the dispatcher's next poll would), every sequence run to its end,
and the exits. Those figures are in ``entries``, ``steps`` and ``exits``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from triggers.decide import (
    Displaced,
    Later,
    PastSend,
    Policy,
    Subject,
    consent_block,
    decide,
    email_spans,
    gap_clash,
    min_gap,
    recheck,
    standing_block,
    subject_for,
)
from triggers.events import AnyEvent, PurchaseEvent
from triggers.facts import CustomerProfile, apply_customer, apply_purchase, build_facts, purchase_of
from triggers.outcomes import Decision, SkipReason
from triggers.rule_set import RuleSet
from triggers.schedule import resolve_zone
from triggers.sequences import (
    DueStep,
    Enrollment,
    ExitReason,
    Sequencer,
    enrollment_facts,
    happening_of,
)

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
    # Events stored erased (they predate their customer's erasure request): no decision.
    erased_events: int = 0
    by_campaign_day: dict[tuple[str, date], DayTally] = field(
        default_factory=lambda: defaultdict(DayTally)
    )
    not_matched: Counter[str] = field(default_factory=Counter)
    # (campaign, outcome, reason) -> count: the rows ``sends`` would get, plus DUPLICATE.
    outcomes: Counter[tuple[str, str, str | None]] = field(default_factory=Counter)
    # Sequences: entries (campaign, "enrolled" | "held_out" | "already_enrolled"), each
    # step's fate (campaign, step, "sent" | "held_out" | "skipped", reason) and the exits
    # (campaign, reason). A step counted "sent" is one the worker would plan and send.
    entries: Counter[tuple[str, str]] = field(default_factory=Counter)
    steps: Counter[tuple[str, str, str, str | None]] = field(default_factory=Counter)
    exits: Counter[tuple[str, str]] = field(default_factory=Counter)

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
    erased: Callable[[AnyEvent], bool] = lambda event: False,
) -> SimulationReport:
    """Replay ``events``; only events at or after ``count_from`` are counted.

    ``at`` is the clock (see the module docstring). ``subject_of`` adds what events do not
    carry — the suppression list and opted-out campaign kinds — from the caller's store.
    ``erased`` tells the events the store keeps erased (they occurred before their
    customer asked to be forgotten): as ingest does, such an event is seen (a later copy
    is a duplicate), its purchase counts in the customer's aggregates, and it changes no
    other profile field and decides nothing (``erased_events`` counts them).
    """
    report = SimulationReport()
    journeys = _Journeys(rules, policy, report, subject_of)
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
        profile = profiles.get(customer_id, CustomerProfile(customer_id))
        if erased(event):
            report.erased_events += 1
            if isinstance(event, PurchaseEvent) and event.data.order_id not in orders:
                orders.add(event.data.order_id)
                profiles[customer_id] = apply_purchase(profile, *purchase_of(event))
            continue
        profile = apply_customer(profile, event.customer)
        if isinstance(event, PurchaseEvent) and event.data.order_id not in orders:
            orders.add(event.data.order_id)
            profile = apply_purchase(profile, *purchase_of(event))
        profiles[customer_id] = profile
        now = event.occurred_at if at is None else at
        counted = count_from is None or event.occurred_at >= count_from
        if at is None:
            # Live: the steps due before this event went (or not) first.
            journeys.settle(now, profiles, history)
        journeys.observe(event, customer_id, profile, now)
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
        report.counted_events += counted
        zone = resolve_zone("customer", profile.timezone, policy.default_timezone)
        for decision in decisions:
            if decision.outcome == "enrolled":
                journeys.enter(decision, event, now, counted)
                continue
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
    # Then every sequence to its end, each step at its own time (the dispatcher's polls).
    journeys.finish(profiles, history, at)
    return report


class _Journeys:
    """The sequences of a replay: an in-memory enrollment book moved by the worker's
    rules (``triggers.sequences``), each due step judged like the step planner judges it.

    Not predicted: ``exit_when: purchase: offered`` (what an email offered depends on the
    catalog and stock at sending), and delivery failures."""

    def __init__(
        self,
        rules: RuleSet,
        policy: Policy,
        report: SimulationReport,
        subject_of: Callable[[CustomerProfile], Subject],
    ) -> None:
        self.rules, self.policy, self.report, self.subject_of = rules, policy, report, subject_of
        self.book = Sequencer()
        self.sequences = rules.sequences()
        self.entry_events: dict[int, AnyEvent] = {}
        self.counted: dict[int, bool] = {}

    def enter(self, decision: Decision, event: AnyEvent, now: datetime, counted: bool) -> None:
        compiled = self.rules.by_id(decision.campaign_id)
        assert compiled is not None and decision.variant is not None
        held = decision.reason == SkipReason.HOLDOUT
        entered_at = min(event.occurred_at, now)
        enrollment = self.book.enter(
            compiled.campaign, event.customer.id, event.id, entered_at, decision.variant, held
        )
        label = (
            SkipReason.ALREADY_ENROLLED
            if enrollment is None
            else "held_out"
            if held
            else "enrolled"
        )
        if counted:
            self.report.entries[(decision.campaign_id, label)] += 1
        if enrollment is not None:
            self.entry_events[enrollment.id] = event
            self.counted[enrollment.id] = counted

    def observe(
        self, event: AnyEvent, customer_id: str, profile: CustomerProfile, now: datetime
    ) -> None:
        if not self.book.enrollments:
            return
        if standing_block_any(self.subject_of(profile)):
            for enrollment in self.book.enrollments:
                if enrollment.customer_id == customer_id and enrollment.active:
                    self._end(enrollment, now, ExitReason.UNSUBSCRIBED)
        for ended in self.book.observe(
            self.sequences, customer_id, happening_of(event), now, event.id
        ):
            if ended.exit_reason is not None and self.counted.get(ended.id, True):
                self.report.exits[(ended.campaign_id, ended.exit_reason)] += 1

    def _end(self, enrollment: Enrollment, now: datetime, reason: ExitReason) -> None:
        self.book.end(enrollment, now, reason)
        if self.counted.get(enrollment.id, True):
            self.report.exits[(enrollment.campaign_id, reason)] += 1

    def settle(
        self,
        until: datetime,
        profiles: Mapping[str, CustomerProfile],
        history: Mapping[str, list[PastSend]],
        floor: datetime | None = None,
    ) -> None:
        """Resolve every step due by ``until`` in time order, each at its due time (or at
        ``floor``, the replay's one clock, when it was due before)."""
        while due := self.book.due(self.sequences, until):
            enrollment, step = due[0]
            self._resolve(enrollment, step, profiles, history, floor)

    def finish(
        self,
        profiles: Mapping[str, CustomerProfile],
        history: Mapping[str, list[PastSend]],
        floor: datetime | None,
    ) -> None:
        """Run every open sequence to its end; count the ones that completed."""
        far = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)
        self.settle(far, profiles, history, floor)
        for enrollment in self.book.enrollments:
            if enrollment.exit_reason is ExitReason.COMPLETED and self.counted.get(
                enrollment.id, True
            ):
                self.report.exits[(enrollment.campaign_id, ExitReason.COMPLETED)] += 1

    def _resolve(
        self,
        enrollment: Enrollment,
        due: DueStep,
        profiles: Mapping[str, CustomerProfile],
        history: Mapping[str, list[PastSend]],
        floor: datetime | None,
    ) -> None:
        """Judge one due step as the step planner would, at its due time."""
        at = max(due.due_at, floor) if floor is not None else due.due_at
        compiled = self.rules.by_id(enrollment.campaign_id)
        assert compiled is not None
        campaign = compiled.campaign
        profile = profiles.get(enrollment.customer_id, CustomerProfile(enrollment.customer_id))
        subject = self.subject_of(profile)
        if standing_block(campaign, subject) is not None:
            self._end(enrollment, at, ExitReason.UNSUBSCRIBED)
            return
        sequence = self.sequences[campaign.id]
        facts = build_facts(self.entry_events[enrollment.id], profile, at) | enrollment_facts(
            enrollment.entered_at,
            at,
            enrollment.steps_sent,
            enrollment.categories_since_entry,
            enrollment.purchased_since_entry,
        )
        expires_at = at + campaign.schedule.expire_after
        mine = history.get(enrollment.customer_id, [])
        only_if = sequence.only_if.get(due.step.id)
        outcome, reason, send_at = "sent", None, at
        if enrollment.held_out:
            outcome, reason = "held_out", SkipReason.HOLDOUT
        elif only_if is not None and not only_if(facts):
            outcome, reason = "skipped", SkipReason.STEP_CONDITION
        else:
            gone = [replace(p, status="sent") if p.at <= at else p for p in mine]
            verdict = recheck(
                rules=self.rules,
                campaign_id=campaign.id,
                facts=facts,
                subject=subject,
                history=gone,
                policy=self.policy,
                now=at,
                expires_at=expires_at,
                step=due.step,
            )
            if isinstance(verdict, Later):
                send_at = verdict.send_at
            elif verdict is not None:
                outcome, reason = "skipped", verdict
            if outcome == "sent":
                clash = gap_clash(
                    send_at, email_spans(mine, self.rules), min_gap(campaign, self.policy)
                )
                if clash is not None and self.policy.over_cap == "drop":
                    outcome, reason = "skipped", SkipReason.MIN_GAP
                elif clash is not None:
                    send_at = clash
            if outcome == "sent" and send_at > expires_at:
                outcome, reason = "skipped", SkipReason.EXPIRED
        if outcome != "skipped" and enrollment.customer_id in history:
            history[enrollment.customer_id].append(
                PastSend(campaign.id, "planned" if outcome == "sent" else outcome, send_at)
            )
        self.book.resolve(enrollment, due, send_at if outcome == "sent" else at, outcome, reason)
        if self.counted.get(enrollment.id, True):
            self.report.steps[(campaign.id, due.step.id, outcome, reason)] += 1


def standing_block_any(subject: Subject) -> bool:
    """Whether the customer may receive no marketing email at all (consent, suppression)."""
    return consent_block(subject.email_marketing, subject.has_email, subject.suppressed) is not None
