"""Customer rows: the upsert an event carries, purchase aggregates, and the decision view."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from triggers.decide import MARKETING_HISTORY, PastSend
from triggers.events import CustomerData, PurchaseData
from triggers.facts import CustomerProfile
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
    for name in ("email", "first_name", "last_name", "locale", "timezone"):
        if name in data.model_fields_set:
            setattr(customer, name, getattr(data, name))
    if data.consent is not None and "email_marketing" in data.consent.model_fields_set:
        customer.email_marketing = data.consent.email_marketing
    if data.attributes:
        customer.attributes = {**(customer.attributes or {}), **_json_safe(data.attributes)}
    customer.updated_at = now
    return customer


def _json_safe(values: Mapping[str, object]) -> dict[str, object]:
    return {k: str(v) if isinstance(v, Decimal) else v for k, v in values.items()}


def record_purchase(
    session: Session, customer: Customer, event_id: str, data: PurchaseData, at: datetime
) -> bool:
    """Store the order and update the aggregates; False if the order was already known."""
    if session.get(Order, data.order_id) is not None:
        return False
    session.add(
        Order(
            id=data.order_id,
            customer_id=customer.id,
            event_id=event_id,
            currency=data.currency,
            total=data.total,
            ordered_at=at,
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
    customer.orders_count = (customer.orders_count or 0) + 1
    customer.lifetime_spend = (customer.lifetime_spend or Decimal(0)) + data.total
    if customer.first_purchase_at is None or at < customer.first_purchase_at:
        customer.first_purchase_at = at
    if customer.last_purchase_at is None or at > customer.last_purchase_at:
        customer.last_purchase_at = at
    customer.categories_bought = sorted(
        set(customer.categories_bought or []) | {item.category for item in data.items}
    )
    customer.skus_owned = sorted(set(customer.skus_owned or []) | {item.sku for item in data.items})
    return True


def profile_of(customer: Customer) -> CustomerProfile:
    return CustomerProfile(
        id=customer.id,
        email=customer.email,
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
    return email is not None and session.get(Suppression, email.strip().lower()) is not None
