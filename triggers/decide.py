"""Decide which campaigns an event fires and plan their sends — the heart of the engine.

``decide`` is a pure function of the event's facts, the customer's send history, the rule
set, the policy and the time. Every campaign whose trigger matched gets a decision with a
status and, when it is not planned, the reason; campaigns whose conditions did not match
are reported too, so the worker can record why nothing fired.

``recheck`` is the same rules asked again just before a planned send goes out ("may it
still go now?"): the worker's delivery step, ``explain`` and ``preview`` all use it, so
there is one decision path, whatever the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import lru_cache
from typing import Literal

from triggers.campaigns import Campaign, Step
from triggers.facts import CustomerProfile
from triggers.outcomes import Decision, SkipReason, skipped
from triggers.rule_set import CompiledCampaign, RuleSet
from triggers.schedule import (
    DailyWindow,
    next_allowed,
    plan_in_windows,
    quiet_hours_window,
    resolve_zone,
    send_windows,
)
from triggers.sequences import step_window

COUNTED_STATUSES = frozenset({"planned", "queued", "sending", "sent"})
MARKETING_HISTORY = COUNTED_STATUSES | {"held_out"}
# At sending only the emails that went out (or are going out right now) count: a planned
# one may still be skipped, and it is rechecked itself when its turn comes.
SETTLED_STATUSES = frozenset({"sending", "sent"})
DEFAULT_MIN_GAP = timedelta(hours=20)


@dataclass(frozen=True, slots=True)
class Policy:
    """Engine-wide limits from settings; a campaign may be stricter, never looser.

    ``min_gap`` is the least time between two marketing emails to one customer
    (``CROSSSELL_MIN_GAP``); ``over_cap`` decides both what happens over the global cap and
    to an email that would come too close to another: ``drop`` it, or ``defer`` it.
    """

    max_emails_per_customer: int = 3
    cap_window: timedelta = timedelta(days=7)
    max_campaigns_per_event: int = 1
    quiet_from: time | None = time(21, 0)
    quiet_to: time | None = time(8, 0)
    default_timezone: str = "UTC"
    over_cap: Literal["drop", "defer"] = "drop"
    min_gap: timedelta = DEFAULT_MIN_GAP


@dataclass(frozen=True, slots=True)
class PastSend:
    """One of the customer's sends: when it went or goes (``at``) and in which status.

    ``send_id`` and ``expires_at`` let a planned one make room for a higher-priority
    email (see ``Displaced``); without them it keeps its place.
    """

    campaign_id: str
    status: str
    at: datetime
    send_id: int | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Displaced:
    """A planned, not yet sent email of a lower-priority campaign that gives its place to
    a higher-priority one planned within its gap: under ``over_cap: drop`` it is skipped
    (``min_gap``); under ``defer`` it moves past the gap (``deferred_by_gap``, ``send_at``)
    or is skipped when that is after its expiry."""

    send_id: int
    campaign_id: str
    outcome: Literal["planned", "skipped"]
    reason: SkipReason
    send_at: datetime | None


class Decisions(list[Decision]):
    """``decide``'s outcomes, one per campaign, plus the planned sends that made room."""

    __slots__ = ("displaced",)

    def __init__(self, decisions: Iterable[Decision] = ()) -> None:
        super().__init__(decisions)
        self.displaced: list[Displaced] = []


def dedupe_key(campaign: Campaign, customer_id: str, event_id: str, triggered_at: datetime) -> str:
    """One key per (campaign, customer, dedupe window): the plan cannot be made twice."""
    if campaign.frequency.once_per_customer:
        return f"{campaign.id}|{customer_id}|once"
    cooldown = campaign.frequency.cooldown
    if cooldown:
        # An aware instant's timestamp does not depend on its zone: no conversion needed.
        window = int(triggered_at.timestamp() // cooldown.total_seconds())
        return f"{campaign.id}|{customer_id}|w{window}"
    return f"{campaign.id}|{customer_id}|e{event_id}"


def frequency_block(
    campaign: Campaign,
    history: Sequence[PastSend],
    policy: Policy,
    now: datetime,
    extra: int = 0,
    counted: int | None = None,
) -> SkipReason | None:
    """The reason a further email of ``campaign`` would be too many, or None.

    ``counted`` is the number of emails under the global cap, when the caller has it.
    """
    if not history:
        return SkipReason.FREQUENCY_CAP if extra >= policy.max_emails_per_customer else None
    mine = [past for past in history if past.campaign_id == campaign.id]
    if campaign.frequency.once_per_customer and any(
        past.status in MARKETING_HISTORY for past in mine
    ):
        return SkipReason.ONCE_PER_CUSTOMER
    cooldown = campaign.frequency.cooldown
    if cooldown and any(
        past.status in MARKETING_HISTORY and now - past.at < cooldown for past in mine
    ):
        return SkipReason.COOLDOWN
    limit = campaign.frequency.max_sends
    if limit and (
        sum(1 for past in mine if past.status in MARKETING_HISTORY and now - past.at < limit.period)
        >= limit.count
    ):
        return SkipReason.MAX_SENDS
    if counted is None:
        counted = _count_counted(history, policy, now)
    if counted + extra >= policy.max_emails_per_customer:
        return SkipReason.FREQUENCY_CAP
    return None


def _count_counted(history: Sequence[PastSend], policy: Policy, now: datetime) -> int:
    """How many emails count against the global cap at ``now`` (``_counted`` without sorting)."""
    window = policy.cap_window
    return sum(1 for past in history if past.status in COUNTED_STATUSES and now - past.at < window)


def _counted(history: Sequence[PastSend], policy: Policy, now: datetime) -> list[datetime]:
    """Times of the emails that count against the global cap at ``now``, oldest first."""
    return sorted(
        past.at
        for past in history
        if past.status in COUNTED_STATUSES and now - past.at < policy.cap_window
    )


def cap_frees_at(
    history: Sequence[PastSend], policy: Policy, now: datetime, extra: int = 0
) -> datetime | None:
    """The first moment one more email fits under the global cap (for ``over_cap: defer``)."""
    times = _counted(history, policy, now)
    must_expire = len(times) + extra - policy.max_emails_per_customer + 1
    if must_expire <= 0:
        return now
    if must_expire > len(times):
        return None
    return times[must_expire - 1] + policy.cap_window


def min_gap(campaign: Campaign, policy: Policy) -> timedelta:
    """The spacing this campaign's email needs from any other marketing email to the same
    customer: the global ``min_gap`` or the campaign's own ``frequency.min_gap``, whichever
    is longer (a campaign may ask for more, never for less)."""
    own = campaign.frequency.min_gap
    return own if own is not None and own > policy.min_gap else policy.min_gap


# (when, the spacing its campaign asks beyond the global gap, the send if it could yield)
Span = tuple[datetime, timedelta, PastSend | None]


def email_spans(history: Sequence[PastSend], rules: RuleSet) -> list[Span]:
    """Each email of the customer (held-out sends are not emails) with the spacing its own
    campaign asks for beyond the global one (zero when none, or when the campaign is gone)."""
    spans: list[Span] = []
    for past in history:
        if past.status in COUNTED_STATUSES:
            compiled = rules.by_id(past.campaign_id)
            own = compiled.campaign.frequency.min_gap if compiled is not None else None
            spans.append((past.at, own or timedelta(0), past))
    return spans


def crowding(send_at: datetime, spans: Sequence[Span], gap: timedelta) -> list[Span]:
    """The emails closer to ``send_at`` (before or after) than the longer of the two gaps."""
    return [span for span in spans if abs(send_at - span[0]) < max(gap, span[1])]


def gap_clash(send_at: datetime, spans: Sequence[Span], gap: timedelta) -> datetime | None:
    """The earliest moment after every email that crowds ``send_at``, or None if none does."""
    ends = [at + max(gap, own) for at, own, _ in crowding(send_at, spans, gap)]
    return max(ends) if ends else None


def _yields(span: Span, campaign: Campaign, rules: RuleSet, now: datetime) -> bool:
    """Whether this email makes room for ``campaign``'s: only a known send still waiting
    for its time (planned, due after ``now``: one already due may be on its way), of an
    active campaign of strictly lower priority; ties keep their place."""
    past = span[2]
    if past is None or past.status != "planned" or past.send_id is None or past.at <= now:
        return False
    compiled = rules.by_id(past.campaign_id)
    return (
        compiled is not None
        and compiled.campaign.status == "active"
        and compiled.campaign.priority < campaign.priority
    )


def consent_block(
    email_marketing: bool | None, has_email: bool, suppressed: bool
) -> SkipReason | None:
    """Consent and suppression are enforced by the engine; no campaign can switch them off."""
    if not has_email:
        return SkipReason.NO_EMAIL
    if email_marketing is not True:
        return SkipReason.NO_CONSENT
    if suppressed:
        return SkipReason.SUPPRESSED
    return None


def standing_block(campaign: Campaign, subject: Subject) -> SkipReason | None:
    """The customer's own say, in the engine's order: consent, suppression, then the
    campaign kinds they opted out of on the preference page."""
    blocked = consent_block(subject.email_marketing, subject.has_email, subject.suppressed)
    if blocked is not None:
        return blocked
    if campaign.kind in subject.opted_out_kinds:
        return SkipReason.OPTED_OUT
    return None


@dataclass(frozen=True, slots=True)
class Subject:
    """The customer an event is about, as far as the decision needs to know."""

    id: str
    has_email: bool
    email_marketing: bool | None
    suppressed: bool
    timezone: str | None
    opted_out_kinds: frozenset[str] = frozenset()


def subject_for(
    profile: CustomerProfile, *, suppressed: bool, opted_out_kinds: Iterable[str] = ()
) -> Subject:
    """The ``Subject`` of a customer profile plus what the profile does not hold: whether
    the address is on the suppression list and which campaign kinds the customer turned
    off on the preference page. Every caller (ingest, delivery, explain, simulate,
    preview) builds its subject here, so none can forget one of them."""
    return Subject(
        profile.id,
        bool(profile.email),
        profile.email_marketing,
        suppressed,
        profile.timezone,
        frozenset(opted_out_kinds),
    )


@lru_cache(maxsize=64)
def _quiet_window(quiet_from: time | None, quiet_to: time | None) -> DailyWindow | None:
    if quiet_from is None or quiet_to is None:
        return None
    return quiet_hours_window(quiet_from, quiet_to)


def decide(
    *,
    rules: RuleSet,
    event_type: str,
    event_id: str,
    triggered_at: datetime,
    facts: Mapping[str, object],
    subject: Subject,
    history: Sequence[PastSend],
    policy: Policy,
    now: datetime,
) -> Decisions:
    """One outcome per campaign of the rule set (see the module docstring); and in
    ``.displaced`` the customer's planned emails that make room for a higher-priority one."""
    # Every campaign starts as "trigger did not match"; only the prefilter's candidates
    # are evaluated, and their entries replaced.
    checks = rules.checks(event_type)
    ranks = rules.ranks(event_type)
    decisions = Decisions(rules.misses(event_type))
    matched: list[tuple[int, int]] = []  # (priority rank, position)
    for position in rules.candidates(event_type, facts):
        miss = checks[position](facts)  # trigger, then audience: None when both hold
        if miss is None:
            matched.append((ranks[position], position))
        else:
            decisions[position] = miss
    if matched and rules.has_sequences(event_type):
        matched = _enter_sequences(
            rules, event_type, matched, event_id, triggered_at, subject, now, decisions
        )
    if not matched:
        return decisions
    matched.sort()  # highest priority first, ties by id (the ranks say so)
    active = rules.active_for(event_type)
    ranked = [active[position] for _, position in matched]
    consent = consent_block(subject.email_marketing, subject.has_email, subject.suppressed)
    if consent is None:
        decided = _choose(
            rules, ranked, event_id, triggered_at, subject, history, policy, now, decisions
        )
    else:
        decided = _skip_all(ranked, consent, subject.id, event_id)
    # The matched campaigns' slots, in list order, receive their outcomes in priority
    # order: the list reads as "not matched …, then the matched ones, best first".
    for position, outcome in zip(sorted(p for _, p in matched), decided, strict=True):
        decisions[position] = outcome
    return decisions


def _enter_sequences(
    rules: RuleSet,
    event_type: str,
    matched: list[tuple[int, int]],
    event_id: str,
    triggered_at: datetime,
    subject: Subject,
    now: datetime,
    out: Decisions,
) -> list[tuple[int, int]]:
    """Entry decisions for the matched campaigns with steps; returns the others.

    Entering a sequence sends nothing by itself, so it takes no place among the event's
    ``max_campaigns_per_event``: each step is planned when due and checked then like any
    email. A customer who may not be emailed (consent, suppression, opted-out kind) does
    not enter; nor does one whose first step would have expired already (an old event
    replayed late: ``expired``). A held-out one enters with reason ``holdout``, fixed for
    the whole enrollment. The entry time is the event's ``triggered_at``.
    Whether the ``reenter`` rule lets them in is the enrollment book's to say (the worker's
    unique entry slot, ``triggers.sequences.may_enter``).
    """
    active = rules.active_for(event_type)
    rest: list[tuple[int, int]] = []
    for rank, position in matched:
        compiled = active[position]
        if compiled.sequence is None:
            rest.append((rank, position))
            continue
        campaign = compiled.campaign
        key = f"{campaign.id}|{subject.id}|enter|{event_id}"
        blocked = standing_block(campaign, subject)
        first = compiled.sequence.steps[0]
        if blocked is None and now > triggered_at + first.delay + campaign.schedule.expire_after:
            blocked = SkipReason.EXPIRED
        if blocked is not None:
            out[position] = skipped(campaign.id, blocked, key)
            continue
        assignment = compiled.assign(subject.id)
        out[position] = Decision(
            campaign.id,
            "enrolled",
            SkipReason.HOLDOUT if assignment.held_out else None,
            assignment.variant.id,
            None,
            None,
            None,
            key,
        )
    return rest


def _skip_all(
    ranked: Sequence[CompiledCampaign], reason: SkipReason, customer_id: str, event_id: str
) -> list[Decision]:
    """The same skip for every campaign (no consent, or ranked below the chosen ones):
    one cheap outcome each, nothing else looked at."""
    return [skipped(c.id, reason, f"{c.id}|{customer_id}|skip|{event_id}") for c in ranked]


def _choose(
    rules: RuleSet,
    ranked: Sequence[CompiledCampaign],
    event_id: str,
    triggered_at: datetime,
    subject: Subject,
    history: Sequence[PastSend],
    policy: Policy,
    now: datetime,
    out: Decisions,
) -> list[Decision]:
    """Outcomes of matched campaigns, best first, for a customer who may be emailed:
    walk down the ranking until ``max_campaigns_per_event`` sends are planned. Planned
    emails that make room for them are added to ``out.displaced``."""
    decided: list[Decision] = []
    quiet = _quiet_window(policy.quiet_from, policy.quiet_to)
    chosen = 0
    yielding: list[Span] = []
    counted = _count_counted(history, policy, now)
    spans: list[Span] | None = None  # built on first need: most events never get here
    for index, compiled in enumerate(ranked):
        if chosen >= policy.max_campaigns_per_event:
            # A campaign ranked below the ones already chosen loses to them, whatever its
            # own frequency state: the decisive reason is the ranking.
            return decided + _skip_all(
                ranked[index:], SkipReason.LOWER_PRIORITY, subject.id, event_id
            )
        campaign = compiled.campaign
        yielding = []
        skip_key = f"{campaign.id}|{subject.id}|skip|{event_id}"
        reason: SkipReason | None = (
            SkipReason.OPTED_OUT
            if campaign.kind in subject.opted_out_kinds
            else frequency_block(campaign, history, policy, now, extra=chosen, counted=counted)
        )
        earliest = now
        deferred: SkipReason | None = None
        if reason is SkipReason.FREQUENCY_CAP and policy.over_cap == "defer":
            frees_at = cap_frees_at(history, policy, now, extra=chosen)
            if frees_at is not None:
                reason, earliest = None, frees_at
                deferred = SkipReason.DEFERRED_BY_CAP if frees_at > now else None
        if reason is not None:
            decided.append(skipped(campaign.id, reason, skip_key))
            continue
        assignment = compiled.assign(subject.id)
        zone = resolve_zone(campaign.schedule.timezone, subject.timezone, policy.default_timezone)
        windows = compiled.send_windows(quiet)
        timing = plan_in_windows(campaign.schedule, windows, triggered_at, earliest, zone)
        gap = min_gap(campaign, policy)
        if not timing.expired and not assignment.held_out and (history or chosen):
            if spans is None:
                spans = email_spans(history, rules)
            crowded = crowding(timing.send_at, spans, gap) if spans else []
            if crowded and all(_yields(span, campaign, rules, now) for span in crowded):
                # Every email in the way is a lower-priority one still only planned:
                # priority decides, they make room (after this one is placed, below).
                yielding = crowded
            elif crowded:
                if policy.over_cap == "drop":
                    decided.append(skipped(campaign.id, SkipReason.MIN_GAP, skip_key))
                    continue
                # Deferred past every email it would crowd (then into the window), so the
                # customer's emails stay in the order they were planned.
                latest = max(at + max(gap, own) for at, own, _ in spans)
                earliest = max(earliest, latest)
                deferred = SkipReason.DEFERRED_BY_GAP
                timing = plan_in_windows(campaign.schedule, windows, triggered_at, earliest, zone)
        variant = assignment.variant
        if timing.expired:
            decided.append(
                Decision(
                    campaign.id,
                    "skipped",
                    SkipReason.EXPIRED
                    if deferred is None
                    else SkipReason.MIN_GAP
                    if deferred is SkipReason.DEFERRED_BY_GAP
                    else SkipReason.FREQUENCY_CAP,
                    variant.id,
                    variant.template,
                    timing.send_at,
                    timing.expires_at,
                    skip_key,
                )
            )
            continue
        chosen += 1
        if not assignment.held_out:
            if spans is None:
                spans = email_spans(history, rules)
            # The next campaign of this event keeps its distance from this one.
            spans.append((timing.send_at, campaign.frequency.min_gap or timedelta(0), None))
            if yielding:
                _make_room(yielding, spans, rules, subject, policy, quiet, out)
                yielding = []
        decided.append(
            Decision(
                campaign.id,
                "held_out" if assignment.held_out else "planned",
                SkipReason.HOLDOUT if assignment.held_out else deferred,
                variant.id,
                variant.template,
                timing.send_at,
                timing.expires_at,
                dedupe_key(campaign, subject.id, event_id, triggered_at),
            )
        )
    return decided


def _make_room(
    yielding: Sequence[Span],
    spans: list[Span],
    rules: RuleSet,
    subject: Subject,
    policy: Policy,
    quiet: DailyWindow | None,
    out: Decisions,
) -> None:
    """Skip (``drop``) or move past every other email (``defer``) the planned emails that
    gave their place; ``spans`` is updated so later campaigns of the event see the result."""
    for span in yielding:
        spans.remove(span)
    for _, own, past in yielding:
        assert past is not None and past.send_id is not None  # _yields checked it
        compiled = rules.by_id(past.campaign_id)
        assert compiled is not None
        if policy.over_cap == "drop":
            out.displaced.append(
                Displaced(past.send_id, past.campaign_id, "skipped", SkipReason.MIN_GAP, None)
            )
            continue
        gap = min_gap(compiled.campaign, policy)
        earliest = max(at + max(gap, other) for at, other, _ in spans)
        zone = resolve_zone(
            compiled.campaign.schedule.timezone, subject.timezone, policy.default_timezone
        )
        windows = compiled.send_windows(quiet)
        send_at = next_allowed(earliest, windows, zone) if windows else earliest
        if past.expires_at is not None and send_at > past.expires_at:
            out.displaced.append(
                Displaced(past.send_id, past.campaign_id, "skipped", SkipReason.MIN_GAP, None)
            )
            continue
        out.displaced.append(
            Displaced(
                past.send_id, past.campaign_id, "planned", SkipReason.DEFERRED_BY_GAP, send_at
            )
        )
        moved = PastSend(past.campaign_id, "planned", send_at, past.send_id, past.expires_at)
        spans.append((send_at, own, moved))


@dataclass(frozen=True, slots=True)
class Later:
    """Not now, but at ``send_at``: the recheck's answer when only the time is wrong."""

    send_at: datetime
    reason: SkipReason


def recheck(
    *,
    rules: RuleSet,
    campaign_id: str,
    facts: Mapping[str, object],
    subject: Subject,
    history: Sequence[PastSend],
    policy: Policy,
    now: datetime,
    expires_at: datetime | None,
    step: Step | None = None,
) -> SkipReason | Later | None:
    """May this planned send still go out at ``now``? None: yes; a reason: never; ``Later``:
    at that time (spacing deferred under ``over_cap: defer``, or outside the window).

    The same checks as ``decide``, in the same order — campaign still active and not
    expired, consent and suppression, opted-out kinds, audience on fresh facts, frequency,
    spacing, window and quiet hours — against ``history`` without the send itself. A
    sequence ``step`` with its own ``window`` is timed by that window instead. Only
    emails that went out (``SETTLED_STATUSES``) count here: a planned one may yet be
    skipped and is rechecked when its own turn comes.
    """
    compiled = rules.by_id(campaign_id)
    if compiled is None or compiled.campaign.status != "active":
        return SkipReason.CAMPAIGN_INACTIVE
    campaign = compiled.campaign
    if expires_at is not None and now > expires_at:
        return SkipReason.EXPIRED
    blocked = standing_block(campaign, subject)
    if blocked is not None:
        return blocked
    if not compiled.audience(facts):
        return SkipReason.AUDIENCE
    settled = [past for past in history if past.status in SETTLED_STATUSES]
    capped = frequency_block(campaign, settled, policy, now)
    if capped is not None:
        return capped
    earliest, reason = now, SkipReason.OUTSIDE_WINDOW
    clash = gap_clash(now, email_spans(settled, rules), min_gap(campaign, policy))
    if clash is not None:
        if policy.over_cap == "drop":
            return SkipReason.MIN_GAP
        earliest, reason = clash, SkipReason.DEFERRED_BY_GAP
    zone = resolve_zone(campaign.schedule.timezone, subject.timezone, policy.default_timezone)
    quiet = _quiet_window(policy.quiet_from, policy.quiet_to)
    windows = (
        send_windows(step_window(step.window), quiet)
        if step is not None and step.window is not None
        else compiled.send_windows(quiet)
    )
    allowed = next_allowed(earliest, windows, zone) if windows else earliest
    # A retry or a late dispatch must not land at 3 a.m., outside the window or too close
    # to the email that just went.
    return Later(allowed, reason) if allowed > now else None
