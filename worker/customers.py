"""Customer rows: the upsert an event carries, purchase aggregates, and the decision view."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from triggers.addresses import lookup_key
from triggers.decide import MARKETING_HISTORY, PastSend
from triggers.events import CustomerData, PurchaseEvent
from triggers.facts import CustomerProfile, apply_customer, apply_purchase, purchase_of
from worker.models import Customer, Order, OrderLine, Send, Suppression


def upsert_customer(session: Session, data: CustomerData, now: datetime) -> Customer:
    """Create or update a customer; only the fields the event gives replace stored ones."""
    customer = session.get(Customer, data.id, with_for_update=True)
    if customer is None:
        customer = Customer(
            id=data.id,
            attributes={},
            categories_bought=[],
            skus_owned=[],
            orders_count=0,
            lifetime_spend=Decimal(0),
            created_at=now,
        )
        session.add(customer)
    _store(customer, apply_customer(profile_of(customer), data))
    customer.updated_at = now
    return customer


def record_purchase(session: Session, customer: Customer, event: PurchaseEvent) -> bool:
    """Store the order and update the aggregates; False if the order was already known."""
    data = event.data
    if session.get(Order, data.order_id) is not None:
        return False
    session.add(
        Order(
            id=data.order_id,
            customer_id=customer.id,
            event_id=event.id,
            currency=data.currency,
            total=data.total,
            ordered_at=event.occurred_at,
        )
    )
    session.add_all(
        OrderLine(
            order_id=data.order_id,
            sku=item.sku,
            category=item.category,
            quantity=item.quantity,
            unit_price=item.unit_price,
        )
        for item in data.items
    )
    _store(customer, apply_purchase(profile_of(customer), *purchase_of(event)))
    return True


def _store(customer: Customer, profile: CustomerProfile) -> None:
    """Write a profile back to its row (only what changed is updated by the ORM)."""
    for name in (
        "email",
        "first_name",
        "last_name",
        "locale",
        "timezone",
        "email_marketing",
        "orders_count",
        "lifetime_spend",
        "first_purchase_at",
        "last_purchase_at",
    ):
        if getattr(customer, name) != getattr(profile, name):
            setattr(customer, name, getattr(profile, name))
    if dict(customer.attributes or {}) != dict(profile.attributes):
        customer.attributes = dict(profile.attributes)
    if set(customer.categories_bought or ()) != profile.categories_bought:
        customer.categories_bought = sorted(profile.categories_bought)
    if set(customer.skus_owned or ()) != profile.skus_owned:
        customer.skus_owned = sorted(profile.skus_owned)


def profile_of(customer: Customer) -> CustomerProfile:
    return CustomerProfile(
        id=customer.id,
        email=customer.email,
        first_name=customer.first_name,
        last_name=customer.last_name,
        locale=customer.locale,
        timezone=customer.timezone,
        email_marketing=customer.email_marketing,
        orders_count=customer.orders_count or 0,
        lifetime_spend=customer.lifetime_spend or Decimal(0),
        first_purchase_at=customer.first_purchase_at,
        last_purchase_at=customer.last_purchase_at,
        categories_bought=frozenset(customer.categories_bought or ()),
        skus_owned=frozenset(customer.skus_owned or ()),
        attributes=dict(customer.attributes or {}),
    )


def send_history(
    session: Session, customer_id: str, exclude_send: int | None = None
) -> list[PastSend]:
    """The customer's marketing emails that count for frequency rules."""
    rows = session.execute(
        select(
            Send.id, Send.campaign_id, Send.status, Send.sent_at, Send.send_at, Send.created_at
        ).where(Send.customer_id == customer_id, Send.status.in_(MARKETING_HISTORY))
    ).all()
    return [
        PastSend(row.campaign_id, row.status, row.sent_at or row.send_at or row.created_at)
        for row in rows
        if row.id != exclude_send
    ]


def is_suppressed(session: Session, email: str | None) -> bool:
    """Checked on the canonical suppression key (triggers.addresses), so ``Ana@EXÄMPLE.ro``
    and ``ana@xn--exmple-cua.ro`` are one address."""
    return email is not None and session.get(Suppression, lookup_key(email)) is not None
