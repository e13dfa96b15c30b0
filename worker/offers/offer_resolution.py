"""Resolve a campaign's offer against the live catalog, just before rendering.

Stock and prices are read now, not at planning time, so an email never offers what sold
out or shows yesterday's price: through the process's catalog snapshot, whose version is
checked once per batch (:class:`CatalogMemo`) or once per call without one
(:mod:`worker.offers.catalog_snapshot`). Only the sources the offer's strategy chain
needs are read. The chosen items then get their name and description in the customer's
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
from worker.core.commit_counts import count_on_commit
from worker.core.metrics import OFFERS_UNAVAILABLE
from worker.offers.catalog import LocalizedProduct, localized, product_texts
from worker.offers.catalog_snapshot import CatalogReads, current_snapshot, snapshot_holding

log = logging.getLogger(__name__)


def localize_offer(session: Session, offer: ResolvedOffer, locale_tag: str | None) -> ResolvedOffer:
    """``offer`` with each item's name and description in the language of
    ``locale_tag`` (``ro-RO`` uses the ``ro`` texts), or the default ones."""
    if not offer.items:
        return offer
    skus = [item.sku for item in offer.items]
    # Items chosen through the snapshot take their texts from it (read once per process
    # and version); others (made by hand, or read before a newer version replaced the
    # snapshot) are looked up.
    snapshot = snapshot_holding(session, offer.items)
    if snapshot is not None:
        texts = CatalogReads(snapshot).texts(session, skus)
    else:
        texts = product_texts(session, skus)
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


class CatalogMemo:
    """The catalog reads of one transaction (an ingest batch, a delivery round): the
    catalog version is read once, at the first offer, and every offer of the batch
    reads that version of the process's snapshot; what the batch read once is served
    again from memory. Only for a short unit of work: stock and prices are what they
    were at the first read, as for one transaction's reads."""

    def __init__(self) -> None:
        self._reads: CatalogReads | None = None

    def reads(self, session: Session) -> CatalogReads:
        """The batch's reads; the first call reads the catalog version (one statement)."""
        if self._reads is None:
            self._reads = CatalogReads(current_snapshot(session))
        return self._reads


def resolve_for_send(
    session: Session,
    offer: AnyOffer,
    event: AnyEvent,
    profile: CustomerProfile,
    complements: Mapping[str, Sequence[str]],
    locale: str | None = None,
) -> ResolvedOffer:
    """The offer's items for this customer now, named in ``locale`` (default: the
    customer's own); raises OfferUnavailable (see :func:`choose_offer`)."""
    chosen = choose_offer(session, offer, event, profile, complements)
    return localize_offer(session, chosen, locale or profile.locale)


def choose_offer(
    session: Session,
    offer: AnyOffer,
    event: AnyEvent,
    profile: CustomerProfile,
    complements: Mapping[str, Sequence[str]],
    memo: CatalogMemo | None = None,
) -> ResolvedOffer:
    """The offer's items for this customer now, with the catalog's default texts (what
    attribution records: the products, not their names); raises OfferUnavailable.

    An unavailable offer is logged at WARNING (customer id only, no personal data) and
    counted in ``crosssell_offers_unavailable_total``: an empty or unimported catalog
    otherwise shows only as skipped sends.
    """
    try:
        return _resolve(session, offer, event, profile, complements, memo)
    except OfferUnavailable as unavailable:
        count_on_commit(session, OFFERS_UNAVAILABLE, unavailable.reason)
        log.warning(
            "no offer for customer %s (%s offer, %s): is the catalog imported? "
            "(crosssell catalog import FILE)",
            profile.id,
            offer.type,
            unavailable.reason,
        )
        raise


def _resolve(
    session: Session,
    offer: AnyOffer,
    event: AnyEvent,
    profile: CustomerProfile,
    complements: Mapping[str, Sequence[str]],
    memo: CatalogMemo | None,
) -> ResolvedOffer:
    catalog = CatalogReads(current_snapshot(session)) if memo is None else memo.reads(session)
    bought = list(event.data.items) if isinstance(event, PurchaseEvent) else []
    categories = target_categories(
        offer, [item.category for item in bought], profile.categories_bought, complements
    )
    primary = primary_strategy(offer)
    # Only an upsell needs the bought products' catalog rows (their line and tier).
    needs_trigger = "upgrade" in {primary, *offer.fallback}
    trigger_products = (
        catalog.products_by_sku(session, [i.sku for i in bought]) if needs_trigger else []
    )

    fetched: dict[str, list[Product]] = {}

    def source(strategy: str) -> list[Product]:
        """Each source is read at most once, however many attempts need it."""
        if strategy not in fetched:
            if strategy == "upgrade":
                lines = [p.line for p in trigger_products if p.line]
                fetched[strategy] = catalog.products_in_lines(session, lines)
            elif strategy == "skus":
                skus = getattr(offer, "skus", None) or []
                fetched[strategy] = catalog.products_by_sku(session, skus)
            elif strategy == "complementary":
                fetched[strategy] = catalog.products_in_categories(session, categories)
            elif strategy == "recommended":
                # After a purchase: what goes with it; otherwise: with what the customer owns.
                seeds = [item.sku for item in bought] or sorted(profile.skus_owned)
                fetched[strategy] = catalog.recommended_for(session, seeds)
            else:
                fetched[strategy] = catalog.bestsellers_in(session, categories)
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
