"""Apply provider-neutral tracking events to sends, suppressions and consent — once each.

What each kind does (docs/delivery.md, "Retries, permanent failures and suppression":
hard bounces suppress the address; 5.7.x policy refusals alert the operator instead of
suppressing the customer):

==============  ==================================================================
hard bounce     suppress the address (``hard_bounce``); a ``sent`` send → ``failed``
                with reason ``hard_bounce``
policy (5.7.x)  alert the operator (log + ``policy_alerts``); a ``sent`` send →
                ``failed``/``policy_rejected``; the address is *not* suppressed
complained      suppress (``complaint``) and withdraw the customer's email consent,
                recorded in the consent history (``webhook:<provider>``)
unsubscribed    suppress (``unsubscribe``) and withdraw consent the same way
soft bounce,    recorded in ``webhook_events`` only: the provider retries, and one
deferred,       soft failure says nothing lasting about the address
rejected, other
delivered       recorded and counted
==============  ==================================================================

Every event is first recorded in ``webhook_events`` (see :mod:`worker.records.webhook_events`);
an event already recorded is counted as a duplicate and changes nothing. Run this in
one transaction per webhook request (``worker.core.db.transaction``), so a failure leaves
nothing half-applied and the provider's retry applies it whole.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter as MetricCounter
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from triggers.addresses import lookup_key
from worker.core.commit_counts import count_on_commit
from worker.core.metrics import SENDS
from worker.core.models import Customer, Send, Suppression
from worker.core.redaction import address_ref, redact
from worker.records.activity import record_send_activity
from worker.records.customers import withdraw_consent
from worker.records.webhook_events import EVENT_ID_LENGTH, WebhookEvent
from worker.webhooks.events import TrackingEvent

log = logging.getLogger(__name__)

WEBHOOK_EVENTS = MetricCounter(
    "crosssell_webhook_events_total",
    "Provider webhook events by provider, kind and result (applied or duplicate)",
    ["provider", "kind", "result"],
)


@dataclass
class ApplyReport:
    """What one batch did, for the HTTP answer, logs and tests."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    suppressed: list[str] = field(default_factory=list)
    failed_sends: list[int] = field(default_factory=list)
    consent_withdrawn: list[str] = field(default_factory=list)
    policy_alerts: list[str] = field(default_factory=list)


def storage_id(event_id: str) -> str:
    """The event id as stored: provider ids longer than the column become their hash."""
    if len(event_id) <= EVENT_ID_LENGTH:
        return event_id
    return "sha256:" + hashlib.sha256(event_id.encode("utf-8")).hexdigest()


def apply_events(session: Session, events: Iterable[TrackingEvent], now: datetime) -> ApplyReport:
    """Record each new event and apply its effect; ignore events already recorded. The
    counts (``crosssell_webhook_events_total``) are taken when the caller commits."""
    report = ApplyReport()
    for event in events:
        report.received += 1
        if not _record(session, event, now):
            report.duplicates += 1
            count_on_commit(session, WEBHOOK_EVENTS, event.provider, event.kind, "duplicate")
            continue
        report.applied += 1
        report.kinds[event.kind] += 1
        _apply(session, event, now, report)
        count_on_commit(session, WEBHOOK_EVENTS, event.provider, event.kind, "applied")
    return report


def _record(session: Session, event: TrackingEvent, now: datetime) -> bool:
    """Insert the event's rows, one per key (``event_id`` and ``also_ids``); False if any
    key is already there (a retry or a replay)."""
    keys = list(dict.fromkeys(storage_id(key) for key in (event.event_id, *event.also_ids)))
    seen = session.scalar(
        select(WebhookEvent.id)
        .where(WebhookEvent.provider == event.provider, WebhookEvent.event_id.in_(keys))
        .limit(1)
    )
    if seen is not None:
        return False
    try:
        # A concurrent delivery of the same event may insert first: the unique
        # constraint decides, and only this savepoint is rolled back.
        with session.begin_nested():
            session.add_all(
                WebhookEvent(
                    provider=event.provider,
                    event_id=key,
                    kind=event.kind,
                    recipient=event.recipient,
                    occurred_at=event.timestamp,
                    received_at=now,
                )
                for key in keys
            )
    except IntegrityError:
        return False
    return True


def _apply(session: Session, event: TrackingEvent, now: datetime, report: ApplyReport) -> None:
    source = f"webhook:{event.provider}"[:64]
    if event.policy:
        send = _find_send(session, event)
        if send is not None and _fail_send(session, send.id, "policy_rejected", event, now):
            report.failed_sends.append(send.id)
        report.policy_alerts.append(event.event_id)
        log.error(
            "OPERATOR: %s refused a message by policy (%s) for %s; the address is not "
            "suppressed — check sender authentication (SPF, DKIM, DMARC) and reputation",
            event.provider,
            redact(event.description),
            address_ref(event.recipient),
        )
        return
    if event.kind == "bounced" and event.bounce_type == "hard":
        send = _find_send(session, event)
        if event.recipient and _suppress(session, event.recipient, "hard_bounce", source, now):
            report.suppressed.append(event.recipient)
        if send is not None and _fail_send(session, send.id, "hard_bounce", event, now):
            report.failed_sends.append(send.id)
    elif event.kind == "complained":
        send = _find_send(session, event)
        if event.recipient and _suppress(session, event.recipient, "complaint", source, now):
            report.suppressed.append(event.recipient)
        _withdraw(session, event, send, source, "complaint", now, report)
    elif event.kind == "unsubscribed":
        if event.recipient and _suppress(session, event.recipient, "unsubscribe", source, now):
            report.suppressed.append(event.recipient)
        _withdraw(session, event, _find_send(session, event), source, "unsubscribe", now, report)


def _withdraw(
    session: Session,
    event: TrackingEvent,
    send: Send | None,
    source: str,
    detail: str,
    now: datetime,
    report: ApplyReport,
) -> None:
    """Record the person's opt-out in their consent history, so that it outlives the
    address: a complaint or a provider-handled unsubscribe is the person's decision,
    made when the provider saw it (``event.timestamp``)."""
    decided_at = min(event.timestamp, now) if event.timestamp else now
    for customer in _customers(session, event, send):
        if withdraw_consent(
            session,
            customer,
            source,
            now,
            decided_at=decided_at,
            detail=detail,
            activity="complained" if detail == "complaint" else "unsubscribed",
        ):
            report.consent_withdrawn.append(customer.id)


def _find_send(session: Session, event: TrackingEvent) -> Send | None:
    """The send the event is about: by our Message-ID (stored with the claim, indexed),
    else by the id the provider's API returned."""
    if event.message_id:
        send = session.scalars(
            select(Send).where(Send.message_id == event.message_id).limit(1)
        ).first()
        if send is not None:
            return send
    if event.provider_message_id:
        return session.scalars(
            select(Send).where(Send.provider_message_id == event.provider_message_id).limit(1)
        ).first()
    return None


def _customers(session: Session, event: TrackingEvent, send: Send | None) -> list[Customer]:
    """Whose consent a complaint withdraws: the customer the message went to, or, when
    the message is unknown, every customer with the complaining address."""
    if send is not None:
        customer = session.get(Customer, send.customer_id)
        return [customer] if customer is not None else []
    if not event.recipient:
        return []
    return list(
        session.scalars(
            select(Customer).where(func.lower(Customer.email) == lookup_key(event.recipient))
        )
    )


def _suppress(session: Session, email: str, reason: str, source: str, now: datetime) -> bool:
    """Add the address to the suppression list; False if it is already there (the first
    reason stays: it is the one that explains the first refusal)."""
    key = lookup_key(email)  # the canonical key: a provider may name the A-label form
    if session.get(Suppression, key) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(Suppression(email=key, reason=reason, source=source, created_at=now))
    except IntegrityError:
        return False  # suppressed meanwhile by another request: the goal is reached
    return True


def _fail_send(
    session: Session, send_id: int, reason: str, event: TrackingEvent, now: datetime
) -> bool:
    """Mark a ``sent`` send failed; any other status (already failed, or a race with the
    worker that has not recorded ``sent`` yet) is left as it is."""
    result = session.execute(
        update(Send)
        .where(Send.id == send_id, Send.status == "sent")
        .values(
            status="failed",
            reason=reason,
            detail=(f"{event.provider}: {event.description or event.kind}")[:1000],
            updated_at=now,
        )
    )
    changed = bool(getattr(result, "rowcount", 0))
    if changed:
        count_on_commit(session, SENDS, "failed", reason)
        if reason == "hard_bounce":
            record_send_activity(session, "email_bounced", send_id, event.timestamp or now)
    return changed
