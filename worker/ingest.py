"""Store one CRM event and plan its emails, all in the caller's transaction.

The consumer acknowledges a message only after this commits, and the inbox's unique
event id makes a redelivered or re-published event a no-op: stored once, planned once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from triggers.decide import Policy, Subject, decide
from triggers.events import AnyEvent, PurchaseEvent
from triggers.facts import build_facts
from triggers.loader import RuleSet
from triggers.outcomes import Decision
from worker.attribution import attribute_event
from worker.customers import (
    is_suppressed,
    profile_of,
    record_purchase,
    send_history,
    upsert_customer,
)
from worker.metrics import SENDS
from worker.models import Event, Send


@dataclass(frozen=True, slots=True)
class IngestResult:
    duplicate: bool
    decisions: tuple[Decision, ...] = ()


def event_payload(event: AnyEvent) -> dict[str, object]:
    """The event as JSON-ready data, decimals as strings (never floats)."""
    loaded: dict[str, object] = json.loads(event.model_dump_json())
    return loaded


def ingest_event(
    session: Session, event: AnyEvent, rules: RuleSet, policy: Policy, now: datetime
) -> IngestResult:
    if session.scalar(select(Event.id).where(Event.event_id == event.id)) is not None:
        return IngestResult(duplicate=True)
    customer = upsert_customer(session, event.customer, now)
    session.flush()
    row = Event(
        event_id=event.id,
        type=event.type,
        customer_id=customer.id,
        occurred_at=event.occurred_at,
        received_at=now,
        payload=event_payload(event),
        outcome={},
    )
    session.add(row)
    if isinstance(event, PurchaseEvent):
        record_purchase(session, customer, event)
    session.flush()

    profile = profile_of(customer)
    decisions = decide(
        rules=rules,
        event_type=event.type,
        event_id=event.id,
        triggered_at=event.occurred_at,
        facts=build_facts(event, profile, now),
        subject=Subject(
            id=customer.id,
            has_email=bool(customer.email),
            email_marketing=customer.email_marketing,
            suppressed=is_suppressed(session, customer.email),
            timezone=customer.timezone,
            opted_out_kinds=frozenset(customer.opted_out_kinds or ()),
        ),
        history=send_history(session, customer.id),
        policy=policy,
        now=now,
    )
    outcome: dict[str, object] = {}
    for decision in decisions:
        if decision.outcome == "not_matched":
            outcome[decision.campaign_id] = decision.reason
            continue
        compiled = rules.by_id(decision.campaign_id)
        assert compiled is not None
        assert decision.dedupe_key is not None
        taken = session.scalar(select(Send.id).where(Send.dedupe_key == decision.dedupe_key))
        if taken is not None:
            outcome[decision.campaign_id] = f"already_planned:{taken}"
            continue
        session.add(
            Send(
                campaign_id=decision.campaign_id,
                kind=compiled.campaign.kind,
                variant=decision.variant,
                template=decision.template,
                customer_id=customer.id,
                event_id=event.id,
                status=decision.outcome,
                reason=decision.reason,
                dedupe_key=decision.dedupe_key,
                send_at=decision.send_at,
                expires_at=decision.expires_at,
                attempts=0,
                created_at=now,
                updated_at=now,
            )
        )
        outcome[decision.campaign_id] = decision.reason or decision.outcome
        SENDS.labels(decision.outcome, decision.reason or "").inc()
    row.outcome = outcome
    attribute_event(session, event, rules, now)
    return IngestResult(duplicate=False, decisions=tuple(decisions))
