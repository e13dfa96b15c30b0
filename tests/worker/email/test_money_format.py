"""The amount an email shows is the amount computed: formatting never rounds again."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction

from babel.numbers import format_decimal, get_currency_symbol, parse_decimal
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.triggers.builders import make_campaign
from tests.triggers.test_money import ISO_4217_MINOR_UNITS, half_up
from triggers.campaigns import BundleOffer
from triggers.offers import Product, bundle_offer, resolve_offer
from worker.email.email_context import offer_context, sample_offer
from worker.email.rendering import _money_text, _number, babel_locale, format_money

LOCALES = ("en", "ja", "it", "ro", "fr", "de", "de_CH", "hi", "ar", "es_CL")
# Marks that set text direction around numbers in RTL locales: not part of the amount.
_BIDI = dict.fromkeys(map(ord, "\u200e\u200f\u061c\u202a\u202b\u202c"))


def amount_in(text: str, currency: str, locale: str) -> Decimal:
    """Parse a formatted amount back with Babel, after removing the currency symbol/code."""
    for marker in (get_currency_symbol(currency, locale), currency):
        text = text.replace(marker, "")
    return parse_decimal(text.translate(_BIDI).strip(), locale=locale, strict=True)


def yen_bundle() -> tuple[Decimal, dict[str, str]]:
    items = [Product(f"JP-{n}", f"Item {n}", f"c{n}", Decimal(1970), "JPY") for n in range(3)]
    offer = BundleOffer.model_validate({"type": "bundle", "discount_percent": 25, "max_items": 3})
    resolved = resolve_offer(
        offer, candidates=items, categories=["c0", "c1", "c2"], owned_skus=frozenset()
    )
    assert resolved.bundle_price is not None
    shown = {
        tag: offer_context(resolved, tag, "en")["bundle_price_text"] for tag in ("ja-JP", "en")
    }
    return resolved.bundle_price, shown


def test_a_yen_bundle_shows_the_computed_4433() -> None:
    computed, shown = yen_bundle()
    assert computed == Decimal(4433)
    assert shown == {"ja-JP": "￥4,433", "en": "¥4,433"}


def test_item_prices_show_the_amount_the_context_carries() -> None:
    items = (
        Product("K", "Kuwaiti item", "c", Decimal("1.2345"), "KWD"),
        Product("I", "Iraqi item", "c", Decimal("12.5"), "IQD"),
        Product("J", "Japanese item", "c", Decimal("99.5"), "JPY"),
    )
    for item in items:
        context = offer_context(bundle_offer((item,), Decimal(0)), "en", "en")
        (shown,) = context["items"]
        assert amount_in(shown["price_text"], item.currency, "en") == Decimal(shown["price"])
    # IQD has 3 decimals in ISO 4217 (CLDR prints 0): the text keeps all three.
    assert (
        offer_context(bundle_offer((items[1],), Decimal(0)), "en", "en")["items"][0]["price_text"]
        == "IQD12.500"
    )


@settings(max_examples=300, deadline=None, database=None)
@given(
    currency=st.sampled_from(sorted(ISO_4217_MINOR_UNITS)),
    locale=st.sampled_from(LOCALES),
    prices=st.lists(
        st.decimals(min_value=Decimal(0), max_value=Decimal(10_000_000), places=4),
        min_size=1,
        max_size=4,
    ),
    discount=st.decimals(min_value=Decimal(0), max_value=Decimal(100), places=2),
)
def test_formatted_amounts_parse_back_to_the_computed_ones(
    currency: str, locale: str, prices: list[Decimal], discount: Decimal
) -> None:
    items = tuple(Product(f"S{n}", "P", "c", p, currency) for n, p in enumerate(prices))
    offer = bundle_offer(items, discount)
    context = offer_context(offer, locale, "en")
    for computed, text in (
        (offer.bundle_price, context["bundle_price_text"]),
        (offer.regular_price, context["regular_price_text"]),
    ):
        assert computed is not None
        assert amount_in(text, currency, locale) == computed
        digits = ISO_4217_MINOR_UNITS[currency]
        assert computed.as_tuple().exponent == -digits
    digits = ISO_4217_MINOR_UNITS[currency]
    for item, shown in zip(items, context["items"], strict=True):
        assert Decimal(shown["price"]) == half_up(Fraction(item.price), digits)
        assert amount_in(shown["price_text"], currency, locale) == Decimal(shown["price"])


@settings(max_examples=200, deadline=None, database=None)
@given(
    currency=st.sampled_from(sorted(ISO_4217_MINOR_UNITS)),
    locale=st.sampled_from(LOCALES),
    amount=st.decimals(min_value=Decimal(0), max_value=Decimal(10**9), places=2),
)
def test_template_money_shows_exactly_the_minor_unit(
    currency: str, locale: str, amount: Decimal
) -> None:
    """``money(amount, currency)`` in a template keeps an already rounded amount intact."""
    digits = ISO_4217_MINOR_UNITS[currency]
    rounded = amount.quantize(Decimal(1).scaleb(-digits)) if digits < 2 else amount
    text = format_money(rounded, currency, babel_locale(locale))
    assert amount_in(text, currency, locale) == rounded
    parsed = amount_in(text, currency, locale)
    assert parsed.as_tuple().exponent == -digits


@settings(max_examples=60, deadline=None, database=None)
@given(discount=st.decimals(min_value=Decimal(0), max_value=Decimal(100), places=2))
def test_lint_and_preview_price_a_sample_bundle_like_a_send(discount: Decimal) -> None:
    """The sample offer (lint, previews) goes through the same pricing as a real send."""
    campaign = make_campaign(
        "sample-bundle", offer={"type": "bundle", "discount_percent": discount}
    )
    sample = sample_offer(campaign)
    exact = sum((Fraction(p.price) for p in sample.items), Fraction(0))
    assert sample.bundle_price == half_up(exact * (100 - Fraction(discount)) / 100, 2)
    assert sample.regular_price == half_up(exact, 2)


def test_a_sample_bundle_tie_rounds_half_up() -> None:
    # 49.90 + 99.80 = 149.70 at 15 % off is exactly 127.245: half-up 127.25 (not 127.24).
    campaign = make_campaign("sample-bundle", offer={"type": "bundle", "discount_percent": 15})
    assert sample_offer(campaign).bundle_price == Decimal("127.25")


@settings(max_examples=200, deadline=None)
@given(
    amounts=st.lists(
        st.decimals(min_value=-(10**6), max_value=10**6, places=3)
        | st.sampled_from([Decimal("0"), Decimal("-0"), Decimal("-0.00"), Decimal("49.9")])
        | st.sampled_from([Decimal("49.90"), Decimal("1E+2"), Decimal("100")]),
        min_size=1,
        max_size=8,
    ),
    currency=st.sampled_from(["EUR", "JPY", "KWD", "RON", "USD"]),
    locale=st.sampled_from(["en", "ro-RO", "ja", "de-CH", "ar-EG"]),
)
def test_a_remembered_amount_is_written_as_a_fresh_one(
    amounts: list[Decimal], currency: str, locale: str
) -> None:
    """format_money remembers texts by the amount's own text: an equal amount written
    differently (``49.9`` and ``49.90``, ``0`` and ``-0``, a Decimal, its str, an int)
    reads exactly as when it is formatted for the first time."""
    where = babel_locale(locale)
    for amount in amounts:
        forms: list[Decimal | str | int] = [amount, str(amount)]
        if amount == amount.to_integral_value():
            forms.append(int(amount))
        for form in forms:
            fresh = _money_text.__wrapped__(str(form), currency, where)
            assert format_money(form, currency, where) == fresh


def _outcome(write: Callable[[], str]) -> str | type[BaseException]:
    try:
        return write()
    except Exception as exc:  # Babel refuses some values (bool, beyond 28 digits)
        return type(exc)


@settings(max_examples=300, deadline=None)
@given(
    value=st.integers(-(10**16), 10**16)
    | st.decimals(allow_nan=False, allow_infinity=False, places=3)
    | st.sampled_from([Decimal("1.0"), Decimal("1"), Decimal("-0"), Decimal("1E+3"), True]),
    locale=st.sampled_from(["en", "ro-RO", "it-IT", "ja", "de-CH"]),
)
def test_number_is_what_babel_writes_for_the_same_value(value: int | Decimal, locale: str) -> None:
    """``number()`` remembers its text by type and text of the value (docs/performance.md):
    the text (or the error) is Babel's for that very value, ``Decimal("1.0")`` and ``1``
    each their own."""
    tag = babel_locale(locale)
    assert _outcome(lambda: _number(value, tag)) == _outcome(
        lambda: format_decimal(value, locale=tag)
    )
