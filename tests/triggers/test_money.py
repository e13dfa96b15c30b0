"""Money is rounded once, half-up, to the currency's ISO 4217 minor unit."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

from babel.numbers import get_currency_precision
from hypothesis import given, settings
from hypothesis import strategies as st

from triggers.campaigns import BundleOffer
from triggers.money import discounted, minor_unit, round_money
from triggers.offers import Product, resolve_offer

# Minor units as published in ISO 4217 table A.1 (written out here, not read from the code
# under test). IQD, HUF, IDR, COP are among the codes where CLDR's digits differ.
ISO_4217_MINOR_UNITS = {
    "JPY": 0,
    "KRW": 0,
    "CLP": 0,
    "ISK": 0,
    "VND": 0,
    "PYG": 0,
    "UGX": 0,
    "EUR": 2,
    "USD": 2,
    "RON": 2,
    "GBP": 2,
    "HUF": 2,
    "IDR": 2,
    "COP": 2,
    "KWD": 3,
    "BHD": 3,
    "OMR": 3,
    "JOD": 3,
    "TND": 3,
    "LYD": 3,
    "IQD": 3,
    "CLF": 4,
    "UYW": 4,
}


def half_up(exact: Fraction, digits: int) -> Decimal:
    """Reference rounding on exact rationals: ties go away from zero."""
    scaled = abs(exact) * 10**digits
    whole = int(scaled)  # floor, as scaled >= 0
    if scaled - whole >= Fraction(1, 2):
        whole += 1
    sign = -1 if exact < 0 else 1
    return Decimal(sign * whole).scaleb(-digits)


def test_minor_units_follow_iso_4217_not_cldr() -> None:
    for currency, digits in ISO_4217_MINOR_UNITS.items():
        assert minor_unit(currency) == digits, currency
    # Where CLDR (Babel) disagrees, ISO 4217 wins: IQD has 3 decimals, not 0.
    assert get_currency_precision("IQD") != ISO_4217_MINOR_UNITS["IQD"]
    assert minor_unit("IQD") == 3


def test_codes_without_an_iso_minor_unit_get_two_decimals() -> None:
    assert minor_unit("XAU") == 2  # gold: "N.A." in ISO 4217
    assert minor_unit("ZZZ") == 2  # not a currency at all


def test_a_quarter_off_three_yen_items_is_4433_yen() -> None:
    """3 x ¥1,970 at 25 % off is exactly ¥4,432.50: half-up to whole yen is ¥4,433."""
    items = [Product(f"JP-{n}", f"Item {n}", f"c{n}", Decimal(1970), "JPY") for n in range(3)]
    offer = BundleOffer.model_validate({"type": "bundle", "discount_percent": 25, "max_items": 3})
    resolved = resolve_offer(
        offer, candidates=items, categories=["c0", "c1", "c2"], owned_skus=frozenset()
    )
    assert resolved.bundle_price == Decimal("4433")
    assert str(resolved.bundle_price) == "4433"  # no fraction digits at all
    assert resolved.regular_price == Decimal("5910")


@settings(max_examples=300, deadline=None, database=None)
@given(
    currency=st.sampled_from(sorted(ISO_4217_MINOR_UNITS)),
    prices=st.lists(
        st.decimals(min_value=Decimal(0), max_value=Decimal(1_000_000), places=4),
        min_size=1,
        max_size=5,
    ),
    discount=st.decimals(min_value=Decimal(0), max_value=Decimal(100), places=2),
)
def test_bundle_prices_have_the_currencys_digits_and_round_half_up(
    currency: str, prices: list[Decimal], discount: Decimal
) -> None:
    digits = ISO_4217_MINOR_UNITS[currency]
    items = [Product(f"S{n}", f"P{n}", f"c{n}", p, currency) for n, p in enumerate(prices)]
    offer: Any = BundleOffer.model_validate(
        {"type": "bundle", "discount_percent": discount, "max_items": len(items)}
    )
    resolved = resolve_offer(
        offer,
        candidates=items,
        categories=[p.category for p in items],
        owned_skus=frozenset(),
    )
    exact_regular = sum((Fraction(p) for p in prices), Fraction(0))
    exact_bundle = exact_regular * (100 - Fraction(discount)) / 100
    for amount, exact in (
        (resolved.regular_price, exact_regular),
        (resolved.bundle_price, exact_bundle),
    ):
        assert amount is not None
        assert amount.as_tuple().exponent == -digits
        assert amount == half_up(exact, digits)


@settings(max_examples=300, deadline=None, database=None)
@given(
    currency=st.sampled_from(sorted(ISO_4217_MINOR_UNITS)),
    amount=st.decimals(min_value=Decimal(-(10**9)), max_value=Decimal(10**9), places=6),
)
def test_round_money_is_half_up_to_the_minor_unit(currency: str, amount: Decimal) -> None:
    digits = ISO_4217_MINOR_UNITS[currency]
    rounded = round_money(amount, currency)
    assert rounded.as_tuple().exponent == -digits
    assert rounded == half_up(Fraction(amount), digits)
    assert round_money(rounded, currency) == rounded  # once rounded, it stays


def test_discounted_rounds_the_exact_value_once() -> None:
    # 0.125 KWD less 0 % stays 0.125; 10.005 EUR at 0 % would be 10.01 (half-up, not even).
    assert discounted(Decimal("0.125"), Decimal(0), "KWD") == Decimal("0.125")
    assert discounted(Decimal("10.005"), Decimal(0), "EUR") == Decimal("10.01")
    assert discounted(Decimal("10.005"), Decimal(0), "JPY") == Decimal("10")
