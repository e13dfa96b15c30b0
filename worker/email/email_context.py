"""The variables a template sees — one builder for real sends, lint and previews.

customer   id, first_name, last_name (both may be empty: write a fallback), email
event      the stored event (``event.data.order_id``, ``event.data.years`` …)
offer      type, items[] (sku, name, description, category, price, currency, price_text,
           url, image_url; name and description in the customer's language when the
           catalog has them), currency, points, new_categories, discount_percent,
           discount_text ("15%", "15 %": the locale's percent format), regular_price_text,
           bundle_price_text
coupon     None, or code, discount_percent, discount_text ("15%", "15 %"), expires_at
           (ISO 8601), expires_text (date and time in the customer's locale and zone)
cta_url    the call to action: ``CROSSSELL_CART_LINK_TEMPLATE`` with the offer's SKUs, the
           coupon code and UTM parameters
campaign   id, name, kind        variant   the variant id
shop       name, url, organization, postal_address
unsubscribe_url, preferences_url
money(amount, currency), number(value), long_date(value), locale, lang
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.dates import format_date, format_time, get_datetime_format
from babel.numbers import format_percent

from triggers.campaigns import Campaign
from triggers.money import round_money
from triggers.offers import Product, ResolvedOffer, bundle_offer
from worker.core.settings import Settings
from worker.email.rendering import babel_locale, format_money
from worker.email.tokens import sign


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
    return links_with(settings, unsubscribe_token(keys, customer_id))


def unsubscribe_token(keys: dict[str, bytes], customer_id: str) -> str:
    """The signed token of a customer's unsubscribe and preferences links and of the
    List-Unsubscribe mailto: one HMAC for all three (:func:`links_with`,
    :func:`mailto_uri_body`)."""
    return sign(keys, customer_id, "all")


def links_with(settings: Settings, token: str) -> Links:
    """The unsubscribe and preferences links carrying ``token`` (:func:`unsubscribe_token`)."""
    base = settings.public_url.rstrip("/")
    return Links(f"{base}/u/{token}", f"{base}/preferences/{token}")


# The word before the token in a mailto unsubscribe's subject; worker/web/unsubscribe_mail.py
# takes the first genuine token wherever it stands in the subject.
SUBJECT_WORD = "unsubscribe"


def mailto_uri_body(address: str, token: str) -> str:
    """The part after ``mailto:`` for one customer: ``address?subject=unsubscribe%20TOKEN``.

    The subject is percent-encoded as RFC 6068 §2 requires (the token's own characters
    are all unreserved, so it travels unchanged).
    """
    separator = "&" if "?" in address else "?"
    return f"{address}{separator}subject={quote(f'{SUBJECT_WORD} {token}', safe='')}"


def mailto_for(settings: Settings, keys: dict[str, bytes], customer_id: str) -> str:
    """The List-Unsubscribe mailto value (without ``mailto:``) for a customer's email,
    answered by ``crosssell unsubscribe-mail`` (worker/web/unsubscribe_mail.py)."""
    return mailto_uri_body(settings.unsubscribe_mailto, unsubscribe_token(keys, customer_id))


UTM_SOURCE = "crosssell"
UTM_MEDIUM = "email"


def cart_link(
    settings: Settings, skus: Sequence[str], coupon_code: str | None, campaign_id: str, variant: str
) -> str:
    """The call to action's URL: ``settings.cart_link_template`` filled in, plus UTM tags.

    ``{skus}`` becomes the SKUs joined with commas and ``{coupon}`` the code, each
    percent-encoded (RFC 3986 section 2.1) so a SKU can never add a parameter; a query
    parameter left empty (no coupon) is dropped; an offer without items (a loyalty bonus
    with nothing new to show) links to the shop's home page instead. The UTM parameters follow
    Google Analytics' campaign URL convention (source, medium, campaign, content) and
    replace any of the same name the template carries.
    """
    template = settings.cart_link_template if skus else "{public_url}/"
    filled = template.format(
        public_url=settings.public_url.rstrip("/"),
        skus=quote(",".join(skus), safe=","),
        coupon=quote(coupon_code or "", safe=""),
    )
    parts = urlsplit(filled)
    query = [
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if value and not key.startswith("utm_")
    ]
    query += [
        ("utm_source", UTM_SOURCE),
        ("utm_medium", UTM_MEDIUM),
        ("utm_campaign", campaign_id),
        ("utm_content", variant),
    ]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote, safe=",")))


def _zone(name: str | None, default: str) -> ZoneInfo:
    for candidate in (name, default):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def local_date_time(moment: datetime, zone: ZoneInfo, locale: Locale) -> str:
    """``moment`` as a long date and a short time in ``zone``, joined the locale's way
    (CLDR's dateTimeFormat): "January 15, 2026 at 11:59 PM", "15 ianuarie 2026, 23:59"."""
    local = moment.astimezone(zone)
    pattern = str(get_datetime_format("long", locale=locale)).replace("'", "")
    return pattern.replace("{0}", format_time(local, "short", locale=locale)).replace(
        "{1}", format_date(local, "long", locale=locale)
    )


def coupon_context(coupon: Coupon, zone: ZoneInfo, locale: Locale) -> dict[str, Any]:
    """``coupon`` for templates: the code, the discount and the expiry as the customer reads
    them (their locale, their time zone)."""
    percent = coupon.discount_percent
    return {
        "code": coupon.code,
        "discount_percent": str(percent) if percent else None,
        "discount_text": format_percent(percent / 100, locale=locale, decimal_quantization=False)
        if percent
        else None,
        "expires_at": coupon.expires_at.isoformat(),
        "expires_text": local_date_time(coupon.expires_at, zone, locale),
    }


def offer_context(
    offer: ResolvedOffer, locale_tag: str | None, default_locale: str
) -> dict[str, Any]:
    """``offer`` for templates. Every amount is rounded once to the currency's minor unit
    (``price`` and ``price_text`` show the same amount; see :mod:`triggers.money`)."""
    locale = babel_locale(locale_tag, default_locale)

    def money(amount: Decimal | None, currency: str) -> str:
        return format_money(amount or Decimal(0), currency, locale)

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
        "discount_text": format_percent(
            offer.discount_percent / 100, locale=locale, decimal_quantization=False
        )
        if offer.discount_percent
        else None,
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
    """The template context of one email. ``customer`` is the profile (``id``, optional
    ``first_name``, ``last_name``, ``email``, ``locale``, ``timezone``)."""
    locale = babel_locale(customer.get("locale"), settings.default_locale)
    zone = _zone(customer.get("timezone"), settings.default_timezone)
    skus = [product.sku for product in offer.items]
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
        "shop": {
            "name": settings.shop_name,
            "url": settings.public_url,
            "organization": settings.sender_organization,
            "postal_address": settings.footer_postal_address,
        },
        "cta_url": cart_link(settings, skus, coupon.code if coupon else None, campaign.id, variant),
        "unsubscribe_url": links.unsubscribe_url,
        "preferences_url": links.preferences_url,
        "coupon": None if coupon is None else coupon_context(coupon, zone, locale),
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
            image_url=f"https://shop.example/img/sample-{n}.jpg",
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


def sample_event(campaign: Campaign, customer_id: str) -> dict[str, Any]:
    """An event of the campaign's trigger type for ``customer_id``, as the CRM sends it."""
    return {
        "id": "evt-sample",
        "type": campaign.trigger.event,
        "occurred_at": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        "customer": {"id": customer_id},
        "data": _SAMPLE_DATA[campaign.trigger.event],
    }


def sample_context(campaign: Campaign, settings: Settings, locale: str | None) -> dict[str, Any]:
    """A realistic context for the campaign's trigger and offer types."""
    customer = {
        "id": "C-SAMPLE",
        "first_name": "Ana",
        "last_name": "Pop",
        "email": "ana.pop@example.com",
        "locale": locale,
        "timezone": "Europe/Bucharest",
    }
    event = sample_event(campaign, "C-SAMPLE")
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
