"""``crosssell explain``: how one campaign judged one event, leaf by leaf.

The customer's stored profile and send history are used when the configured database
knows the customer (read only); otherwise the event alone. Nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from triggers.conditions import explain_condition
from triggers.decide import (
    consent_block,
    decide,
    email_spans,
    frequency_block,
    gap_clash,
    min_gap,
    subject_for,
)
from triggers.events import (
    MAX_EVENT_BYTES,
    AnyEvent,
    InvalidEvent,
    PurchaseEvent,
    parse_event,
    refused_forget,
)
from triggers.facts import CustomerProfile, apply_customer, apply_purchase, build_facts, purchase_of
from triggers.fields import FieldType
from triggers.schedule import resolve_zone
from worker.decide.decision_inputs import DecisionInputs
from worker.process.runtime import Runtime


@dataclass(frozen=True)
class Known:
    inputs: DecisionInputs
    source: str
    # When the customer asked to be forgotten, if that was after the event occurred:
    # ingest would store the event erased and decide nothing on it.
    erased_at: datetime | None = None


def _known(runtime: Runtime, event: AnyEvent, at: datetime) -> Known:
    """The engine's inputs as the worker would build them (``decision_inputs``), with this
    event applied to the stored profile as ingest would apply it."""
    from worker.core.db import transaction
    from worker.core.models import Customer, Order
    from worker.decide.decision_inputs import decision_inputs
    from worker.intake.ingest import predates_erasure
    from worker.records.customers import profile_of

    blank = CustomerProfile(event.customer.id)
    try:
        with transaction(runtime.settings.resolved_database_url) as session:
            row = session.get(Customer, event.customer.id)
            if row is None:
                profile = _with_event(blank, event, False)
                inputs = decision_inputs(session, event, at, customer=None, profile=profile)
                return Known(inputs, "this event only (+ suppression list)")
            known_order = isinstance(event, PurchaseEvent) and (
                session.get(Order, event.data.order_id) is not None
            )
            profile = _with_event(profile_of(row), event, known_order)
            inputs = decision_inputs(session, event, at, customer=row, profile=profile)
            erased_at = row.forgotten_at if predates_erasure(row, event) else None
            return Known(inputs, "database + this event", erased_at)
    except SQLAlchemyError:
        profile = _with_event(blank, event, False)
        subject = subject_for(profile, suppressed=False)
        inputs = DecisionInputs(profile, subject, build_facts(event, profile, at), [])
        return Known(inputs, "this event only (no database)")


def event_from_file(path: Path, attributes: Mapping[str, FieldType] | None = None) -> AnyEvent:
    """The event of ``path``: its first line (a JSON Lines file), read alone, so what
    follows (more events, or bytes that are not even UTF-8) does not matter; or the whole
    file when that line is not JSON by itself (one event written over several lines).
    Raises ``InvalidEvent`` with the first line's reason when neither is an event."""
    from worker.intake.publisher import CutLine, bounded_lines

    with path.open("rb") as stream:
        first = next((line for line in bounded_lines(stream) if line.strip()), b"")
        if isinstance(first, CutLine):
            raise first.invalid()
        try:
            return parse_event(first.strip(), attributes=attributes)
        except InvalidEvent as bad:
            if bad.code != "not_json":
                raise refused_forget(bad, first.strip(), "explain") from None
            whole = (first + stream.read(MAX_EVENT_BYTES + 1)).strip()
            if whole == first.strip():
                raise
            try:
                return parse_event(whole, attributes=attributes)
            except InvalidEvent as other:
                if other.code != "not_json":
                    raise refused_forget(other, whole, "explain") from None
                raise bad from None


def _with_event(profile: CustomerProfile, event: AnyEvent, order_known: bool) -> CustomerProfile:
    profile = apply_customer(profile, event.customer)
    if isinstance(event, PurchaseEvent) and not order_known:
        profile = apply_purchase(profile, *purchase_of(event))
    return profile


def _mark(result: bool) -> str:
    return "yes" if result else "NO "


def _standing_lines(inputs: DecisionInputs, kind: str) -> Iterator[str]:
    """The engine's customer checks, one line each, in the engine's order."""
    subject = inputs.subject
    consent = consent_block(subject.email_marketing, subject.has_email, False)
    yield f"consent: {_mark(consent is None)}" + (f" {consent}" if consent else "")
    yield f"suppression: {_mark(not subject.suppressed)}" + (
        " suppressed" if subject.suppressed else ""
    )
    kinds = ", ".join(sorted(subject.opted_out_kinds)) or "none"
    opted_out = kind in subject.opted_out_kinds
    yield (
        f"preferences: {_mark(not opted_out)}"
        + (" opted_out" if opted_out else "")
        + f" (campaign kind {kind}; kinds opted out: {kinds})"
    )


def explain(
    runtime: Runtime, event: AnyEvent, campaign_id: str, now: datetime | None
) -> Iterator[str]:
    rules = runtime.rules.current()
    compiled = rules.by_id(campaign_id)
    if compiled is None:
        raise LookupError(f"no campaign {campaign_id!r} in {runtime.settings.campaigns_dir}")
    campaign = compiled.campaign
    at = now or event.occurred_at
    known = _known(runtime, event, at)
    inputs = known.inputs
    facts = inputs.facts
    yield (
        f"campaign {campaign.id} ({campaign.status}, priority {campaign.priority}, "
        f"trigger {campaign.trigger.event}); event {event.id} ({event.type}) "
        f"for customer {event.customer.id}"
    )
    yield f"customer data from: {known.source}; decided as of {at.isoformat()}"
    if known.erased_at is not None:
        yield (
            f"erasure: NO  the customer asked to be forgotten at {known.erased_at.isoformat()}, "
            "when or after this event occurred: ingest stores the event erased"
        )
        yield "decision: none (an event from before the customer's erasure request plans nothing)"
        return
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
    yield from _standing_lines(inputs, campaign.kind)
    policy = runtime.policy
    capped = frequency_block(campaign, inputs.history, policy, at)
    yield f"frequency: {_mark(capped is None)}" + (f" {capped}" if capped else "")
    gap = min_gap(campaign, policy)
    last = inputs.last_email_at
    clash = gap_clash(at, email_spans(inputs.history, rules), gap)
    yield (
        f"spacing: {_mark(clash is None)} gap {gap}, last email "
        + (f"{last.isoformat()}" if last else "none")
        + (f" (free from {clash.isoformat()})" if clash else "")
    )
    decisions = decide(
        rules=rules,
        event_type=event.type,
        event_id=event.id,
        triggered_at=event.occurred_at,
        facts=facts,
        subject=inputs.subject,
        history=inputs.history,
        policy=policy,
        now=at,
    )
    mine = next(d for d in decisions if d.campaign_id == campaign.id)
    if mine.outcome == "not_matched":
        yield f"decision: not matched ({mine.reason})"
        return
    if mine.outcome == "skipped":
        yield f"decision: skipped, reason {mine.reason}"
        if compiled.sequence is not None:
            yield from _enrollment_lines(runtime, campaign.id, event, at)
        return
    if mine.outcome == "enrolled":
        held = " (held out: its steps are recorded, never sent)" if mine.reason else ""
        yield f"decision: enters the sequence, variant {mine.variant}{held}"
        yield from _enrollment_lines(runtime, campaign.id, event, at)
        return
    zone = resolve_zone(
        campaign.schedule.timezone, inputs.profile.timezone, runtime.policy.default_timezone
    )
    assert mine.send_at is not None
    local = mine.send_at.astimezone(zone)
    what = "held out (control group, not sent)" if mine.outcome == "held_out" else "planned"
    yield (
        f"decision: {what}, variant {mine.variant} (template {mine.template}), "
        f"send at {local:%a %Y-%m-%d %H:%M} {zone.key} ({mine.send_at:%H:%M} UTC)"
        + (f", reason {mine.reason}" if mine.reason and mine.outcome == "planned" else "")
    )


def _enrollment_lines(
    runtime: Runtime, campaign_id: str, event: AnyEvent, at: datetime
) -> Iterator[str]:
    """The stored enrollment's path, step by step (``worker.decide.sequences.enrollment_path``),
    or each step's timing from the entry when the database does not hold one."""
    from worker.core.db import transaction
    from worker.decide.sequences import enrollment_path, planned_path

    try:
        with transaction(runtime.settings.resolved_database_url) as session:
            lines = enrollment_path(
                session, runtime.rules.current(), campaign_id, event.customer.id, event.id
            )
    except SQLAlchemyError:
        lines = None
    if lines is None:
        lines = planned_path(runtime.rules.current(), campaign_id, min(event.occurred_at, at))
    yield from lines
