"""Money amounts: rounded once, half-up, to the currency's ISO 4217 minor unit.

The number of decimals a currency has is its ISO 4217 *minor unit* (JPY 0, EUR 2,
KWD 3, BHD 3, CLP 0, IQD 3 …), read from the ``iso4217`` package, which ships the ISO 4217
maintenance agency's list (table A.1) as data. CLDR's ``digits`` (what Babel's
``get_currency_precision`` returns) differ from ISO 4217 for some currencies because CLDR
records what is customary in print (IQD 0 instead of 3, HUF 0 instead of 2 …); ISO 4217 is
the unit amounts are settled in, so ISO 4217 wins. A code with no minor unit in ISO 4217
(gold XAU, SDR XDR, test codes) or one ISO 4217 does not list gets two decimals.

Pure: the table is built once at import from data shipped with the package.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

from iso4217 import Currency

DEFAULT_MINOR_UNIT = 2
MINOR_UNITS: dict[str, int] = {
    currency.code: currency.exponent for currency in Currency if currency.exponent is not None
}


def minor_unit(currency: str) -> int:
    """Decimals of ``currency`` (an ISO 4217 code such as ``"JPY"``): 0 for JPY, 3 for KWD."""
    return MINOR_UNITS.get(currency.upper(), DEFAULT_MINOR_UNIT)


@lru_cache(maxsize=512)
def _quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-minor_unit(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """``amount`` rounded half-up (away from zero on a tie) to the currency's minor unit.

    The result has exactly ``minor_unit(currency)`` decimals: ``round_money(4432.5, JPY)``
    is ``Decimal("4433")``, ``round_money(1.2345, KWD)`` is ``Decimal("1.235")``.
    """
    return amount.quantize(_quantum(currency), rounding=ROUND_HALF_UP)


def discounted(amount: Decimal, discount_percent: Decimal, currency: str) -> Decimal:
    """``amount`` less ``discount_percent`` %, computed exactly and rounded once."""
    return round_money(amount * (Decimal(100) - discount_percent) / Decimal(100), currency)
