"""Offer resolution: owned items, stock policy, bundle pricing, upgrades and loyalty bonuses."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triggers.campaigns import BundleOffer, ComplementaryOffer, LoyaltyBonusOffer, UpgradeOffer
from triggers.offers import OfferUnavailable, Product, resolve_offer, target_categories

CENT = Decimal("0.01")
NOTHING_OWNED: frozenset[str] = frozenset()
COMPLEMENTS = {
    "laptops": ["laptop-bags", "mice", "docking-stations"],
    "phones": ["phone-cases", "chargers", "mice"],
    "mice": ["mouse-pads"],
}


def product(sku: str, category: str, price: str, **extra: Any) -> Product:
    extra.setdefault("currency", "RON")
    return Product(sku=sku, name=f"Product {sku}", category=category, price=Decimal(price), **extra)


def complementary(**fields: Any) -> ComplementaryOffer:
    return ComplementaryOffer.model_validate({"type": "complementary", **fields})


def bundle(**fields: Any) -> BundleOffer:
    return BundleOffer.model_validate({"type": "bundle", **fields})


def upgrade(**fields: Any) -> UpgradeOffer:
    return UpgradeOffer.model_validate({"type": "upgrade", **fields})


def loyalty(**fields: Any) -> LoyaltyBonusOffer:
    return LoyaltyBonusOffer.model_validate({"type": "loyalty_bonus", "points": 500, **fields})


def skus(products: tuple[Product, ...] | list[Product]) -> list[str]:
    return [p.sku for p in products]


def unavailable(offer: Any, **kwargs: Any) -> str:
    with pytest.raises(OfferUnavailable) as caught:
        resolve_offer(offer, **kwargs)
    return caught.value.reason


BAGS_AND_MICE = [
    product("BAG-2", "laptop-bags", "180.00"),
    product("BAG-1", "laptop-bags", "120.00"),
    product("MOUSE-2", "mice", "90.00"),
    product("MOUSE-1", "mice", "45.00"),
    product("DOCK-1", "docking-stations", "600.00"),
]
CATEGORIES = ["laptop-bags", "mice", "docking-stations"]


# --- choosing items -------------------------------------------------------------------------


def test_one_item_per_category_in_turn_cheapest_first() -> None:
    offer = complementary(max_items=4)
    resolved = resolve_offer(
        offer, candidates=BAGS_AND_MICE, categories=CATEGORIES, owned_skus=NOTHING_OWNED
    )
    assert resolved.type == "complementary"
    assert skus(resolved.items) == ["BAG-1", "MOUSE-1", "DOCK-1", "BAG-2"]
    assert resolved.currency == "RON"


def test_max_items_is_respected() -> None:
    for limit in (1, 2, 3):
        resolved = resolve_offer(
            complementary(max_items=limit),
            candidates=BAGS_AND_MICE,
            categories=CATEGORIES,
            owned_skus=NOTHING_OWNED,
        )
        assert len(resolved.items) == limit


def test_owned_products_are_excluded() -> None:
    owned = frozenset({"BAG-1", "MOUSE-1"})
    resolved = resolve_offer(
        complementary(max_items=5),
        candidates=BAGS_AND_MICE,
        categories=CATEGORIES,
        owned_skus=owned,
    )
    assert not owned & set(skus(resolved.items))
    assert skus(resolved.items) == ["BAG-2", "MOUSE-2", "DOCK-1"]


def test_owned_products_may_be_offered_when_exclude_owned_is_off() -> None:
    owned = frozenset({"BAG-1"})
    resolved = resolve_offer(
        complementary(exclude_owned=False, max_items=1),
        candidates=BAGS_AND_MICE,
        categories=CATEGORIES,
        owned_skus=owned,
    )
    assert skus(resolved.items) == ["BAG-1"]


def test_explicit_skus_keep_the_marketers_order() -> None:
    offer = complementary(skus=["DOCK-1", "MOUSE-2", "NOT-IN-CATALOG", "BAG-1"], max_items=3)
    resolved = resolve_offer(
        offer, candidates=BAGS_AND_MICE, categories=CATEGORIES, owned_skus=frozenset({"MOUSE-2"})
    )
    assert skus(resolved.items) == ["DOCK-1", "BAG-1"]


def test_everything_owned_is_no_offer() -> None:
    owned = frozenset(p.sku for p in BAGS_AND_MICE)
    reason = unavailable(
        complementary(), candidates=BAGS_AND_MICE, categories=CATEGORIES, owned_skus=owned
    )
    assert reason == "no_offer"


def test_no_candidates_is_no_offer() -> None:
    reason = unavailable(
        complementary(), candidates=[], categories=CATEGORIES, owned_skus=NOTHING_OWNED
    )
    assert reason == "no_offer"


# --- stock ------------------------------------------------------------------------------------


def test_skip_item_leaves_out_what_is_out_of_stock() -> None:
    candidates = [*BAGS_AND_MICE[:3], product("MOUSE-1", "mice", "45.00", in_stock=False)]
    resolved = resolve_offer(
        complementary(unavailable="skip_item", max_items=2),
        candidates=candidates,
        categories=CATEGORIES,
        owned_skus=NOTHING_OWNED,
    )
    assert skus(resolved.items) == ["BAG-1", "MOUSE-2"]
    assert all(p.in_stock for p in resolved.items)


def test_skip_item_with_nothing_in_stock_is_out_of_stock() -> None:
    candidates = [product("BAG-1", "laptop-bags", "120.00", in_stock=False)]
    reason = unavailable(
        complementary(unavailable="skip_item"),
        candidates=candidates,
        categories=CATEGORIES,
        owned_skus=NOTHING_OWNED,
    )
    assert reason == "out_of_stock"


def test_cancel_send_cancels_when_a_chosen_item_is_out_of_stock() -> None:
    candidates = [*BAGS_AND_MICE[:3], product("MOUSE-1", "mice", "45.00", in_stock=False)]
    reason = unavailable(
        complementary(unavailable="cancel_send", max_items=2),
        candidates=candidates,
        categories=CATEGORIES,
        owned_skus=NOTHING_OWNED,
    )
    assert reason == "out_of_stock"


def test_cancel_send_goes_ahead_when_everything_chosen_is_in_stock() -> None:
    resolved = resolve_offer(
        complementary(unavailable="cancel_send", max_items=2),
        candidates=BAGS_AND_MICE,
        categories=CATEGORIES,
        owned_skus=NOTHING_OWNED,
    )
    assert skus(resolved.items) == ["BAG-1", "MOUSE-1"]


# --- bundles --------------------------------------------------------------------------------


def test_bundle_price_is_exact_and_rounds_half_up() -> None:
    # 12.45 at 10% off is 11.205: half-up gives 11.21 (banker's rounding would give 11.20).
    items = [product("A", "x", "10.00"), product("B", "y", "2.45")]
    discount = Decimal(10)
    resolved = resolve_offer(
        bundle(discount_percent=discount, max_items=2),
        candidates=items,
        categories=["x", "y"],
        owned_skus=NOTHING_OWNED,
    )

    regular = sum((p.price for p in items), Decimal(0))
    exact = regular * (100 - discount) / 100
    assert exact.quantize(CENT, ROUND_HALF_UP) != exact.quantize(CENT, ROUND_HALF_EVEN)
    assert resolved.type == "bundle"
    assert resolved.regular_price == regular
    assert resolved.bundle_price == exact.quantize(CENT, ROUND_HALF_UP)
    assert resolved.bundle_price == Decimal("11.21")
    assert resolved.discount_percent == discount
    assert resolved.currency == "RON"
    assert type(resolved.bundle_price) is Decimal


def test_bundle_without_discount_costs_the_regular_price() -> None:
    items = [product("A", "x", "19.99"), product("B", "y", "0.01")]
    resolved = resolve_offer(
        bundle(discount_percent=0),
        candidates=items,
        categories=["x", "y"],
        owned_skus=NOTHING_OWNED,
    )
    assert resolved.bundle_price == resolved.regular_price == Decimal("20.00")


def test_bundle_holds_a_single_currency() -> None:
    items = [
        product("A", "x", "10.00"),
        product("B", "y", "5.00", currency="EUR"),
        product("C", "z", "7.00"),
    ]
    resolved = resolve_offer(
        bundle(max_items=3), candidates=items, categories=["x", "y", "z"], owned_skus=NOTHING_OWNED
    )
    assert {p.currency for p in resolved.items} == {resolved.currency}
    assert resolved.regular_price == sum((p.price for p in resolved.items), Decimal(0))


@settings(max_examples=80, deadline=None, database=None)
@given(
    prices=st.lists(
        st.decimals(min_value=Decimal("0.01"), max_value=Decimal(100_000), places=2),
        min_size=1,
        max_size=4,
    ),
    discount=st.decimals(min_value=Decimal(0), max_value=Decimal(100), places=1),
)
def test_bundle_price_property(prices: list[Decimal], discount: Decimal) -> None:
    items = [product(f"S{n}", f"c{n}", str(price)) for n, price in enumerate(prices)]
    resolved = resolve_offer(
        bundle(discount_percent=discount, max_items=len(items)),
        candidates=items,
        categories=[p.category for p in items],
        owned_skus=NOTHING_OWNED,
    )
    regular = sum(prices, Decimal(0))
    assert resolved.regular_price == regular
    assert resolved.bundle_price is not None
    assert resolved.bundle_price == resolved.bundle_price.quantize(CENT)
    assert abs(resolved.bundle_price - regular * (100 - discount) / 100) <= CENT / 2
    assert Decimal(0) <= resolved.bundle_price <= regular


# --- upgrades -------------------------------------------------------------------------------

BOUGHT = product("LAP-14", "laptops", "4000.00", line="lap-14", tier=1)


def test_upgrade_offers_only_dearer_higher_tiers_of_the_same_line_within_the_ratio() -> None:
    offer = upgrade(max_price_ratio=Decimal("1.5"))
    ceiling = BOUGHT.price * offer.max_price_ratio
    good = [
        product("PRO", "laptops", "5000.00", line="lap-14", tier=2),
        product("MAX", "laptops", str(ceiling), line="lap-14", tier=3),  # exactly at the ratio
        product("PRO-CHEAP", "laptops", "4000.01", line="lap-14", tier=2),
    ]
    bad = [
        product("CHEAPER", "laptops", "3999.99", line="lap-14", tier=2),
        product("SAME-PRICE", "laptops", "4000.00", line="lap-14", tier=2),
        product("SAME-TIER", "laptops", "4500.00", line="lap-14", tier=1),
        product("LOWER-TIER", "laptops", "4500.00", line="lap-14", tier=0),
        product("NO-TIER", "laptops", "4500.00", line="lap-14"),
        product("OTHER-LINE", "laptops", "4500.00", line="lap-16", tier=2),
        product("NO-LINE", "laptops", "4500.00", tier=2),
        product("TOO-DEAR", "laptops", str(ceiling + CENT), line="lap-14", tier=3),
        product("EURO", "laptops", "4500.00", line="lap-14", tier=2, currency="EUR"),
    ]
    resolved = resolve_offer(
        offer.model_copy(update={"max_items": 12}),
        candidates=[*bad, *good],
        categories=[],
        owned_skus=NOTHING_OWNED,
        trigger_products=[BOUGHT],
    )

    assert resolved.type == "upgrade"
    # Closest first: lower tier before higher, then cheaper.
    assert skus(resolved.items) == ["PRO-CHEAP", "PRO", "MAX"]


def test_upgrade_excludes_owned_products_and_respects_max_items() -> None:
    candidates = [
        product("PRO", "laptops", "5000.00", line="lap-14", tier=2),
        product("MAX", "laptops", "6000.00", line="lap-14", tier=3),
    ]
    resolved = resolve_offer(
        upgrade(max_items=1),
        candidates=candidates,
        categories=[],
        owned_skus=frozenset({"PRO"}),
        trigger_products=[BOUGHT],
    )
    assert skus(resolved.items) == ["MAX"]


def test_upgrade_of_a_product_without_line_or_tier_is_no_offer() -> None:
    plain = product("LAP", "laptops", "4000.00")
    candidates = [product("PRO", "laptops", "5000.00", line="lap-14", tier=2)]
    reason = unavailable(
        upgrade(),
        candidates=candidates,
        categories=[],
        owned_skus=NOTHING_OWNED,
        trigger_products=[plain],
    )
    assert reason == "no_offer"


prices = st.integers(min_value=1, max_value=100_000).map(lambda cents: Decimal(cents) / 100)


@settings(max_examples=80, deadline=None, database=None)
@given(
    base_price=prices,
    base_tier=st.integers(0, 3),
    ratio=st.sampled_from(["1.1", "1.5", "2", "3"]),
    others=st.lists(
        st.tuples(
            prices,
            st.integers(0, 5),
            st.sampled_from(["lap-14", "lap-16", None]),
            st.sampled_from(["RON", "EUR"]),
            st.booleans(),
        ),
        max_size=12,
    ),
)
def test_an_upgrade_is_never_cheaper_lower_other_line_or_above_the_ratio(
    base_price: Decimal,
    base_tier: int,
    ratio: str,
    others: list[tuple[Decimal, int, str | None, str, bool]],
) -> None:
    base = product("BASE", "laptops", str(base_price), line="lap-14", tier=base_tier)
    candidates = [
        product(f"P{n}", "laptops", str(price), line=line, tier=tier, currency=cur, in_stock=stock)
        for n, (price, tier, line, cur, stock) in enumerate(others)
    ]
    offer = upgrade(max_price_ratio=Decimal(ratio), max_items=12)
    try:
        resolved = resolve_offer(
            offer,
            candidates=candidates,
            categories=[],
            owned_skus=NOTHING_OWNED,
            trigger_products=[base],
        )
    except OfferUnavailable:
        fits = [
            p
            for p in candidates
            if p.line == base.line
            and p.tier is not None
            and p.tier > base_tier
            and base.price < p.price <= base.price * Decimal(ratio)
            and p.currency == "RON"
            and p.in_stock
        ]
        assert fits == []
        return
    for item in resolved.items:
        assert item.line == base.line
        assert item.tier is not None and item.tier > base_tier
        assert base.price < item.price <= base.price * Decimal(ratio)
        assert item.currency == base.currency
        assert item.in_stock
    order = [(p.tier, p.price, p.sku) for p in resolved.items]
    assert order == sorted(order)


# --- loyalty and categories -----------------------------------------------------------------


def test_loyalty_bonus_points_toward_new_categories_only() -> None:
    bought = frozenset({"laptops", "mice"})
    categories = target_categories(loyalty(), [], bought, COMPLEMENTS)
    # Complements of what was bought, minus what was bought already.
    expected = [c for source in sorted(bought) for c in COMPLEMENTS[source] if c not in bought]
    assert categories == list(dict.fromkeys(expected))
    assert not set(categories) & bought

    everything = target_categories(loyalty(new_categories_only=False), [], bought, COMPLEMENTS)
    assert "mice" in everything


def test_loyalty_bonus_is_offered_even_without_products() -> None:
    resolved = resolve_offer(
        loyalty(points=750), candidates=[], categories=["mouse-pads"], owned_skus=NOTHING_OWNED
    )
    assert resolved.type == "loyalty_bonus"
    assert resolved.points == 750
    assert resolved.items == ()
    assert resolved.new_categories == ("mouse-pads",)


def test_loyalty_bonus_suggests_products_from_the_new_categories() -> None:
    pads = [product("PAD-2", "mouse-pads", "30.00"), product("PAD-1", "mouse-pads", "15.00")]
    resolved = resolve_offer(
        loyalty(max_items=1), candidates=pads, categories=["mouse-pads"], owned_skus=NOTHING_OWNED
    )
    assert skus(resolved.items) == ["PAD-1"]


def test_target_categories_from_the_purchase_follow_the_complement_map() -> None:
    categories = target_categories(complementary(), ["laptops", "phones"], frozenset(), COMPLEMENTS)
    assert categories == ["laptop-bags", "mice", "docking-stations", "phone-cases", "chargers"]


def test_target_categories_named_by_the_campaign_win() -> None:
    offer = complementary(categories=["docking-stations", "mice"])
    assert target_categories(offer, ["phones"], frozenset(), COMPLEMENTS) == [
        "docking-stations",
        "mice",
    ]


def test_target_categories_fall_back_to_purchase_history_without_a_purchase() -> None:
    categories = target_categories(complementary(), [], frozenset({"mice"}), COMPLEMENTS)
    assert categories == COMPLEMENTS["mice"]
    assert target_categories(complementary(), [], frozenset(), COMPLEMENTS) == []
