"""Resolve a campaign's offer against the live catalog, just before rendering.

Stock and prices are read now, not at planning time, so an email never offers what sold
out or shows yesterday's price. Only the sources the offer's strategy chain needs are
queried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    bestsellers_in,
    products_by_sku,
    products_in_categories,
    products_in_lines,
    recommended_for,
)


def resolve_for_send(
    session: Session,
    offer: AnyOffer,
    event: AnyEvent,
    profile: CustomerProfile,
    complements: Mapping[str, Sequence[str]],
) -> ResolvedOffer:
    """The offer's items for this customer now; raises OfferUnavailable."""
    bought = list(event.data.items) if isinstance(event, PurchaseEvent) else []
    categories = target_categories(
        offer, [item.category for item in bought], profile.categories_bought, complements
    )
    primary = primary_strategy(offer)
    # Only an upsell needs the bought products' catalog rows (their line and tier).
    needs_trigger = "upgrade" in {primary, *offer.fallback}
    trigger_products = products_by_sku(session, [i.sku for i in bought]) if needs_trigger else []

    def sources(chain: set[str]) -> dict[str, list[Product]]:
        candidates: list[Product] = []
        if "upgrade" in chain:
            candidates = products_in_lines(session, [p.line for p in trigger_products if p.line])
        elif "skus" in chain:
            candidates = products_by_sku(session, getattr(offer, "skus", None) or [])
        elif "complementary" in chain:
            candidates = products_in_categories(session, categories)
        recommended: list[Product] = []
        if "recommended" in chain:
            # After a purchase: what goes with it; otherwise: with what the customer owns.
            seeds = [item.sku for item in bought] or sorted(profile.skus_owned)
            recommended = recommended_for(session, seeds)
        bestsellers = bestsellers_in(session, categories) if "bestsellers" in chain else []
        return {"candidates": candidates, "recommended": recommended, "bestsellers": bestsellers}

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
