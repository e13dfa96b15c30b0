"""Offer resolution: which products an email offers, given the campaign's offer and a catalog.

The worker fetches candidate products; this module only chooses among them, so the rules
(never what the customer owns, stock policy, bundle pricing) are testable without a DB.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from triggers.campaigns import (
    BundleOffer,
    ComplementaryOffer,
    LoyaltyBonusOffer,
    RecommendedOffer,
    UpgradeOffer,
)
from triggers.money import discounted, round_money

AnyOffer = ComplementaryOffer | BundleOffer | UpgradeOffer | LoyaltyBonusOffer | RecommendedOffer


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    name: str
    category: str
    price: Decimal
    currency: str
    in_stock: bool = True
    url: str | None = None
    image_url: str | None = None
    line: str | None = None
    tier: int | None = None


@dataclass(frozen=True, slots=True)
class ResolvedOffer:
    type: str
    items: tuple[Product, ...]
    currency: str | None = None
    discount_percent: Decimal | None = None
    regular_price: Decimal | None = None
    bundle_price: Decimal | None = None
    points: int | None = None
    new_categories: tuple[str, ...] = field(default_factory=tuple)
    strategy: str = "complementary"


def bundle_offer(
    items: tuple[Product, ...], discount_percent: Decimal, strategy: str = "complementary"
) -> ResolvedOffer:
    """A bundle of ``items`` (at least one, all in one currency) at ``discount_percent`` off.

    The one place a bundle is priced, for sends and previews alike: the regular price is
    the exact sum of the catalog prices and the bundle price the exact discounted sum, each
    rounded once, half-up, to the currency's minor unit (:mod:`triggers.money`).
    """
    currency = items[0].currency
    exact = sum((p.price for p in items), Decimal(0))
    return ResolvedOffer(
        "bundle",
        items,
        currency,
        discount_percent,
        round_money(exact, currency),
        discounted(exact, discount_percent, currency),
        strategy=strategy,
    )


class OfferUnavailable(Exception):
    """Nothing can be offered; ``reason`` becomes the send's skip reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def target_categories(
    offer: AnyOffer,
    trigger_categories: Sequence[str],
    categories_bought: frozenset[str],
    complements: Mapping[str, Sequence[str]],
) -> list[str]:
    """Categories to draw products from, most relevant first, without repeats."""
    if isinstance(offer, ComplementaryOffer | BundleOffer) and offer.categories:
        wanted = list(offer.categories)
    else:
        sources = list(trigger_categories) or sorted(categories_bought)
        wanted = [c for source in sources for c in complements.get(source, ())]
    if isinstance(offer, LoyaltyBonusOffer) and offer.new_categories_only:
        wanted = [c for c in wanted if c not in categories_bought]
    return list(dict.fromkeys(wanted))


def _round_robin(
    categories: Sequence[str], products: Sequence[Product], limit: int
) -> list[Product]:
    """One product per category in turn, cheapest first, so an email offers variety."""
    queues = {
        category: sorted(
            (p for p in products if p.category == category), key=lambda p: (p.price, p.sku)
        )
        for category in categories
    }
    chosen: list[Product] = []
    while len(chosen) < limit and any(queues.values()):
        for category in categories:
            if queues[category] and len(chosen) < limit:
                chosen.append(queues[category].pop(0))
    return chosen


def primary_strategy(offer: AnyOffer) -> str:
    if isinstance(offer, RecommendedOffer):
        return "recommended"
    if isinstance(offer, UpgradeOffer):
        return "upgrade"
    if isinstance(offer, ComplementaryOffer) and offer.skus:
        return "skus"
    return "complementary"


def _pick_with_policy(
    offer: AnyOffer, pool: list[Product], pick: Callable[[list[Product]], list[Product]]
) -> list[Product]:
    """Apply the out-of-stock policy: leave such items out, or cancel the whole email."""
    if offer.unavailable == "skip_item":
        return pick([p for p in pool if p.in_stock])
    chosen = pick(pool)
    if any(not p.in_stock for p in chosen):
        raise OfferUnavailable("out_of_stock")
    return chosen


def resolve_offer(
    offer: AnyOffer,
    *,
    candidates: Sequence[Product],
    categories: Sequence[str],
    owned_skus: frozenset[str],
    trigger_products: Sequence[Product] = (),
    recommended: Sequence[Product] = (),
    bestsellers: Sequence[Product] = (),
    line_products: Sequence[Product] | None = None,
) -> ResolvedOffer:
    """Choose the offered items; raise :class:`OfferUnavailable` when nothing fits.

    ``candidates`` are the products of the target ``categories``; ``recommended`` the
    trigger products' partners, best first; ``bestsellers`` the most bought products of the
    target categories, most bought first; ``line_products`` the products of the bought
    products' lines (for upgrades; ``candidates`` when not given). The offer's own strategy
    is tried first, then each of its ``fallback`` strategies, until one yields an item.
    """
    lines = candidates if line_products is None else line_products
    seen_any = False
    chosen: list[Product] = []
    strategy = primary_strategy(offer)
    for strategy in (primary_strategy(offer), *offer.fallback):
        pool = _pool(offer, strategy, candidates, recommended, bestsellers, trigger_products, lines)
        pool = [p for p in pool if not (offer.exclude_owned and p.sku in owned_skus)]
        seen_any = seen_any or bool(pool)
        in_order = strategy in ("recommended", "upgrade", "skus")

        def pick(products: list[Product], in_order: bool = in_order) -> list[Product]:
            if in_order:
                return list(dict.fromkeys(products))[: offer.max_items]
            return _round_robin(categories, products, offer.max_items)

        chosen = _pick_with_policy(offer, pool, pick)
        if chosen:
            break
    if not chosen and not isinstance(offer, LoyaltyBonusOffer):
        raise OfferUnavailable("out_of_stock" if seen_any else "no_offer")
    currency = chosen[0].currency if chosen else None
    if isinstance(offer, BundleOffer):
        chosen = [p for p in chosen if p.currency == currency]
        return bundle_offer(tuple(chosen), offer.discount_percent, strategy)
    if isinstance(offer, LoyaltyBonusOffer):
        return ResolvedOffer(
            "loyalty_bonus",
            tuple(chosen),
            currency,
            points=offer.points,
            new_categories=tuple(categories),
            strategy=strategy,
        )
    return ResolvedOffer(offer.type, tuple(chosen), currency, strategy=strategy)


def _pool(
    offer: AnyOffer,
    strategy: str,
    candidates: Sequence[Product],
    recommended: Sequence[Product],
    bestsellers: Sequence[Product],
    trigger_products: Sequence[Product],
    lines: Sequence[Product],
) -> list[Product]:
    if strategy == "recommended":
        return list(recommended)
    if strategy == "bestsellers":
        return list(bestsellers)
    if strategy == "upgrade":
        assert isinstance(offer, UpgradeOffer)
        return _upgrades(offer, list(lines), trigger_products)
    if strategy == "skus":
        assert isinstance(offer, ComplementaryOffer) and offer.skus
        order = {sku: index for index, sku in enumerate(offer.skus)}
        return sorted((p for p in candidates if p.sku in order), key=lambda p: order[p.sku])
    return list(candidates)


def _upgrades(offer: UpgradeOffer, pool: list[Product], bought: Sequence[Product]) -> list[Product]:
    """Same line, higher tier, dearer but within the configured price ratio; closest first."""
    found: list[Product] = []
    for base in bought:
        if base.line is None or base.tier is None:
            continue
        ceiling = base.price * offer.max_price_ratio
        found += [
            p
            for p in pool
            if p.line == base.line
            and p.tier is not None
            and p.tier > base.tier
            and base.price < p.price <= ceiling
            and p.currency == base.currency
        ]
    return sorted(dict.fromkeys(found), key=lambda p: (p.tier or 0, p.price, p.sku))
