"""The engine's inputs, read from the database in one place.

``decide`` (planning) and ``recheck`` (just before sending) are pure: they see only what
they are given. Ingest, the delivery recheck, ``explain``, ``simulate`` and ``preview``
all build that from here, so each sees the same customer: profile and facts, consent and
suppression, the campaign kinds they opted out of, and their send history (which also
gives the time of their last email, for spacing). Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from triggers.addresses import lookup_key
from triggers.decide import COUNTED_STATUSES, MARKETING_HISTORY, PastSend, Subject, subject_for
from triggers.events import AnyEvent
from triggers.facts import CustomerProfile, build_facts
from worker.customers import is_suppressed, profile_of
from worker.dialect_insert import among
from worker.models import Customer, Send, Suppression
from worker.privacy import suppression_keys


@dataclass(frozen=True, slots=True)
class DecisionInputs:
    """Everything ``decide`` and ``recheck`` need about one customer and one event."""

    profile: CustomerProfile
    subject: Subject
    facts: Mapping[str, object]
    history: list[PastSend]

    @property
    def last_email_at(self) -> datetime | None:
        """When the customer's latest email went or goes out (planned ones included)."""
        times = [past.at for past in self.history if past.status in COUNTED_STATUSES]
        return max(times) if times else None


def decision_inputs(
    session: Session,
    event: AnyEvent,
    now: datetime,
    *,
    customer: Customer | None,
    profile: CustomerProfile | None = None,
    exclude_send: int | None = None,
    lock: bool = False,
) -> DecisionInputs:
    """The inputs for ``event`` as of ``now``.

    ``profile`` defaults to the stored customer's; ``explain`` passes the stored one with
    the event applied on top. ``customer`` is None for a customer the database does not
    know yet: no history, no opted-out kinds, but the suppression list still applies to
    the event's address. ``exclude_send`` leaves a send out of its own history (recheck).
    ``lock`` (ingest) locks the history rows until the caller's transaction ends, so a
    planned send that ``decide`` lets make room cannot be claimed by a dispatcher meanwhile.
    """
    if profile is None:
        if customer is None:
            raise ValueError("give the stored customer or a profile")
        profile = profile_of(customer)
    subject = subject_for(
        profile,
        suppressed=is_suppressed(session, profile.email),
        opted_out_kinds=(customer.opted_out_kinds or ()) if customer is not None else (),
    )
    history = (
        send_history(session, customer.id, exclude_send=exclude_send, lock=lock)
        if customer is not None
        else []
    )
    return DecisionInputs(profile, subject, build_facts(event, profile, now), history)


def send_history(
    session: Session, customer_id: str, *, exclude_send: int | None = None, lock: bool = False
) -> list[PastSend]:
    """The customer's marketing sends that count for frequency and spacing: when each
    went or goes (sent, else planned time, else creation), with its id and expiry."""
    query = select(
        Send.id,
        Send.campaign_id,
        Send.status,
        Send.sent_at,
        Send.send_at,
        Send.created_at,
        Send.expires_at,
    ).where(Send.customer_id == customer_id, Send.status.in_(MARKETING_HISTORY))
    if lock:
        # Only the planned rows can be asked to make room; locking just those never waits
        # for a delivery that holds its claimed row, and the dispatcher skips them.
        session.execute(
            select(Send.id)
            .where(Send.customer_id == customer_id, Send.status == "planned")
            .with_for_update()
        ).all()
    return [
        PastSend(
            row.campaign_id,
            row.status,
            row.sent_at or row.send_at or row.created_at,
            row.id,
            row.expires_at,
        )
        for row in session.execute(query).all()
        if row.id != exclude_send
    ]


@dataclass(slots=True)
class BatchInputs:
    """The stored inputs of a batch's customers, read with a few queries for the whole
    batch (:func:`decision_inputs_many`), then kept current by ingest as it plans.

    ``histories`` maps each customer id to their marketing sends (as ``send_history``);
    ``suppressed`` holds the suppression keys found for the addresses in ``looked_up``.
    An address outside ``looked_up`` (a customer whose event changed it) is asked of the
    database, as is one whose suppression may have been lifted in this transaction
    (:meth:`forget_address`)."""

    histories: dict[str, list[PastSend]]
    suppressed: set[str]
    looked_up: set[str]

    def is_suppressed(self, session: Session, email: str | None) -> bool:
        """Same answer as :func:`worker.customers.is_suppressed`, from memory when it can."""
        if email is None:
            return False
        if email not in self.looked_up:
            return is_suppressed(session, email)
        return any(key in self.suppressed for key in suppression_keys(email))

    def forget_address(self, email: str | None) -> None:
        """Ask the database again for ``email`` (its suppression may have changed)."""
        self.looked_up.discard(email or "")

    def for_event(
        self, session: Session, event: AnyEvent, now: datetime, customer: Customer
    ) -> DecisionInputs:
        """The same :class:`DecisionInputs` as ``decision_inputs(..., customer=customer)``."""
        profile = profile_of(customer)
        subject = subject_for(
            profile,
            suppressed=self.is_suppressed(session, profile.email),
            opted_out_kinds=customer.opted_out_kinds or (),
        )
        history = self.histories.setdefault(customer.id, [])
        return DecisionInputs(profile, subject, build_facts(event, profile, now), list(history))


def histories_of(session: Session, customer_ids: Iterable[str]) -> dict[str, list[PastSend]]:
    """The marketing send histories of many customers in one query, by customer id, in
    send id order. A ``sending`` row not yet handed over counts as ``queued`` (not gone
    yet), exactly as a concurrent worker's claim was invisible before claims were
    committed at once: only emails that went or are going out now count as such."""
    histories: dict[str, list[PastSend]] = {}
    ids = sorted(set(customer_ids))
    if not ids:
        return histories
    rows = session.execute(
        select(
            Send.id,
            Send.customer_id,
            Send.campaign_id,
            Send.status,
            Send.handed_over_at,
            Send.sent_at,
            Send.send_at,
            Send.created_at,
            Send.expires_at,
        )
        .where(among(session, Send.customer_id, ids), Send.status.in_(MARKETING_HISTORY))
        .order_by(Send.id)
    )
    for row in rows:
        status = "queued" if row.status == "sending" and row.handed_over_at is None else row.status
        histories.setdefault(row.customer_id, []).append(
            PastSend(
                row.campaign_id,
                status,
                row.sent_at or row.send_at or row.created_at,
                row.id,
                row.expires_at,
            )
        )
    return histories


def suppressed_among(session: Session, keys: Iterable[str]) -> set[str]:
    """Which of these suppression keys (``worker.privacy.suppression_keys``) are on the
    suppression list: one query."""
    wanted = set(keys)
    if not wanted:
        return set()
    return set(
        session.scalars(select(Suppression.email).where(among(session, Suppression.email, wanted)))
    )


def decision_inputs_many(
    session: Session, customer_ids: Iterable[str], emails: Iterable[str | None], *, lock: bool
) -> BatchInputs:
    """The histories of ``customer_ids`` and the suppressions of ``emails``, three queries
    for a whole batch. ``lock`` locks the customers' planned rows (in id order) until the
    transaction ends, as ``send_history(lock=True)`` does for one customer."""
    ids = sorted(set(customer_ids))
    addresses = {email for email in emails if email}
    histories: dict[str, list[PastSend]] = {customer_id: [] for customer_id in ids}
    if ids and lock:
        session.execute(
            select(Send.id)
            .where(among(session, Send.customer_id, ids), Send.status == "planned")
            .order_by(Send.id)
            .with_for_update()
        ).all()
    for customer_id, past in histories_of(session, ids).items():
        histories[customer_id] = past
    found = suppressed_among(
        session, (key for email in addresses for key in suppression_keys(email))
    )
    return BatchInputs(histories, found, addresses)


@dataclass(frozen=True)
class Standing:
    """The database's suppression list and opted-out kinds, read once, for ``simulate``
    (which rebuilds profiles and history in memory but cannot know these from events)."""

    suppressed: frozenset[str] = frozenset()
    opted_out: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def subject(self, profile: CustomerProfile) -> Subject:
        email = lookup_key(profile.email) if profile.email else None
        return subject_for(
            profile,
            suppressed=email is not None and email in self.suppressed,
            opted_out_kinds=self.opted_out.get(profile.id, frozenset()),
        )


def load_standing(session: Session) -> Standing:
    suppressed = frozenset(session.scalars(select(Suppression.email)).all())
    opted_out = {
        row.id: frozenset(row.opted_out_kinds)
        for row in session.execute(select(Customer.id, Customer.opted_out_kinds)).all()
        if row.opted_out_kinds
    }
    return Standing(suppressed, opted_out)


# --- Delivery: the recheck's inputs for a whole batch of claimed sends -------------------


@dataclass(frozen=True, slots=True)
class RecheckInputs:
    """What the delivery recheck of one claimed send reads: its customer, the stored
    event (the document and its validated form) and the decision inputs as of now."""

    customer: Customer
    payload: dict[str, Any]
    event: AnyEvent
    inputs: DecisionInputs


def recheck_inputs_many(
    session: Session, sends: Sequence[Send], now: datetime
) -> dict[int, RecheckInputs]:
    """``decision_inputs`` for many sends in four queries (customers, events, suppression
    list, histories) instead of four per send; keyed by send id.

    Each send is left out of its own history. A ``sending`` row not yet handed over counts
    as ``queued`` (not gone yet), exactly as the uncommitted claim of a concurrent worker
    was invisible before claims were committed at once: a recheck judges only emails that
    went or are going out right now.
    """
    from triggers.events import validate_event
    from worker.models import Event
    from worker.privacy import suppression_keys

    if not sends:
        return {}
    customer_ids = {send.customer_id for send in sends}
    customers = {
        customer.id: customer
        for customer in session.scalars(select(Customer).where(Customer.id.in_(customer_ids)))
    }
    payloads: dict[str, dict[str, Any]] = {
        row.event_id: row.payload
        for row in session.execute(
            select(Event.event_id, Event.payload).where(
                Event.event_id.in_({send.event_id for send in sends})
            )
        )
    }
    keys = {
        customer.id: suppression_keys(customer.email) if customer.email else []
        for customer in customers.values()
    }
    suppressed = suppressed_among(session, (key for found in keys.values() for key in found))
    histories = histories_of(session, customer_ids)
    found: dict[int, RecheckInputs] = {}
    for send in sends:
        customer = customers[send.customer_id]
        payload = payloads[send.event_id]
        event = validate_event(payload)
        profile = profile_of(customer)
        subject = subject_for(
            profile,
            suppressed=any(key in suppressed for key in keys[customer.id]),
            opted_out_kinds=customer.opted_out_kinds or (),
        )
        history = [past for past in histories.get(customer.id, []) if past.send_id != send.id]
        inputs = DecisionInputs(profile, subject, build_facts(event, profile, now), history)
        found[send.id] = RecheckInputs(customer, payload, event, inputs)
    return found
