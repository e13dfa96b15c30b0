"""Store CRM events and plan their emails, a batch at a time, in the caller's transaction.

The consumer acknowledges its messages only after this commits, and the inbox's unique
event id makes a redelivered or re-published event a no-op: stored once, planned once.

A batch costs a handful of statements whatever its size (docs/performance.md, "Ingest"):
one to find the ids already stored, one to lock the batch's customers, one each for the
customers' send histories, their planned rows' locks and their suppressions, one
multi-row insert each for sends (``ON CONFLICT (dedupe_key) DO NOTHING``), orders, order
lines and offers, and one ``INSERT … ON CONFLICT DO NOTHING`` for the events, each row
with its outcome (written once, never updated). ``decide`` runs per event in memory, in
arrival order, on the history kept current as the batch plans, so a customer's second
event in a batch sees what the first one planned. Sequence entries are written together too (one
statement for the customers' past entries, one insert: ``sequences.Entries``). Exits and
attribution, which need rows of their own, go through their per-event functions only for
the events that need them: customers with an active enrollment, purchases of customers
with touches.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from triggers.decide import MARKETING_HISTORY, PastSend, Policy, decide
from triggers.events import AnyEvent, CustomerData, PurchaseEvent
from triggers.facts import CustomerProfile
from triggers.outcomes import Decision, SkipReason
from triggers.rule_set import RuleSet
from worker.core.commit_counts import count_on_commit
from worker.core.db import plan_for_this_batch
from worker.core.dialect_insert import among, insert_rows
from worker.core.log_format import fields
from worker.core.metrics import EVENTS, SENDS
from worker.core.models import Customer, Enrollment, Event, Order, OrderLine, Send
from worker.core.settings import get_settings
from worker.core.wakeup import wake_if_due
from worker.decide import sequences
from worker.decide.attribution import (
    PLANNED_STATUSES,
    TREATED_STATUSES,
    AttributionConfig,
    attribute_order,
    resolve_offered,
    store_offers,
)
from worker.decide.decision_inputs import BatchInputs, decision_inputs, decision_inputs_many
from worker.offers.offer_resolution import CatalogMemo
from worker.records.customers import (
    apply_upsert_profiled,
    lock_customers,
    new_customer,
    order_rows,
    write_customers,
)
from worker.records.privacy import erased_payload, occurred_before_erasure

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What became of one event: a duplicate, or its decisions and the outcome stored on
    its row (campaign → what happened, e.g. ``planned``, ``holdout``,
    ``already_planned:<send id>`` when the email was already planned by an earlier
    event)."""

    duplicate: bool
    decisions: tuple[Decision, ...] = ()
    outcome: Mapping[str, object] = field(default_factory=dict)
    # Stored erased: it occurred before its customer's erasure request (predates_erasure).
    erased: bool = False


def predates_erasure(customer: Customer, event: AnyEvent) -> bool:
    """Whether ``event`` occurred before the customer's last erasure request and arrived
    after it (another consumer stored it later, or the CRM sent it late): it is stored
    with its customer block cut to the id, as the request would have left it, changes no
    profile field and plans nothing; a purchase's order still counts."""
    return occurred_before_erasure(event.occurred_at, customer.forgotten_at)


def erased_customer(event: AnyEvent) -> CustomerData:
    """The event's customer block as an erasure leaves it: the id only (an upsert with it
    changes no profile field)."""
    return CustomerData.model_validate({"id": event.customer.id})


DUPLICATE = IngestResult(duplicate=True)


def event_payload(event: AnyEvent) -> dict[str, object]:
    """The event as JSON-ready data, decimals as strings (never floats).

    The customer block keeps only the fields the CRM gave: it is an upsert, so a replay of
    the stored event (``simulate --since``, delivery's recheck) must not read an absent
    field as "set to null" and wipe what another event stored.

    ``model_dump(mode="json")`` gives the same data as decoding ``model_dump_json()``
    without a JSON text in between: the column type encodes it once, on insert."""
    loaded: dict[str, object] = event.model_dump(mode="json")
    loaded["customer"] = event.customer.model_dump(mode="json", exclude_unset=True)
    return loaded


def ingest_event(
    session: Session, event: AnyEvent, rules: RuleSet, policy: Policy, now: datetime
) -> IngestResult:
    """One event: :func:`ingest_batch` with a batch of one."""
    return ingest_batch(session, [event], rules, policy, now)[0]


@dataclass(slots=True)
class _NewSend:
    """A send decided in this batch, not inserted yet."""

    position: int
    row: dict[str, Any]
    label: str
    offer: tuple[list[str], str | None] | None


@dataclass(slots=True)
class _Batch:
    """One batch's state between its statements."""

    session: Session
    now: datetime
    inputs: BatchInputs
    entries: sequences.Entries
    outcomes: dict[int, dict[str, object]] = field(default_factory=dict)
    pending: list[_NewSend] = field(default_factory=list)
    pending_customers: set[str] = field(default_factory=set)
    offers: dict[int, tuple[list[str], str | None]] = field(default_factory=dict)
    catalog: CatalogMemo = field(default_factory=CatalogMemo)

    def write_sends(self) -> None:
        """Insert the pending sends in one statement; a dedupe key already taken (a
        redelivery, a cooldown period already used) records ``already_planned:<id>``.
        The inserted ones join their customer's history, with their ids, for the
        customer's next event in the batch."""
        if not self.pending:
            return
        session = self.session
        inserted = {
            row.dedupe_key: row.id
            for row in insert_rows(
                session,
                Send,
                [new.row for new in self.pending],
                conflict="dedupe_key",
                returning=("id", "dedupe_key"),
            )
        }
        conflicted = [new.row["dedupe_key"] for new in self.pending]
        conflicted = [key for key in conflicted if key not in inserted]
        taken: dict[str, int] = (
            {
                dedupe_key: send_id
                for dedupe_key, send_id in session.execute(
                    select(Send.dedupe_key, Send.id).where(
                        among(session, Send.dedupe_key, conflicted)
                    )
                )
            }
            if conflicted
            else {}
        )
        for new in self.pending:
            row = new.row
            campaign_id = row["campaign_id"]
            send_id = inserted.get(row["dedupe_key"])
            if send_id is None:
                taken_id = taken.get(row["dedupe_key"])
                self.outcomes[new.position][campaign_id] = (
                    f"{SkipReason.ALREADY_PLANNED}:{taken_id}"
                )
                continue
            self.outcomes[new.position][campaign_id] = new.label
            count_on_commit(session, SENDS, row["status"], row["reason"] or "")
            if row["status"] in MARKETING_HISTORY:
                self.inputs.histories.setdefault(row["customer_id"], []).append(
                    PastSend(
                        campaign_id,
                        row["status"],
                        row["send_at"] or self.now,
                        send_id,
                        row["expires_at"],
                    )
                )
            if new.offer is not None:
                self.offers[send_id] = new.offer
        self.pending.clear()
        self.pending_customers.clear()


def _report_changed_duplicates(
    session: Session, events: Sequence[AnyEvent], firsts: dict[str, int], known: set[str]
) -> None:
    """Warn about each duplicate whose content differs from the event that stands (the
    stored one, or the batch's first with that id): a redelivery repeats an event
    exactly, so a different one under a known id is a producer reusing ids, and it is
    dropped like any duplicate. Only batches with duplicates pay for the comparison
    (one query for the stored ones' payloads)."""
    standing: dict[str, object] = {}
    if known:
        rows = session.execute(
            select(Event.event_id, Event.payload).where(
                among(session, Event.event_id, sorted(known))
            )
        )
        standing = {event_id: payload for event_id, payload in rows}
    for position, event in enumerate(events):
        first = firsts[event.id]
        if event.id in standing:
            kept = standing[event.id]
        elif position != first:
            kept = event_payload(events[first])
        else:
            continue
        mine = event_payload(event)  # JSON-ready, as the stored payload reads back
        if isinstance(kept, dict) and kept.get("customer") == {"id": event.customer.id}:
            # Erased by a forget request since (worker.records.privacy): the stored copy
            # keeps the customer's id only, so the rest is what can differ.
            mine["customer"] = kept["customer"]
        if mine == kept:
            continue
        count_on_commit(session, EVENTS, "duplicate_changed")
        log.warning(
            "event %s: a duplicate with other content was dropped; the event first received"
            " under this id stands (does the CRM reuse event ids?)",
            event.id,
            extra=fields(event_id=event.id, customer_id=event.customer.id, outcome="duplicate"),
        )


def _known_events(session: Session, events: Sequence[AnyEvent]) -> set[str]:
    ids = [event.id for event in events]
    return set(session.scalars(select(Event.event_id).where(among(session, Event.event_id, ids))))


class EventRaced(Exception):
    """Another transaction stored one of the batch's new events while the batch was
    being decided (a redelivery to a second consumer, or an id reused for another
    customer, at the same moment). The caller rolls the batch back and stores its events
    again: the event is then a duplicate."""


def _insert_events(
    session: Session,
    events: Sequence[AnyEvent],
    outcomes: Sequence[dict[str, object]],
    now: datetime,
    erased: AbstractSet[str] = frozenset(),
) -> None:
    """Store the decided events, each with its outcome (campaign → outcome), in one
    ``INSERT … ON CONFLICT (event_id) DO NOTHING``.

    Stored after deciding, so that each row is written once: an ``UPDATE`` of the
    outcomes after the insert wrote every event's row twice (docs/performance.md,
    "Each event's row written once"). An event that another transaction stored after
    the batch read which ids are stored (two consumers given the same event at once)
    raises :class:`EventRaced`: what the batch planned for it must not stay."""
    rows = [
        {
            "event_id": event.id,
            "type": event.type,
            "customer_id": event.customer.id,
            "occurred_at": event.occurred_at,
            "received_at": now,
            "payload": (
                erased_payload(event_payload(event), event.customer.id)
                if event.id in erased
                else event_payload(event)
            ),
            "outcome": outcome,
        }
        for event, outcome in zip(events, outcomes, strict=True)
    ]
    rows.sort(key=lambda row: str(row["event_id"]))  # key order: see ingest_batch
    inserted = insert_rows(session, Event, rows, conflict="event_id", returning=("event_id",))
    if len(inserted) != len(rows):
        stored = {row.event_id for row in inserted}
        raced = sorted(event.id for event in events if event.id not in stored)
        raise EventRaced(f"events stored by another transaction meanwhile: {raced}")


def ingest_batch(
    session: Session,
    events: Sequence[AnyEvent],
    rules: RuleSet,
    policy: Policy,
    now: datetime,
) -> list[IngestResult]:
    """Store ``events``, in order, and plan their emails; one result per event.

    An event id already stored, or seen earlier in the batch, is a ``duplicate`` and
    changes nothing. Raises what the database raises (the caller's transaction rolls
    back whole; ``worker.intake.consumer`` then tries the events one by one)."""
    results: list[IngestResult] = [DUPLICATE] * len(events)
    plan_for_this_batch(session)
    firsts: dict[str, int] = {}
    for position, event in enumerate(events):
        firsts.setdefault(event.id, position)
    known = _known_events(session, [events[p] for p in firsts.values()])
    if known or len(firsts) < len(events):
        _report_changed_duplicates(session, events, firsts, known)
    todo = [position for event_id, position in firsts.items() if event_id not in known]
    if not todo:
        return results  # a redelivered batch: no locks, nothing written

    customer_ids = list(dict.fromkeys(events[p].customer.id for p in todo))
    customers = lock_customers(session, customer_ids)
    # New rows of every table go in key order, so that two consumers given overlapping
    # keys (a reused id) wait for each other instead of deadlocking.
    created = sorted(customer_id for customer_id in customer_ids if customer_id not in customers)
    for customer_id in created:
        customers[customer_id] = new_customer(session, customer_id, now)
    if created:
        session.flush()  # the rows written below refer to them

    emails = [customer.email for customer in customers.values()]
    emails += [
        events[p].customer.email for p in todo if "email" in events[p].customer.model_fields_set
    ]
    batch = _Batch(
        session,
        now,
        decision_inputs_many(session, customer_ids, emails, lock=True),
        sequences.Entries(session, customer_ids),
    )
    purchases = [p for p in todo if isinstance(events[p], PurchaseEvent)]
    known_orders = _known_orders(session, [events[p] for p in purchases])
    enrolled = _enrolled_customers(session, rules, customer_ids)
    config = AttributionConfig.from_settings(get_settings())
    orders: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    first_event_of_new = set(created)
    decided: dict[int, tuple[Decision, ...]] = {}
    erased: set[int] = set()  # events from before their customer's erasure request

    # The customers' changes are flushed once, after the loop: without this, every query
    # the loop makes (an offer's products) would first flush the customer it just changed.
    with session.no_autoflush:
        for position in todo:
            event = events[position]
            customer = customers[event.customer.id]
            if predates_erasure(customer, event):
                erased.add(position)
                batch.outcomes[position] = {}
                decided[position] = ()
                if isinstance(event, PurchaseEvent) and event.data.order_id not in known_orders:
                    # Its order holds no personal data and counts, as an erasure keeps
                    # orders; the profile gets nothing but the purchase's aggregates.
                    apply_upsert_profiled(
                        session, customer, erased_customer(event), now, purchase=event
                    )
                    order, order_lines = order_rows(customer.id, event)
                    orders.append(order)
                    lines.extend(order_lines)
                    known_orders.add(event.data.order_id)
                continue
            if customer.id in batch.pending_customers:
                batch.write_sends()  # the customer's next decision must see them, with ids
            if customer.id in batch.entries.pending_customers:
                enrolled |= batch.entries.write()  # and their sequences must see this entry
            consent_before = customer.email_marketing
            purchase = (
                event
                if isinstance(event, PurchaseEvent) and event.data.order_id not in known_orders
                else None
            )
            customer, profile = apply_upsert_profiled(
                session,
                customer,
                event.customer,
                now,
                created=customer.id in first_event_of_new,
                purchase=purchase,
            )
            first_event_of_new.discard(customer.id)
            if customer.email_marketing != consent_before:
                # A re-subscription may have lifted an unsubscribe suppression.
                batch.inputs.forget_address(customer.email)
            if purchase is not None:
                order, order_lines = order_rows(customer.id, purchase)
                orders.append(order)
                lines.extend(order_lines)
                known_orders.add(purchase.data.order_id)
            decided[position] = _plan(
                batch, rules, policy, customer, profile, event, position, enrolled, config
            )

    # The customers' new state, before any statement can autoflush them one by one.
    write_customers(session, customers.values())
    batch.write_sends()
    session.flush()  # what else the loop left to the ORM (consent records, new rows)
    batch.entries.write()
    insert_rows(session, Order, sorted(orders, key=lambda order: str(order["id"])))
    insert_rows(session, OrderLine, lines)
    store_offers(session, batch.offers, now)
    _insert_events(
        session,
        [events[p] for p in todo],
        [batch.outcomes[p] for p in todo],
        now,
        erased={events[p].id for p in erased},
    )
    _attribute_purchases(session, [events[p] for p in purchases], rules, config, now)
    wake_if_due(session, decided.values(), now, batch.entries.first_due_at)
    for position in todo:
        results[position] = IngestResult(
            False, decided[position], batch.outcomes[position], erased=position in erased
        )
    return results


def _plan(
    batch: _Batch,
    rules: RuleSet,
    policy: Policy,
    customer: Customer,
    profile: CustomerProfile,
    event: AnyEvent,
    position: int,
    enrolled: set[str],
    config: AttributionConfig,
) -> tuple[Decision, ...]:
    """Decide one event on its customer's current inputs and queue what it plans;
    ``profile`` is the customer's as the event's upsert left it."""
    session, now = batch.session, batch.now
    inputs = batch.inputs.for_event(session, event, now, customer, profile=profile)
    # Sequences first: an event that exits one does so before anything more is planned.
    # They read enrollments and consent in SQL: flush what earlier events changed first.
    if customer.id in enrolled:
        session.flush()
    ended = (
        sequences.observe(session, rules, customer, event, inputs, now)
        if customer.id in enrolled
        else {}
    )
    if ended:
        batch.entries.ended(ended)
        inputs = decision_inputs(session, event, now, customer=customer, lock=True)
        batch.inputs.histories[customer.id] = list(inputs.history)
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
    batch.outcomes[position] = outcome
    for decision in decisions:
        if decision.outcome == "not_matched":
            outcome[decision.campaign_id] = decision.reason
            continue
        compiled = rules.by_id(decision.campaign_id)
        assert compiled is not None
        assert decision.dedupe_key is not None
        if decision.outcome == "enrolled":
            # Written with the batch's other entries (its outcome filled in then).
            batch.entries.enroll(compiled, decision, customer.id, event, now, outcome)
            continue
        offer = (
            resolve_offered(
                session, compiled, None, inputs.profile, event, config, memo=batch.catalog
            )
            if decision.outcome in PLANNED_STATUSES
            else None
        )
        batch.pending.append(
            _NewSend(
                position,
                {
                    "campaign_id": decision.campaign_id,
                    "kind": compiled.campaign.kind,
                    "variant": decision.variant,
                    "template": decision.template,
                    "customer_id": customer.id,
                    "event_id": event.id,
                    "status": decision.outcome,
                    "reason": decision.reason,
                    "dedupe_key": decision.dedupe_key,
                    "send_at": decision.send_at,
                    "expires_at": decision.expires_at,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                },
                decision.reason or decision.outcome,
                offer,
            )
        )
        batch.pending_customers.add(customer.id)
    history = batch.inputs.histories.setdefault(customer.id, [])
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
            count_on_commit(session, SENDS, moved.outcome, moved.reason)
        _move_in_history(history, moved.send_id, moved.outcome, moved.send_at)
    return tuple(decisions)


def _move_in_history(
    history: list[PastSend], send_id: int, status: str, send_at: datetime | None
) -> None:
    """Keep the in-memory history as the database now has it after a displacement."""
    for index, past in enumerate(history):
        if past.send_id != send_id:
            continue
        if status in MARKETING_HISTORY:
            history[index] = replace(past, status=status, at=send_at or past.at)
        else:
            del history[index]
        return


def _known_orders(session: Session, purchases: Sequence[AnyEvent]) -> set[str]:
    ids = [event.data.order_id for event in purchases if isinstance(event, PurchaseEvent)]
    if not ids:
        return set()
    return set(session.scalars(select(Order.id).where(among(session, Order.id, ids))))


def _enrolled_customers(session: Session, rules: RuleSet, customer_ids: list[str]) -> set[str]:
    """The batch's customers with an active enrollment (only they can exit a sequence)."""
    if not rules.has_steps:
        return set()
    return set(
        session.scalars(
            select(Enrollment.customer_id)
            .where(
                among(session, Enrollment.customer_id, customer_ids), Enrollment.status == "active"
            )
            .distinct()
        )
    )


def _attribute_purchases(
    session: Session,
    purchases: Sequence[AnyEvent],
    rules: RuleSet,
    config: AttributionConfig,
    now: datetime,
) -> None:
    """Attribute each purchase's order, in order, for the customers with a touch before
    it (a sent or held-out send: one query tells which); without one there is nothing to
    attribute (``attribute_order`` applies the windows)."""
    if not purchases:
        return
    customer_ids = sorted({event.customer.id for event in purchases})
    latest = max(event.occurred_at for event in purchases)
    touched = set(
        session.scalars(
            select(Send.customer_id)
            .where(
                among(session, Send.customer_id, customer_ids),
                or_(
                    and_(Send.status.in_(TREATED_STATUSES), Send.sent_at < latest),
                    and_(Send.status == "held_out", Send.send_at < latest),
                ),
            )
            .distinct()
        )
    )
    for event in purchases:
        if isinstance(event, PurchaseEvent) and event.customer.id in touched:
            attribute_order(session, event.data.order_id, rules, config, now, event)
