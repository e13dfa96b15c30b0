"""``crosssell explain``: how one campaign judged one event, leaf by leaf.

The customer's stored profile and send history are used when the configured database
knows the customer (read only); otherwise the event alone. Nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError

from triggers.conditions import explain_condition
from triggers.decide import PastSend, Subject, decide
from triggers.events import AnyEvent, PurchaseEvent
from triggers.facts import CustomerProfile, apply_customer, apply_purchase, build_facts, purchase_of
from triggers.schedule import resolve_zone
from worker.runtime import Runtime


@dataclass(frozen=True)
class Known:
    profile: CustomerProfile
    history: list[PastSend]
    suppressed: bool
    source: str


def _known(runtime: Runtime, event: AnyEvent) -> Known:
    from worker.customers import is_suppressed, profile_of, send_history
    from worker.db import transaction
    from worker.models import Customer, Order

    blank = CustomerProfile(event.customer.id)
    try:
        with transaction(runtime.settings.resolved_database_url) as session:
            row = session.get(Customer, event.customer.id)
            if row is None:
                return Known(_with_event(blank, event, False), [], False, "this event only")
            known_order = isinstance(event, PurchaseEvent) and (
                session.get(Order, event.data.order_id) is not None
            )
            profile = _with_event(profile_of(row), event, known_order)
            return Known(
                profile,
                send_history(session, row.id),
                is_suppressed(session, profile.email),
                "database + this event",
            )
    except SQLAlchemyError:
        return Known(_with_event(blank, event, False), [], False, "this event only (no database)")


def _with_event(profile: CustomerProfile, event: AnyEvent, order_known: bool) -> CustomerProfile:
    profile = apply_customer(profile, event.customer)
    if isinstance(event, PurchaseEvent) and not order_known:
        profile = apply_purchase(profile, *purchase_of(event))
    return profile


def _mark(result: bool) -> str:
    return "yes" if result else "NO "


def explain(
    runtime: Runtime, event: AnyEvent, campaign_id: str, now: datetime | None
) -> Iterator[str]:
    rules = runtime.rules.current()
    compiled = rules.by_id(campaign_id)
    if compiled is None:
        raise LookupError(f"no campaign {campaign_id!r} in {runtime.settings.campaigns_dir}")
    campaign = compiled.campaign
    at = now or event.occurred_at
    known = _known(runtime, event)
    facts = build_facts(event, known.profile, at)
    yield (
        f"campaign {campaign.id} ({campaign.status}, priority {campaign.priority}, "
        f"trigger {campaign.trigger.event}); event {event.id} ({event.type}) "
        f"for customer {event.customer.id}"
    )
    yield f"customer data from: {known.source}; decided as of {at.isoformat()}"
    if campaign.trigger.event != event.type:
        yield f"trigger: NO  the campaign listens to {campaign.trigger.event} events"
        return
    for label, condition in (
        ("trigger.where", campaign.trigger.where),
        ("audience", campaign.audience),
    ):
        if condition is None:
            yield f"{label}: yes (no conditions)"
            continue
        result, leaves = explain_condition(condition, facts, rules.segments, label)
        yield f"{label}: {_mark(result)}"
        for leaf in leaves:
            yield (
                f"  {_mark(leaf.result)} {leaf.path}: {leaf.field} {leaf.op} "
                f"{leaf.expected!r}  (actual: {leaf.actual!r})"
            )
    decisions = decide(
        rules=rules,
        event_type=event.type,
        event_id=event.id,
        triggered_at=event.occurred_at,
        facts=facts,
        subject=Subject(
            known.profile.id,
            bool(known.profile.email),
            known.profile.email_marketing,
            known.suppressed,
            known.profile.timezone,
        ),
        history=known.history,
        policy=runtime.policy,
        now=at,
    )
    mine = next(d for d in decisions if d.campaign_id == campaign.id)
    if mine.outcome == "not_matched":
        yield f"decision: not matched ({mine.reason})"
        return
    if mine.outcome == "skipped":
        yield f"decision: skipped, reason {mine.reason}"
        return
    zone = resolve_zone(
        campaign.schedule.timezone, known.profile.timezone, runtime.policy.default_timezone
    )
    assert mine.send_at is not None
    local = mine.send_at.astimezone(zone)
    what = "held out (control group, not sent)" if mine.outcome == "held_out" else "planned"
    yield (
        f"decision: {what}, variant {mine.variant} (template {mine.template}), "
        f"send at {local:%a %Y-%m-%d %H:%M} {zone.key} ({mine.send_at:%H:%M} UTC)"
        + (f", reason {mine.reason}" if mine.reason and mine.outcome == "planned" else "")
    )
