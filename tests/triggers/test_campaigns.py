"""The campaign model (DESIGN §3.2): defaults and the rules a file must follow."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from tests.triggers.builders import campaign_document, make_campaign
from triggers.campaigns import (
    BundleOffer,
    Campaign,
    ComplementaryOffer,
    LoyaltyBonusOffer,
    UpgradeOffer,
)


def test_defaults() -> None:
    document = campaign_document("minimal")
    del document["status"], document["priority"]
    campaign = Campaign.model_validate(document)
    assert campaign.status == "active"
    assert campaign.priority == 50
    assert campaign.schedule.delay == timedelta(0)
    assert campaign.schedule.window is None
    assert campaign.schedule.timezone == "customer"
    assert campaign.schedule.expire_after == timedelta(days=7)
    assert campaign.frequency.once_per_customer is False
    assert campaign.frequency.cooldown is None
    assert campaign.audience is None
    assert campaign.trigger.where is None
    assert isinstance(campaign.offer, ComplementaryOffer)
    assert (campaign.offer.max_items, campaign.offer.exclude_owned) == (3, True)
    assert campaign.offer.unavailable == "skip_item"


@pytest.mark.parametrize(
    ("offer", "kind"),
    [
        ({"type": "complementary"}, ComplementaryOffer),
        ({"type": "bundle", "discount_percent": 15}, BundleOffer),
        ({"type": "upgrade", "max_price_ratio": Decimal("1.5")}, UpgradeOffer),
        ({"type": "loyalty_bonus", "points": 500}, LoyaltyBonusOffer),
    ],
)
def test_offer_types(offer: dict[str, Any], kind: type) -> None:
    assert isinstance(make_campaign("c", offer=offer).offer, kind)


def test_bundle_discount_is_an_exact_decimal() -> None:
    offer = make_campaign("c", offer={"type": "bundle", "discount_percent": Decimal("12.5")}).offer
    assert isinstance(offer, BundleOffer)
    assert offer.discount_percent == Decimal("12.5")


@pytest.mark.parametrize(
    "change",
    [
        {"id": "Laptop_Accessories"},
        {"id": ""},
        {"name": ""},
        {"status": "archived"},
        {"kind": "spam"},
        {"priority": 1001},
        {"priority": -1},
        {"offer": {"type": "loyalty_bonus"}},  # points are required
        {"offer": {"type": "upgrade", "max_price_ratio": 1}},  # must be dearer
        {"offer": {"type": "bundle", "discount_percent": 101}},
        {"offer": {"type": "complementary", "max_items": 0}},
        {"offer": {"type": "complementary", "unavailable": "ignore"}},
        {"offer": {"type": "complementary", "points": 5}},  # a key of another offer type
        {"schedule": {"delay": True}},
        {"schedule": {"delay": 5}},
        {"schedule": {"window": {"from": "09:00", "to": "09:00"}}},
        {"schedule": {"window": {"days": [], "from": "09:00", "to": "19:00"}}},
        {"schedule": {"window": {"from": "09:00"}}},
        {"frequency": {"cooldown": "30 days"}},
        {"trigger": {"event": "refund"}},
        {"experiment": {"variants": [{"id": "A", "template": "../etc/passwd"}]}},
        {"experiment": {"variants": [{"id": "A B", "template": "t"}]}},
        {"experiment": {"holdout_percent": 100.5, "variants": [{"id": "A", "template": "t"}]}},
    ],
)
def test_invalid_campaigns_are_rejected(change: dict[str, Any]) -> None:
    document = campaign_document("valid") | change
    with pytest.raises(ValidationError):
        Campaign.model_validate(document)


def test_zero_durations() -> None:
    """No delay is a delay; an expiry of zero would skip every email as expired."""
    campaign = make_campaign("c", schedule={"delay": 0, "expire_after": "1m"})
    assert campaign.schedule.delay == timedelta(0)
    with pytest.raises(ValidationError, match="never goes out"):
        make_campaign("c", schedule={"delay": 0, "expire_after": "0m"})


def test_campaigns_are_immutable() -> None:
    campaign = make_campaign("c")
    with pytest.raises(ValidationError):
        campaign.priority = 10  # type: ignore[misc]
