"""Decide which campaigns an event fires and plan their sends — the heart of the engine.

``decide`` is a pure function of the event's facts, the customer's send history, the rule
set, the policy and the time. Every campaign whose trigger matched gets a decision with a
status and, when it is not planned, the reason; campaigns whose conditions did not match
are reported too, so the worker can record why nothing fired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import lru_cache
from typing import Literal

from triggers.campaigns import Campaign
from triggers.loader import CompiledCampaign, RuleSet
from triggers.outcomes import Decision, skipped
from triggers.schedule import DailyWindow, plan_in_windows, quiet_hours_window, resolve_zone

COUNTED_STATUSES = frozenset({"planned", "queued", "sending", "sent"})
MARKETING_HISTORY = COUNTED_STATUSES | {"held_out"}


@dataclass(frozen=True, slots=True)
class Policy:
    """Engine-wide limits from settings; a campaign may be stricter, never looser."""

    max_emails_per_customer: int = 3
    cap_window: timedelta = timedelta(days=7)
    max_campaigns_per_event: int = 1
    quiet_from: time | None = time(21, 0)
    quiet_to: time | None = time(8, 0)
    default_timezone: str = "UTC"
    over_cap: Literal["drop", "defer"] = "drop"


@dataclass(frozen=True, slots=True)
class PastSend:
    campaign_id: str
    status: str
    at: datetime


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
) -> str | None:
    """The reason a further email of ``campaign`` would be too many, or None.

    ``counted`` is the number of emails under the global cap, when the caller has it.
    """
    if not history:
        return "frequency_cap" if extra >= policy.max_emails_per_customer else None
    mine = [past for past in history if past.campaign_id == campaign.id]
    if campaign.frequency.once_per_customer and any(
        past.status in MARKETING_HISTORY for past in mine
    ):
        return "once_per_customer"
    cooldown = campaign.frequency.cooldown
    if cooldown and any(
        past.status in MARKETING_HISTORY and now - past.at < cooldown for past in mine
    ):
        return "cooldown"
    limit = campaign.frequency.max_sends
    if limit and (
        sum(1 for past in mine if past.status in MARKETING_HISTORY and now - past.at < limit.period)
        >= limit.count
    ):
        return "max_sends"
    if counted is None:
        counted = _count_counted(history, policy, now)
    if counted + extra >= policy.max_emails_per_customer:
        return "frequency_cap"
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


def consent_block(email_marketing: bool | None, has_email: bool, suppressed: bool) -> str | None:
    """Consent and suppression are enforced by the engine; no campaign can switch them off."""
    if not has_email:
        return "no_email"
    if email_marketing is not True:
        return "no_consent"
    if suppressed:
        return "suppressed"
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
) -> list[Decision]:
    # Every campaign starts as "trigger did not match"; only the prefilter's candidates
    # are evaluated, and their entries replaced.
    checks = rules.checks(event_type)
    ranks = rules.ranks(event_type)
    decisions: list[Decision] = list(rules.misses(event_type))
    matched: list[tuple[int, int]] = []  # (priority rank, position)
    for position in rules.candidates(event_type, facts):
        miss = checks[position](facts)  # trigger, then audience: None when both hold
        if miss is None:
            matched.append((ranks[position], position))
        else:
            decisions[position] = miss
    if not matched:
        return decisions
    matched.sort()  # highest priority first, ties by id (the ranks say so)
    active = rules.active_for(event_type)
    ranked = [active[position] for _, position in matched]
    consent = consent_block(subject.email_marketing, subject.has_email, subject.suppressed)
    if consent is None:
        decided = _choose(ranked, event_id, triggered_at, subject, history, policy, now)
    else:
        decided = _skip_all(ranked, consent, subject.id, event_id)
    # The matched campaigns' slots, in list order, receive their outcomes in priority
    # order: the list reads as "not matched …, then the matched ones, best first".
    for position, outcome in zip(sorted(p for _, p in matched), decided, strict=True):
        decisions[position] = outcome
    return decisions


def _skip_all(
    ranked: Sequence[CompiledCampaign], reason: str, customer_id: str, event_id: str
) -> list[Decision]:
    """The same skip for every campaign (no consent, or ranked below the chosen ones):
    one cheap outcome each, nothing else looked at."""
    return [skipped(c.id, reason, f"{c.id}|{customer_id}|skip|{event_id}") for c in ranked]


def _choose(
    ranked: Sequence[CompiledCampaign],
    event_id: str,
    triggered_at: datetime,
    subject: Subject,
    history: Sequence[PastSend],
    policy: Policy,
    now: datetime,
) -> list[Decision]:
    """Outcomes of matched campaigns, best first, for a customer who may be emailed:
    walk down the ranking until ``max_campaigns_per_event`` sends are planned."""
    decided: list[Decision] = []
    quiet = _quiet_window(policy.quiet_from, policy.quiet_to)
    chosen = 0
    counted = _count_counted(history, policy, now)
    for index, compiled in enumerate(ranked):
        if chosen >= policy.max_campaigns_per_event:
            # A campaign ranked below the ones already chosen loses to them, whatever its
            # own frequency state: the decisive reason is the ranking.
            return decided + _skip_all(ranked[index:], "lower_priority", subject.id, event_id)
        campaign = compiled.campaign
        skip_key = f"{campaign.id}|{subject.id}|skip|{event_id}"
        reason: str | None = (
            "opted_out"
            if campaign.kind in subject.opted_out_kinds
            else frequency_block(campaign, history, policy, now, extra=chosen, counted=counted)
        )
        earliest = now
        if reason == "frequency_cap" and policy.over_cap == "defer":
            frees_at = cap_frees_at(history, policy, now, extra=chosen)
            if frees_at is not None:
                reason, earliest = None, frees_at
        if reason is not None:
            decided.append(skipped(campaign.id, reason, skip_key))
            continue
        assignment = compiled.assign(subject.id)
        zone = resolve_zone(campaign.schedule.timezone, subject.timezone, policy.default_timezone)
        windows = compiled.send_windows(quiet)
        timing = plan_in_windows(campaign.schedule, windows, triggered_at, earliest, zone)
        variant = assignment.variant
        deferred = earliest > now
        if timing.expired:
            decided.append(
                Decision(
                    campaign.id,
                    "skipped",
                    "frequency_cap" if deferred else "expired",
                    variant.id,
                    variant.template,
                    timing.send_at,
                    timing.expires_at,
                    skip_key,
                )
            )
            continue
        chosen += 1
        decided.append(
            Decision(
                campaign.id,
                "held_out" if assignment.held_out else "planned",
                "holdout" if assignment.held_out else "deferred_by_cap" if deferred else None,
                variant.id,
                variant.template,
                timing.send_at,
                timing.expires_at,
                dedupe_key(campaign, subject.id, event_id, triggered_at),
            )
        )
    return decided
