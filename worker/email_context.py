"""The variables a template sees — one builder for real sends, lint and previews.

customer   id, first_name, last_name, email
event      the stored event (``event.data.order_id``, ``event.data.years`` …)
offer      type, items[] (sku, name, description, category, price, currency, price_text,
           url, image_url), currency, points, new_categories, discount_percent,
           regular_price_text, bundle_price_text
campaign   id, name, kind        variant   the variant id
shop       name, url             unsubscribe_url, preferences_url
money(amount, currency), number(value), long_date(value), locale, lang
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from babel.dates import format_date

from triggers.campaigns import Campaign
from triggers.money import round_money
from triggers.offers import Product, ResolvedOffer, bundle_offer
from worker.rendering import _money, babel_locale
from worker.settings import Settings
from worker.tokens import sign

CONTEXT_NAMES = frozenset(
    {
        "customer",
        "event",
        "offer",
        "campaign",
        "variant",
        "shop",
        "unsubscribe_url",
        "preferences_url",
        "money",
        "number",
        "long_date",
        "locale",
        "lang",
    }
)


@dataclass(frozen=True, slots=True)
class Coupon:
    code: str
    expires_at: datetime
    discount_percent: Decimal | None


@dataclass(frozen=True, slots=True)
class Links:
    unsubscribe_url: str
    preferences_url: str


def links_for(settings: Settings, keys: dict[str, bytes], customer_id: str) -> Links:
    token = sign(keys, customer_id, "all")
    base = settings.public_url.rstrip("/")
    return Links(f"{base}/u/{token}", f"{base}/preferences/{token}")


def offer_context(
    offer: ResolvedOffer, locale_tag: str | None, default_locale: str
) -> dict[str, Any]:
    """``offer`` for templates. Every amount is rounded once to the currency's minor unit
    (``price`` and ``price_text`` show the same amount; see :mod:`triggers.money`)."""
    locale = babel_locale(locale_tag, default_locale)

    def money(amount: Decimal | None, currency: str) -> str:
        return _money(amount or Decimal(0), currency, locale)

    context: dict[str, Any] = {
        "type": offer.type,
        "items": [
            {
                "sku": p.sku,
                "name": p.name,  # in the customer's language when the catalog has it
                "description": getattr(p, "description", None),
                "category": p.category,
                "price": str(round_money(p.price, p.currency)),
                "currency": p.currency,
                "price_text": money(p.price, p.currency),
                "url": p.url,
                "image_url": p.image_url,
            }
            for p in offer.items
        ],
        "currency": offer.currency,
        "points": offer.points,
        "new_categories": list(offer.new_categories),
        "discount_percent": str(offer.discount_percent) if offer.discount_percent else None,
        "regular_price_text": None,
        "bundle_price_text": None,
    }
    if offer.bundle_price is not None and offer.currency:
        context["regular_price_text"] = money(offer.regular_price, offer.currency)
        context["bundle_price_text"] = money(offer.bundle_price, offer.currency)
    return context


def email_context(
    *,
    settings: Settings,
    customer: dict[str, Any],
    event: dict[str, Any],
    campaign: Campaign,
    variant: str,
    offer: ResolvedOffer,
    links: Links,
    coupon: Coupon | None = None,
) -> dict[str, Any]:
    locale = babel_locale(customer.get("locale"), settings.default_locale)
    return {
        "customer": {
            "id": customer["id"],
            "first_name": customer.get("first_name") or "",
            "last_name": customer.get("last_name") or "",
            "email": customer.get("email"),
        },
        "event": event,
        "offer": offer_context(offer, customer.get("locale"), settings.default_locale),
        "campaign": {"id": campaign.id, "name": campaign.name, "kind": campaign.kind},
        "variant": variant,
        "shop": {"name": settings.shop_name, "url": settings.public_url},
        "unsubscribe_url": links.unsubscribe_url,
        "preferences_url": links.preferences_url,
        "coupon": None
        if coupon is None
        else {
            "code": coupon.code,
            "expires_at": coupon.expires_at.isoformat(),
            "expires_text": format_date(coupon.expires_at, format="long", locale=locale),
            "discount_percent": str(coupon.discount_percent) if coupon.discount_percent else None,
        },
    }


_SAMPLE_DATA: dict[str, dict[str, Any]] = {
    "purchase": {
        "order_id": "O-SAMPLE",
        "currency": "EUR",
        "total": "999.00",
        "items": [
            {
                "sku": "SAMPLE-1",
                "name": "Sample product",
                "category": "sample",
                "quantity": 1,
                "unit_price": "999.00",
            }
        ],
    },
    "anniversary": {"kind": "membership", "years": 2},
    "usage_change": {
        "metric": "logins_per_week",
        "previous": "12",
        "current": "3",
        "window_days": 14,
    },
}


def sample_offer(campaign: Campaign) -> ResolvedOffer:
    """An offer of the campaign's type with two items, for lint and previews."""
    items = tuple(
        Product(
            f"SAMPLE-{n}",
            f"Sample item {n}",
            "sample",
            Decimal("49.90") * n,
            "EUR",
            url=f"https://shop.example/p/sample-{n}",
        )
        for n in (1, 2)
    )
    offer = campaign.offer
    if offer.type == "bundle":
        return bundle_offer(items, offer.discount_percent)
    if offer.type == "loyalty_bonus":
        return ResolvedOffer(
            "loyalty_bonus", items, "EUR", points=offer.points, new_categories=("sample",)
        )
    return ResolvedOffer(offer.type, items, "EUR")


def sample_context(campaign: Campaign, settings: Settings, locale: str | None) -> dict[str, Any]:
    """A realistic context for the campaign's trigger and offer types."""
    customer = {
        "id": "C-SAMPLE",
        "first_name": "Ana",
        "last_name": "Pop",
        "email": "ana.pop@example.com",
        "locale": locale,
    }
    event = {
        "id": "evt-sample",
        "type": campaign.trigger.event,
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        "customer": {"id": "C-SAMPLE"},
        "data": _SAMPLE_DATA[campaign.trigger.event],
    }
    links = Links("https://shop.example/u/sample", "https://shop.example/preferences/sample")
    spec = campaign.offer.coupon
    coupon = None
    if spec is not None:
        coupon = Coupon("SAMPLE-CODE1", datetime(2026, 1, 15, tzinfo=UTC), spec.discount_percent)
    return email_context(
        settings=settings,
        customer=customer,
        event=event,
        campaign=campaign,
        variant=campaign.experiment.variants[0].id,
        offer=sample_offer(campaign),
        links=links,
        coupon=coupon,
    )
