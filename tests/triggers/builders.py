"""Small builders shared by the ``triggers/`` unit tests (pure: no DB, no clock)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from triggers.campaigns import Campaign
from triggers.rule_set import CompiledCampaign, RuleSet, compile_campaign

# The DESIGN §3.1 example, verbatim.
DESIGN_EVENT: dict[str, Any] = {
    "id": "evt-2026-000123",
    "type": "purchase",
    "occurred_at": "2026-11-20T10:15:00+02:00",
    "customer": {
        "id": "C-1001",
        "email": "ana.pop@example.ro",
        "first_name": "Ana",
        "last_name": "Pop",
        "locale": "ro-RO",
        "timezone": "Europe/Bucharest",
        "consent": {"email_marketing": True},
        "attributes": {"loyalty_tier": "gold"},
    },
    "data": {
        "order_id": "O-77",
        "currency": "RON",
        "total": "4299.00",
        "items": [
            {
                "sku": "LAP-14-PRO",
                "name": "Laptop 14 Pro",
                "category": "laptops",
                "quantity": 1,
                "unit_price": "4299.00",
            }
        ],
    },
}

# A Tuesday morning in UTC: outside the default quiet hours (21:00-08:00).
TUESDAY_10 = datetime(2026, 11, 17, 10, 0, tzinfo=UTC)


def design_event(**top: Any) -> dict[str, Any]:
    """A deep copy of the DESIGN example, with top-level keys replaced."""
    document = copy.deepcopy(DESIGN_EVENT)
    document.update(top)
    return document


def usage_event(previous: object, current: object) -> dict[str, Any]:
    return design_event(
        type="usage_change",
        data={
            "metric": "logins_per_week",
            "previous": previous,
            "current": current,
            "window_days": 14,
        },
    )


def anniversary_event(kind: str = "membership", years: int = 2) -> dict[str, Any]:
    return design_event(type="anniversary", data={"kind": kind, "years": years})


def to_json(document: object) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def campaign_document(
    campaign_id: str,
    *,
    priority: int = 50,
    event: str = "purchase",
    status: str = "active",
    where: dict[str, Any] | None = None,
    audience: dict[str, Any] | None = None,
    offer: dict[str, Any] | None = None,
    schedule: dict[str, Any] | None = None,
    frequency: dict[str, Any] | None = None,
    holdout_percent: int | str = 0,
    variants: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    trigger: dict[str, Any] = {"event": event}
    if where is not None:
        trigger["where"] = where
    document: dict[str, Any] = {
        "id": campaign_id,
        "name": f"Campaign {campaign_id}",
        "status": status,
        "kind": "cross_sell",
        "priority": priority,
        "trigger": trigger,
        "offer": offer or {"type": "complementary"},
        "experiment": {
            "holdout_percent": holdout_percent,
            "variants": variants or [{"id": "A", "weight": 1, "template": "accessories"}],
        },
    }
    if audience is not None:
        document["audience"] = audience
    if schedule is not None:
        document["schedule"] = schedule
    if frequency is not None:
        document["frequency"] = frequency
    return document


def make_campaign(campaign_id: str, **options: Any) -> Campaign:
    return Campaign.model_validate(campaign_document(campaign_id, **options))


def compiled(campaign_id: str, **options: Any) -> CompiledCampaign:
    return compile_campaign(make_campaign(campaign_id, **options), f"{campaign_id}.yaml", {})


def rule_set(*campaigns: CompiledCampaign) -> RuleSet:
    return RuleSet(tuple(campaigns))
