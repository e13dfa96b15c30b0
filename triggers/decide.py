"""Decide which campaigns an event fires and plan their sends — the heart of the engine.

``decide`` is a pure function of the event's facts, the customer's send history, the rule
set, the policy and the time. Every campaign whose trigger matched gets a decision with a
status and, when it is not planned, the reason; campaigns whose conditions did not match
are reported too, so the worker can record why nothing fired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from typing import Literal

from triggers.campaigns import Campaign
from triggers.loader import CompiledCampaign, RuleSet
from triggers.outcomes import Decision
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
        window = int(triggered_at.astimezone(UTC).timestamp() // cooldown.total_seconds())
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
        counted = len(_counted(history, policy, now))
    if counted + extra >= policy.max_emails_per_customer:
        return "frequency_cap"
    return None


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
    active = rules.active_for(event_type)
    decisions: list[Decision] = list(rules.misses(event_type))
    matched: list[tuple[int, CompiledCampaign]] = []
    for position in rules.candidates(event_type, facts):
        compiled = active[position]
        if compiled.where(facts):
            if compiled.audience(facts):
                matched.append((position, compiled))
            else:
                decisions[position] = compiled.miss_audience
    if not matched:
        return decisions
    decided: list[Decision] = []  # the matched campaigns' outcomes, highest priority first
    matched.sort(key=lambda pair: (-pair[1].campaign.priority, pair[1].id))

    quiet = _quiet_window(policy.quiet_from, policy.quiet_to)
    chosen = 0
    consent = consent_block(subject.email_marketing, subject.has_email, subject.suppressed)
    counted = len(_counted(history, policy, now))
    for _, compiled in matched:
        campaign = compiled.campaign
        skip_key = f"{campaign.id}|{subject.id}|skip|{event_id}"
        if consent or chosen >= policy.max_campaigns_per_event:
            # A campaign ranked below the ones already chosen loses to them, whatever its
            # own frequency state: the decisive reason is the ranking.
            decided.append(
                Decision(campaign.id, "skipped", consent or "lower_priority", dedupe_key=skip_key)
            )
            continue
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
            decided.append(Decision(campaign.id, "skipped", reason, dedupe_key=skip_key))
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
    # The matched campaigns' slots, in list order, receive their outcomes in priority
    # order: the list reads as "not matched …, then the matched ones, best first".
    for position, outcome in zip(sorted(p for p, _ in matched), decided, strict=True):
        decisions[position] = outcome
    return decisions
