"""Resolve a campaign's offer against the live catalog, just before rendering.

Stock and prices are read now, not at planning time, so an email never offers what sold
out or shows yesterday's price. Only the sources the offer's strategy chain needs are
queried. The chosen items then get their name and description in the customer's
language (:func:`localize_offer`), falling back to the catalog's default texts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy.orm import Session

from triggers.events import AnyEvent, PurchaseEvent
from triggers.facts import CustomerProfile
from triggers.offers import (
    AnyOffer,
    OfferUnavailable,
    Product,
    ResolvedOffer,
    primary_strategy,
    resolve_offer,
    target_categories,
)
from worker.catalog import (
    LocalizedProduct,
    bestsellers_in,
    localized,
    product_texts,
    products_by_sku,
    products_in_categories,
    products_in_lines,
    recommended_for,
)
from worker.metrics import OFFERS_UNAVAILABLE

log = logging.getLogger(__name__)


class CatalogReads:
    """The catalog queries of one unit of work, each asked once: a delivery batch reads
    stock and prices as of its start, and sends offering the same categories share the
    answer instead of one query each. The results are shared, never modified."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._seen: dict[tuple[object, ...], Any] = {}

    def _read(self, query: Any, *arguments: Any) -> Any:
        key = (query.__name__, *(tuple(a) if isinstance(a, list) else a for a in arguments))
        if key not in self._seen:
            self._seen[key] = query(self.session, *arguments)
        return self._seen[key]

    def products_in_categories(self, categories: Sequence[str]) -> list[Product]:
        return list(self._read(products_in_categories, list(categories)))

    def products_by_sku(self, skus: Sequence[str]) -> list[Product]:
        return list(self._read(products_by_sku, list(skus)))

    def products_in_lines(self, lines: Sequence[str]) -> list[Product]:
        return list(self._read(products_in_lines, list(lines)))

    def recommended_for(self, skus: Sequence[str]) -> list[Product]:
        return list(self._read(recommended_for, list(skus)))

    def bestsellers_in(self, categories: Sequence[str]) -> list[Product]:
        return list(self._read(bestsellers_in, list(categories)))

    def product_texts(
        self, skus: Sequence[str]
    ) -> dict[str, tuple[dict[str, str], str | None, dict[str, str]]]:
        found: dict[str, tuple[dict[str, str], str | None, dict[str, str]]]
        found = self._read(product_texts, list(skus))
        return found


def localize_offer(
    session: Session,
    offer: ResolvedOffer,
    locale_tag: str | None,
    reads: CatalogReads | None = None,
) -> ResolvedOffer:
    """``offer`` with each item's name and description in the language of
    ``locale_tag`` (``ro-RO`` uses the ``ro`` texts), or the default ones."""
    if not offer.items:
        return offer
    reads = reads or CatalogReads(session)
    texts = reads.product_texts([item.sku for item in offer.items])
    items = []
    for item in offer.items:
        names, description, descriptions = texts.get(item.sku, ({}, None, {}))
        items.append(
            LocalizedProduct(
                sku=item.sku,
                name=localized(names, item.name, locale_tag) or item.name,
                category=item.category,
                price=item.price,
                currency=item.currency,
                in_stock=item.in_stock,
                url=item.url,
                image_url=item.image_url,
                line=item.line,
                tier=item.tier,
                description=localized(descriptions, description, locale_tag),
            )
        )
    return replace(offer, items=tuple(items))


def resolve_for_send(
    session: Session,
    offer: AnyOffer,
    event: AnyEvent,
    profile: CustomerProfile,
    complements: Mapping[str, Sequence[str]],
    locale: str | None = None,
    reads: CatalogReads | None = None,
) -> ResolvedOffer:
    """The offer's items for this customer now, named in ``locale`` (default: the
    customer's own); raises OfferUnavailable.

    An unavailable offer is logged at WARNING (customer id only, no personal data) and
    counted in ``crosssell_offers_unavailable_total``: an empty or unimported catalog
    otherwise shows only as skipped sends.
    """
    reads = reads or CatalogReads(session)
    try:
        chosen = _resolve(reads, offer, event, profile, complements)
    except OfferUnavailable as unavailable:
        OFFERS_UNAVAILABLE.labels(unavailable.reason).inc()
        log.warning(
            "no offer for customer %s (%s offer, %s): is the catalog imported? "
            "(crosssell catalog import FILE)",
            profile.id,
            offer.type,
            unavailable.reason,
        )
        raise
    return localize_offer(session, chosen, locale or profile.locale, reads)


def _resolve(
    reads: CatalogReads,
    offer: AnyOffer,
    event: AnyEvent,
    profile: CustomerProfile,
    complements: Mapping[str, Sequence[str]],
) -> ResolvedOffer:
    bought = list(event.data.items) if isinstance(event, PurchaseEvent) else []
    categories = target_categories(
        offer, [item.category for item in bought], profile.categories_bought, complements
    )
    primary = primary_strategy(offer)
    # Only an upsell needs the bought products' catalog rows (their line and tier).
    needs_trigger = "upgrade" in {primary, *offer.fallback}
    trigger_products = reads.products_by_sku([i.sku for i in bought]) if needs_trigger else []

    fetched: dict[str, list[Product]] = {}

    def source(strategy: str) -> list[Product]:
        """Each source is queried at most once, however many attempts need it."""
        if strategy not in fetched:
            if strategy == "upgrade":
                lines = [p.line for p in trigger_products if p.line]
                fetched[strategy] = reads.products_in_lines(lines)
            elif strategy == "skus":
                fetched[strategy] = reads.products_by_sku(getattr(offer, "skus", None) or [])
            elif strategy == "complementary":
                fetched[strategy] = reads.products_in_categories(categories)
            elif strategy == "recommended":
                # After a purchase: what goes with it; otherwise: with what the customer owns.
                seeds = [item.sku for item in bought] or sorted(profile.skus_owned)
                fetched[strategy] = reads.recommended_for(seeds)
            else:
                fetched[strategy] = reads.bestsellers_in(categories)
        return fetched[strategy]

    def sources(chain: set[str]) -> dict[str, Any]:
        def wanted(strategy: str) -> list[Product]:
            return source(strategy) if strategy in chain else []

        return {
            "candidates": wanted("skus") or wanted("complementary"),
            "line_products": wanted("upgrade"),
            "recommended": wanted("recommended"),
            "bestsellers": wanted("bestsellers"),
        }

    def attempt(chain: set[str]) -> ResolvedOffer:
        return resolve_offer(
            offer,
            categories=categories,
            owned_skus=profile.skus_owned,
            trigger_products=trigger_products,
            **sources(chain),
        )

    if not offer.fallback:
        return attempt({primary})
    try:  # the common case needs one source only; fetch the fallbacks' when it is empty
        return attempt({primary})
    except OfferUnavailable:
        return attempt({primary, *offer.fallback})
