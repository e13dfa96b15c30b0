"""Store one CRM event and plan its emails, all in the caller's transaction.

The consumer acknowledges a message only after this commits, and the inbox's unique
event id makes a redelivered or re-published event a no-op: stored once, planned once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from triggers.decide import Policy, decide
from triggers.events import AnyEvent, PurchaseEvent
from triggers.outcomes import Decision, SkipReason
from triggers.rule_set import RuleSet
from worker import sequences
from worker.attribution import attribute_event
from worker.customers import record_purchase, upsert_customer
from worker.decision_inputs import decision_inputs
from worker.metrics import SENDS
from worker.models import Event, Send


@dataclass(frozen=True, slots=True)
class IngestResult:
    duplicate: bool
    decisions: tuple[Decision, ...] = ()


def event_payload(event: AnyEvent) -> dict[str, object]:
    """The event as JSON-ready data, decimals as strings (never floats).

    The customer block keeps only the fields the CRM gave: it is an upsert, so a replay of
    the stored event (``simulate --since``, delivery's recheck) must not read an absent
    field as "set to null" and wipe what another event stored."""
    loaded: dict[str, object] = json.loads(event.model_dump_json())
    loaded["customer"] = json.loads(event.customer.model_dump_json(exclude_unset=True))
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

    inputs = decision_inputs(session, event, now, customer=customer, lock=True)
    # Sequences first: an event that exits one does so before anything more is planned.
    if sequences.observe(session, rules, customer, event, inputs, now):
        inputs = decision_inputs(session, event, now, customer=customer, lock=True)
    decisions = decide(
        rules=rules,
        event_type=event.type,
        event_id=event.id,
        triggered_at=event.occurred_at,
        facts=inputs.facts,
        subject=inputs.subject,
        history=inputs.history,
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
        if decision.outcome == "enrolled":
            enrolled = sequences.enroll(session, compiled, decision, customer.id, event, now)
            outcome[decision.campaign_id] = (
                f"enrolled:{enrolled}" if enrolled is not None else SkipReason.ALREADY_ENROLLED
            )
            continue
        taken = session.scalar(select(Send.id).where(Send.dedupe_key == decision.dedupe_key))
        if taken is not None:
            outcome[decision.campaign_id] = f"{SkipReason.ALREADY_PLANNED}:{taken}"
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
    for moved in decisions.displaced:
        # A lower-priority email planned earlier makes room: skipped with min_gap, or moved
        # past the gap. Its row was locked with the history, so it is still ``planned``;
        # were it not, the recheck at sending would still keep the two emails apart.
        changed = session.execute(
            update(Send)
            .where(Send.id == moved.send_id, Send.status == "planned")
            .values(
                status=moved.outcome,
                reason=moved.reason,
                updated_at=now,
                **({"send_at": moved.send_at} if moved.send_at is not None else {}),
            )
        )
        if getattr(changed, "rowcount", 0):
            SENDS.labels(moved.outcome, moved.reason).inc()
    row.outcome = outcome
    attribute_event(session, event, rules, now)
    return IngestResult(duplicate=False, decisions=tuple(decisions))
