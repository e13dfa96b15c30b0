"""Builders for settings and events used across the worker tests."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.core.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# A Tuesday, 10:30 UTC: inside every demo campaign's window and outside quiet hours.
TUESDAY_MORNING = datetime(2026, 11, 17, 10, 30, tzinfo=UTC)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "var_dir": tmp_path / "var",
        "events_exchange": f"crm.events.test.{uuid.uuid4().hex[:8]}",
        "events_queue": f"crosssell.events.test.{uuid.uuid4().hex[:8]}",
        "dead_letter_queue": f"crosssell.events.dead.test.{uuid.uuid4().hex[:8]}",
        "unsubscribe_keys": "t1:test-secret-0123456789",
    }
    values.update(overrides)
    return Settings(**values)


def customer_block(customer_id: str = "C-1001", **fields: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "id": customer_id,
        "email": f"{customer_id.lower()}@example.ro",
        "first_name": "Ștefan",
        "last_name": "Rădulescu",
        "locale": "ro-RO",
        "timezone": "Europe/Bucharest",
        "consent": {"email_marketing": True},
        "attributes": {"loyalty_tier": "gold"},
    }
    block.update(fields)
    return block


def purchase(
    event_id: str | None = None,
    *,
    at: datetime = TUESDAY_MORNING - timedelta(minutes=30),
    customer: dict[str, Any] | None = None,
    sku: str = "LAP-14-PRO",
    category: str = "laptops",
    price: str = "999.00",
    order_id: str | None = None,
) -> dict[str, Any]:
    event_id = event_id or f"evt-{uuid.uuid4().hex[:12]}"
    return {
        "id": event_id,
        "type": "purchase",
        "occurred_at": at.isoformat(),
        "customer": customer or customer_block(),
        "data": {
            "order_id": order_id or f"O-{event_id}",
            "currency": "EUR",
            "total": price,
            "items": [
                {
                    "sku": sku,
                    "name": "Laptop 14 Pro",
                    "category": category,
                    "quantity": 1,
                    "unit_price": price,
                }
            ],
        },
    }


def as_json(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


def insert_customers(session: Session, ids: list[str], now: datetime) -> None:
    """Bare customer rows (no profile, no purchases) for tests that write rows referring
    to customers without going through ingest."""
    from decimal import Decimal

    from worker.core.dialect_insert import insert_for
    from worker.core.models import Customer

    session.execute(
        insert_for(session, Customer),
        [
            {
                "id": customer_id,
                "attributes": {},
                "categories_bought": [],
                "skus_owned": [],
                "orders_count": 0,
                "lifetime_spend": Decimal(0),
                "created_at": now,
                "updated_at": now,
            }
            for customer_id in ids
        ],
    )
