"""Attribution's I/O: record each send's offer, attribute purchases, reconcile late ones.

The rules (window, direct or influenced, last touch) are in :mod:`triggers.attribution`;
this module reads the touches and writes ``conversions`` and ``send_offers``.

* Ingest (``worker.intake.ingest``), in its own transaction, resolves for every send an event
  planned, emailed or held out, the products the campaign's offer gives *now*
  (:func:`resolve_offered`, stored by :func:`store_offers` in ``send_offers``): both
  groups' offers are resolved the same way at the same moment, so "direct" means the
  same thing in both. For a purchase it then attributes the order to the touches
  already recorded (:func:`attribute_order`).
* :func:`reconcile` repeats the attribution for every order in a time range: purchases
  that arrived before the send they follow was recorded (an email marked ``sent`` after
  the purchase was ingested, a late trigger event) are attributed then. ``crosssell
  report`` runs it first. Running it again changes nothing: one row per (order, campaign),
  updated to what the rule says for all touches known now.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from triggers.attribution import (
    Attribution,
    Purchase,
    Touch,
    attribute,
    earliest_touch_start,
    window_for,
)
from triggers.durations import parse_duration
from triggers.events import AnyEvent, PurchaseEvent, validate_event
from triggers.facts import CustomerProfile
from triggers.money import round_money
from triggers.offers import OfferUnavailable
from triggers.rule_set import CompiledCampaign, RuleSet
from worker.core.dialect_insert import insert_rows
from worker.core.models import Conversion, Customer, Event, Order, OrderLine, Send, SendOffer
from worker.core.settings import Settings
from worker.decide.rules import load_complements
from worker.offers.offer_resolution import CatalogMemo, choose_offer
from worker.records.activity import record_activity
from worker.records.customers import profile_of

log = logging.getLogger(__name__)

# A send is a treated touch once handed to the provider: ``sent``, or ``failed`` by a
# later bounce report (the customer was emailed; dropping bounced addresses from the
# treated group only would bias it against the control group).
TREATED_STATUSES = ("sent", "failed")
PLANNED_STATUSES = ("planned", "queued", "held_out")


@dataclass(frozen=True, slots=True)
class AttributionConfig:
    """What attribution needs besides the database: the default window and the
    category complements that offers are resolved with."""

    default_window: timedelta
    complements: Mapping[str, Sequence[str]]

    @classmethod
    def from_settings(cls, settings: Settings) -> AttributionConfig:
        return cls(
            parse_duration(settings.attribution_window),
            _complements(settings.complements_file, _mtime(settings.complements_file)),
        )


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


@lru_cache(maxsize=4)
def _complements(path: Path, mtime: int) -> dict[str, list[str]]:
    """The complements file, read again only when it changed (``mtime`` is the key)."""
    return load_complements(path)


def resolve_offered(
    session: Session,
    compiled: CompiledCampaign | None,
    step_id: str | None,
    profile: CustomerProfile | None,
    event: AnyEvent | None,
    config: AttributionConfig,
    *,
    send_id: int | None = None,
    memo: CatalogMemo | None = None,
) -> tuple[list[str], str | None]:
    """The products a send of ``compiled`` offers ``profile`` after ``event`` (a sequence
    step's own offer when it has one), with the reason when there are none. Never raises
    but for database errors: measurement must not stop ingest. ``memo`` shares catalog
    reads between the sends of one transaction."""
    if compiled is None:
        return [], "campaign_unknown"
    if profile is None:
        return [], "customer_unknown"
    if event is None:
        return [], "event_unknown"
    try:
        offer = compiled.campaign.offer
        step = next((s for s in compiled.campaign.steps or () if s.id == step_id), None)
        if step is not None and step.offer is not None:
            offer = step.offer
        resolved = choose_offer(session, offer, event, profile, config.complements, memo)
        return [item.sku for item in resolved.items], None
    except OfferUnavailable as unavailable:
        return [], unavailable.reason[:64]
    except DBAPIError:
        raise  # the connection or the database: the caller's retry decides
    except Exception:
        # The send is recorded without an offer (its conversions count as influenced)
        # and the fault is logged.
        log.exception(
            "send %s of %s: its offer could not be resolved for attribution",
            send_id if send_id is not None else "(new)",
            compiled.id,
        )
        return [], "offer_error"


def store_offers(
    session: Session, offers: Mapping[int, tuple[list[str], str | None]], now: datetime
) -> None:
    """Record new sends' offers (send id → products, reason) in one multi-row statement
    (``insert_rows``; an executemany was one ``INSERT`` per send, the largest statement of
    a matching ingest batch: docs/performance.md, "Offers in one statement"); a row a
    concurrent reconciliation stored first is kept (``ON CONFLICT DO NOTHING``)."""
    if not offers:
        return
    rows = [
        {"send_id": send_id, "skus": skus, "reason": reason, "resolved_at": now}
        for send_id, (skus, reason) in offers.items()
    ]
    insert_rows(session, SendOffer, rows, conflict="send_id")


def offered_skus(
    session: Session,
    send: Send,
    rules: RuleSet,
    config: AttributionConfig,
    now: datetime,
    event: AnyEvent | None = None,
) -> frozenset[str]:
    """The products ``send`` offered (would have offered, if held out), resolved once and
    stored; a send planned before offers were recorded is resolved on first need."""
    stored = session.get(SendOffer, send.id)
    if stored is not None:
        return frozenset(stored.skus)
    compiled = rules.by_id(send.campaign_id)
    customer = session.get(Customer, send.customer_id)
    if event is None and compiled is not None and customer is not None:
        payload = session.scalar(select(Event.payload).where(Event.event_id == send.event_id))
        event = validate_event(payload) if payload is not None else None
    skus, reason = resolve_offered(
        session,
        compiled,
        send.step_id,
        profile_of(customer) if customer is not None else None,
        event,
        config,
        send_id=send.id,
    )
    try:
        # A concurrent reconciliation may record the same send's offer first.
        with session.begin_nested():
            session.add(SendOffer(send_id=send.id, skus=skus, reason=reason, resolved_at=now))
    except IntegrityError:
        stored = session.get(SendOffer, send.id)
        return frozenset(stored.skus) if stored is not None else frozenset()
    return frozenset(skus)


def _windows(rules: RuleSet, default: timedelta) -> dict[str, timedelta]:
    return {
        compiled.id: window_for(compiled.campaign.attribution_window, default)
        for compiled in rules.campaigns
    }


def touches_for(
    session: Session,
    customer_id: str,
    ordered_at: datetime,
    rules: RuleSet,
    config: AttributionConfig,
    now: datetime,
) -> list[Touch]:
    """The customer's sent and held-out sends whose window may hold ``ordered_at``."""
    windows = _windows(rules, config.default_window)
    since = earliest_touch_start(ordered_at, [config.default_window, *windows.values()])
    rows = session.scalars(
        select(Send).where(
            Send.customer_id == customer_id,
            or_(
                and_(
                    Send.status.in_(TREATED_STATUSES),
                    Send.sent_at.is_not(None),
                    Send.sent_at >= since,
                    Send.sent_at < ordered_at,
                ),
                and_(
                    Send.status == "held_out",
                    Send.send_at.is_not(None),
                    Send.send_at >= since,
                    Send.send_at < ordered_at,
                ),
            ),
        )
    ).all()
    touches: list[Touch] = []
    for send in rows:
        held_out = send.status == "held_out"
        touched_at = send.send_at if held_out else send.sent_at
        assert touched_at is not None
        touches.append(
            Touch(
                send_id=send.id,
                campaign_id=send.campaign_id,
                variant=send.variant,
                group="held_out" if held_out else "sent",
                touched_at=touched_at,
                window=windows.get(send.campaign_id, config.default_window),
                offered_skus=offered_skus(session, send, rules, config, now),
            )
        )
    return touches


def attribute_order(
    session: Session,
    order_id: str,
    rules: RuleSet,
    config: AttributionConfig,
    now: datetime,
    event: PurchaseEvent | None = None,
) -> tuple[Attribution, ...]:
    """Attribute one order to the touches known now and store the result, idempotently.

    Rows of this order are inserted or brought up to date (a later touch recorded since,
    the credited flag moving to it); a row is never duplicated: the unique (order,
    campaign) constraint decides between concurrent writers. ``event`` is the purchase
    being ingested, when it is: an order it has just created has no rows yet and its
    products are the event's, which saves two queries on the ingest path."""
    order = session.get(Order, order_id)
    if order is None:
        return ()
    fresh = event is not None and order.event_id == event.id
    if event is not None and fresh:
        skus: Iterable[str] = (item.sku for item in event.data.items)
    else:
        skus = session.scalars(select(OrderLine.sku).where(OrderLine.order_id == order_id))
    purchase = Purchase(order.id, order.ordered_at, frozenset(skus))
    attributions = attribute(
        purchase, touches_for(session, order.customer_id, order.ordered_at, rules, config, now)
    )
    if fresh and not attributions:
        return ()
    existing = {
        row.campaign_id: row
        for row in session.scalars(select(Conversion).where(Conversion.order_id == order_id))
    }
    chosen = {attribution.campaign_id for attribution in attributions}
    for campaign_id, row in existing.items():
        if campaign_id not in chosen and row.credited:
            row.credited = False
    for attribution in attributions:
        stored = existing.get(attribution.campaign_id)
        if stored is None:
            stored = _insert(session, order, attribution, now)
        if stored is not None:
            _update(stored, attribution)
    return attributions


def _insert(
    session: Session, order: Order, attribution: Attribution, now: datetime
) -> Conversion | None:
    """Insert the row in a savepoint; a concurrent writer's row wins and is returned."""
    row = Conversion(
        order_id=order.id,
        campaign_id=attribution.campaign_id,
        send_id=attribution.send_id,
        variant=attribution.variant,
        arm=attribution.group,
        kind=attribution.kind,
        credited=attribution.credited,
        revenue=order.total,
        currency=order.currency,
        ordered_at=order.ordered_at,
        touched_at=attribution.touched_at,
        attributed_at=now,
    )
    try:
        with session.begin_nested():
            session.add(row)
        # The CRM's timeline: one ``converted`` activity per new (order, campaign) row,
        # in the same transaction (worker.records.activity's outbox), ids only.
        record_activity(
            session,
            "converted",
            order.customer_id,
            {
                "order_id": order.id,
                "campaign_id": attribution.campaign_id,
                "variant": attribution.variant,
                "group": attribution.group,
                "kind": attribution.kind,
                "send_id": attribution.send_id,
                # In the currency's own minor unit: PostgreSQL's NUMERIC keeps 4 places.
                "revenue": round_money(Decimal(order.total), order.currency),
                "currency": order.currency,
            },
            order.ordered_at,
        )
        return None
    except IntegrityError:
        return session.scalars(
            select(Conversion).where(
                Conversion.order_id == order.id, Conversion.campaign_id == attribution.campaign_id
            )
        ).one_or_none()


def _update(row: Conversion, attribution: Attribution) -> None:
    """Bring a stored row to the rule's current answer (the ORM writes only changes)."""
    row.send_id = attribution.send_id
    row.variant = attribution.variant
    row.arm = attribution.group
    row.kind = attribution.kind
    row.credited = attribution.credited
    row.touched_at = attribution.touched_at


def orders_to_reconcile(
    session: Session, since: datetime | None, until: datetime | None
) -> Iterable[str]:
    """Ids of orders in the range whose customer has at least one touch."""
    query = (
        select(Order.id)
        .where(
            Order.customer_id.in_(
                select(Send.customer_id).where(
                    or_(Send.status == "held_out", Send.sent_at.is_not(None))
                )
            )
        )
        .order_by(Order.ordered_at, Order.id)
    )
    if since is not None:
        query = query.where(Order.ordered_at >= since)
    if until is not None:
        query = query.where(Order.ordered_at < until)
    return session.scalars(query).all()


def reconcile(
    session: Session,
    rules: RuleSet,
    config: AttributionConfig,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """Attribute every order in ``[since, until)`` again; returns how many orders were
    looked at. Safe to run any number of times, concurrently with ingest."""
    count = 0
    for order_id in orders_to_reconcile(session, since, until):
        attribute_order(session, order_id, rules, config, now)
        count += 1
    if count:
        log.info("attribution reconciled %d orders", count)
    return count
