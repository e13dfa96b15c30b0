"""worker.records.customers.apply_upsert_profiled: the profile it returns is the one
``profile_of`` reads back from the row it stored (ingest decides on it instead of
reading the row again)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from tests.support.factories import TUESDAY_MORNING, customer_block, purchase
from triggers.events import PurchaseEvent, validate_event
from worker.core.db import engine_for
from worker.records.customers import (
    apply_upsert_profiled,
    lock_customers,
    profile_of,
    withdraw_consent,
)

NOW = TUESDAY_MORNING

UPSERTS: dict[str, list[dict[str, Any]]] = {
    "new customer, a purchase": [purchase(customer=customer_block("P-1"))],
    "a second purchase, new attributes": [
        purchase(customer=customer_block("P-2")),
        purchase(
            customer=customer_block("P-2", attributes={"score": "1.50", "tags": ["a", "b"]}),
            sku="BOOK-1",
            category="books",
            price="20.00",
        ),
    ],
    "profile fields only": [
        purchase(customer=customer_block("P-3")),
        {
            "id": "evt-p3-anniversary",
            "type": "anniversary",
            "occurred_at": (NOW - timedelta(minutes=5)).isoformat(),
            "customer": {"id": "P-3", "first_name": "Ana", "locale": "en-GB"},
            "data": {"kind": "membership", "years": 2},
        },
    ],
    "an opt-in refused, kinds changed": [
        purchase(customer=customer_block("P-4")),
        purchase(
            customer=customer_block(
                "P-4",
                consent={
                    "email_marketing": True,
                    "kinds": {"upsell": False, "loyalty": True},
                    "updated_at": (NOW - timedelta(days=30)).isoformat(),
                },
            ),
            price="350.00",
        ),
    ],
    "an opt-out": [
        purchase(customer=customer_block("P-5")),
        purchase(customer=customer_block("P-5", consent={"email_marketing": False})),
    ],
}


@pytest.mark.parametrize("case", sorted(UPSERTS))
def test_the_returned_profile_is_the_stored_one(database_url: str, case: str) -> None:
    for number, document in enumerate(UPSERTS[case]):
        event = validate_event(document, NOW)
        with Session(engine_for(database_url)) as session, session.begin():
            stored = lock_customers(session, [event.customer.id]).get(event.customer.id)
            if stored is not None and case.startswith("an opt-in refused") and number == 1:
                withdraw_consent(session, stored, "one-click", NOW - timedelta(days=1))
            customer, profile = apply_upsert_profiled(
                session,
                stored,
                event.customer,
                NOW,
                purchase=event if isinstance(event, PurchaseEvent) else None,
            )
            assert profile == profile_of(customer)
        with Session(engine_for(database_url)) as session:
            customer_id = event.customer.id
            assert profile == profile_of(lock_customers(session, [customer_id])[customer_id])
