"""Event envelope v1: the wire contract between a CRM and the worker.

Money arrives as a decimal string or a JSON number and is held as :class:`Decimal`;
:func:`parse_event` decodes JSON numbers as decimals, so no float ever touches a price.

Every body is hostile until proven otherwise: :func:`load_json` bounds the size, the
nesting depth, each number literal and each string *before* any costly step (Python's
``json`` recursion, ``int`` conversion of a huge literal, ``Decimal`` to ``int`` of
``1e10000000``), so a message of a few hundred bytes cannot cost seconds of CPU or raise
anything but :class:`InvalidEvent`. The limits are listed in docs/events.md.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.numbers import list_currencies
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from triggers.addresses import InvalidAddress, canonical_address
from triggers.fields import FieldType, attribute_type_reason
from triggers.text_rules import NOT_ONE_LINE

EVENT_TYPES = ("purchase", "anniversary", "usage_change")
MAX_EVENT_BYTES = 256 * 1024
"""A body's size in bytes, checked before it is decoded."""
MAX_DEPTH = 16
"""Arrays and objects nested in one another; a valid event needs 4."""
MAX_NUMBER_CHARS = 40
"""Characters of one JSON number literal (sign, digits, point and exponent)."""
MAX_NUMBER_EXPONENT = 40
"""A number stays below 10**40 in magnitude, has at most 40 decimal places, and its
decimal exponent (``0e99`` included) lies within +/-40."""
MAX_STRING_CHARS = 16_384
"""Characters of one JSON string, object keys included."""
MAX_IDENTIFIER_CHARS = 128
"""Identifiers fit the ``String(128)`` columns of ``worker/core/models.py``."""
EARLIEST_OCCURRED_AT = datetime(1970, 1, 1, tzinfo=UTC)
"""No CRM event predates the Unix epoch; earlier stamps are broken clocks or defaults."""
MAX_CLOCK_SKEW = timedelta(days=1)
"""How far in the future of the receiver's clock ``occurred_at`` may lie."""
LATEST_OCCURRED_AT = datetime(9000, 1, 1, tzinfo=UTC)
"""Without a receiver's clock (replaying stored events), the latest accepted instant:
schedule arithmetic (delays, expiries, dedupe windows) stays far from ``datetime.max``."""


def _identifier(value: str) -> str:
    """Printable (``str.isprintable``: no control, format, surrogate, private-use,
    unassigned or non-space separator character) and no whitespace at either end, so
    an identifier reads the same in a log, a URL token, a database and a CSV export."""
    if not value.isprintable():
        raise ValueError("must contain printable characters only")
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    return value


# What ``str(Decimal)`` writes too (``1E+3``, ``0E-10``): stored events are replayed.
_DECIMAL_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[Ee][+-]?[0-9]+)?")
_INSTANT_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")


def _decimal_as_written(value: object) -> object:
    """A JSON number, or a decimal string written plainly: digits, an optional point and
    fraction and exponent, a minus sign at most (the bounds refuse it where it cannot
    be); no space, plus sign, thousands separator or leading zero ("4299.00", not
    " 4299.00 ", "+4299", "0004299.00" or "4,299.00"). A boolean is not a number."""
    if isinstance(value, bool):
        raise ValueError("must be a decimal string or a JSON number, not true or false")
    if isinstance(value, str) and not _DECIMAL_TEXT.fullmatch(value):
        raise ValueError(
            "must be a decimal string written plainly, such as 4299.00 (digits and one point;"
            " no space, plus sign, separator or leading zero)"
        )
    return value


def _instant_as_written(value: object) -> object:
    """ISO 8601 text (``2026-11-24T10:30:00+02:00``). A number is refused rather than
    guessed: 1764000000 may be seconds or milliseconds since the epoch, and its zone is
    not written; pydantic would read either, and numeric text too."""
    if isinstance(value, datetime):
        return value  # built in Python, not decoded from a message
    if not isinstance(value, str):
        raise ValueError(
            "must be an ISO 8601 date and time with an offset, as text"
            " (e.g. 2026-11-24T10:30:00+02:00), not a number"
        )
    if not _INSTANT_TEXT.match(value):
        raise ValueError(
            "must be an ISO 8601 date and time with an offset,"
            " written YYYY-MM-DDTHH:MM… (e.g. 2026-11-24T10:30:00+02:00)"
        )
    return value


Money = Annotated[
    Decimal,
    BeforeValidator(_decimal_as_written),
    Field(ge=0, max_digits=14, decimal_places=4, allow_inf_nan=False),
]
Instant = Annotated[AwareDatetime, BeforeValidator(_instant_as_written)]
Identifier = Annotated[
    str,
    Field(min_length=1, max_length=MAX_IDENTIFIER_CHARS),
    AfterValidator(_identifier),
]
# A usage level: 20 integer digits and 10 decimal places keep change_pct exact enough
# and finite (see UsageChangeData.change_pct).
UsageLevel = Annotated[
    Decimal,
    BeforeValidator(_decimal_as_written),
    Field(max_digits=30, decimal_places=10, allow_inf_nan=False),
]
AttributeValue = str | bool | int | Decimal | list[str] | None
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TIMEZONE_KEY = re.compile(r"^[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*$")
_LOCALE_TAG = re.compile(r"^[A-Za-z0-9]+(?:[_\-@][A-Za-z0-9]+)*$")


KNOWN_NAMES_CACHED = 1024
"""Locale and time zone answers kept per process (each cache): a CRM sends a handful of
each, and a flood of made-up ones only evicts (they are at most 35 and 64 characters)."""


@lru_cache(maxsize=KNOWN_NAMES_CACHED)
def _is_known_locale(value: str) -> bool:
    """Whether Babel knows the locale ``value`` (``ro-RO`` or ``ro_RO``). Cached: Babel
    builds a ``Locale`` and normalises its identifier on every parse, which was 2.8 % of
    the consumer's samples in the stack profile (docs/performance.md, "Ingest"). The POSIX
    locale (``C``, ``POSIX``) is no language a customer reads."""
    if value.upper() in ("C", "POSIX"):
        return False
    try:
        Locale.parse(value, sep="-" if "-" in value else "_")
    except (ValueError, TypeError, UnknownLocaleError):
        return False
    return True


NOT_PLACES = frozenset({"localtime", "posixrules", "Factory"})
"""Keys ``ZoneInfo`` may load that name no place: the machine's own zone (it differs
between the CRM's machine and ours), a rules template, tzdata's placeholder."""
NOT_PLACE_PREFIXES = ("posix/", "right/")  # copies of the database, ``right/`` leap-second clocks


@lru_cache(maxsize=KNOWN_NAMES_CACHED)
def _is_known_timezone(value: str) -> bool:
    """Whether ``ZoneInfo`` loads the key ``value`` and it names a place (not one of
    :data:`NOT_PLACES`). Cached: an unknown key is looked for in the time zone database on
    every call (``ZoneInfo`` caches only the keys it found)."""
    if value in NOT_PLACES or value.startswith(NOT_PLACE_PREFIXES):
        return False
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def is_known_timezone(value: str) -> bool:
    """Whether ``value`` is an IANA time zone key (``Europe/Bucharest``) that ``ZoneInfo``
    loads: the rule for ``customer.timezone`` and ``CROSSSELL_DEFAULT_TIMEZONE``."""
    return bool(_TIMEZONE_KEY.fullmatch(value)) and _is_known_timezone(value)


def is_known_locale(value: str) -> bool:
    """Whether ``value`` is a locale tag (``ro-RO``, ``ro_RO``) Babel knows: the rule for
    ``customer.locale`` and ``CROSSSELL_DEFAULT_LOCALE``."""
    return bool(_LOCALE_TAG.fullmatch(value)) and _is_known_locale(value)


NOT_MONEY = frozenset({"XXX", "XTS"})
"""ISO 4217's "no currency" and "for testing" codes: assigned, but no price is in them."""
ISO_CURRENCIES: frozenset[str] = frozenset(list_currencies()) - NOT_MONEY
"""The ISO 4217 codes CLDR knows (Babel's ``list_currencies``: current and historic,
precious metals such as XAU included), the ones a price can be formatted in for a
customer's locale; not :data:`NOT_MONEY`."""


def _iso_currency(value: str) -> str:
    """A currency code ISO 4217 assigns, in capitals: ``XYZ`` is refused rather than shown
    to a customer as an unknown unit, ``eur`` rather than guessed."""
    if value not in ISO_CURRENCIES:
        raise ValueError("must be an ISO 4217 currency code such as EUR, RON or USD")
    return value


# Checked against ISO 4217's codes alone: a pattern would be reported as its regex.
CurrencyCode = Annotated[str, AfterValidator(_iso_currency)]
"""An event's or a product's currency (the catalog import uses the same rule)."""


def _email_address(value: str) -> str:
    """``customer.email``: exactly one mailbox, stored in canonical form (triggers.addresses).

    The message is fixed and PII-free (``describe_errors`` logs it); the event is refused.
    """
    try:
        return canonical_address(value)
    except InvalidAddress:
        raise ValueError("not a single valid email address (RFC 5322/6531 addr-spec)") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The campaign kinds a customer can opt in to or out of one by one.
CampaignKind = Literal["cross_sell", "upsell", "loyalty", "reengagement"]


class Consent(_Strict):
    """The CRM's view of marketing consent: all marketing email, and per campaign kind.

    ``updated_at`` is when the customer gave these answers (ISO 8601 with an offset). An
    opt-in re-subscribes a customer who opted out through crosssell only when it is newer
    than that opt-out; without ``updated_at`` it never does (see docs/events.md).
    """

    email_marketing: StrictBool | None = None
    kinds: dict[CampaignKind, StrictBool] | None = None
    updated_at: Instant | None = None


class CustomerData(_Strict):
    """An upsert: only ``id`` is required; fields that are given replace stored ones."""

    id: Identifier
    email: Annotated[str, Field(max_length=320), AfterValidator(_email_address)] | None = None
    first_name: Annotated[str, Field(max_length=100)] | None = None
    last_name: Annotated[str, Field(max_length=100)] | None = None
    locale: Annotated[str, Field(max_length=35)] | None = None
    timezone: Annotated[str, Field(max_length=64)] | None = None
    consent: Consent | None = None
    attributes: dict[str, AttributeValue] | None = None

    @field_validator("first_name", "last_name")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        """Names go into email headers: one line, no control character (C0, DEL, C1), no
        Unicode line separator and no bidirectional override."""
        if value is not None and NOT_ONE_LINE.search(value):
            raise ValueError(
                "must not contain line breaks, control or bidirectional override characters"
            )
        return value

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str | None) -> str | None:
        """A CLDR locale as Babel knows it (``ro-RO`` or ``ro_RO``); the reason never
        quotes the rejected value (it is the producer's data, not ours)."""
        if value is None:
            return None
        if not _LOCALE_TAG.fullmatch(value):
            raise ValueError("must be a locale identifier such as ro-RO")
        if not _is_known_locale(value):
            raise ValueError("unknown locale")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        """An IANA time zone key; the character check keeps paths out of ``ZoneInfo``."""
        if value is None:
            return None
        if not _TIMEZONE_KEY.fullmatch(value):
            raise ValueError("must be an IANA time zone name such as Europe/Bucharest")
        if not _is_known_timezone(value):
            raise ValueError("unknown IANA time zone")
        return value


class LineItem(_Strict):
    sku: Identifier
    name: Annotated[str, Field(max_length=300)] | None = None
    category: Identifier
    quantity: Annotated[StrictInt, Field(ge=1, le=100_000)] = 1
    unit_price: Money

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        if value is not None and _CONTROL.search(value):
            raise ValueError("must not contain line breaks or other control characters")
        return value


class PurchaseData(_Strict):
    order_id: Identifier
    currency: CurrencyCode
    total: Money
    items: Annotated[list[LineItem], Field(min_length=1, max_length=1000)]


class AnniversaryData(_Strict):
    kind: Literal["signup", "first_purchase", "membership"]
    years: Annotated[StrictInt, Field(ge=0, le=200)]


class UsageChangeData(_Strict):
    metric: Identifier
    previous: UsageLevel
    current: UsageLevel
    window_days: Annotated[StrictInt, Field(ge=1, le=3660)]

    @property
    def change_pct(self) -> Decimal | None:
        """Relative change in percent, rounded half-even to hundredths; ``None`` when
        there is no previous level to compare.

        Computed with 80 significant digits: with ``UsageLevel``'s bounds (below 10**20,
        at least 10**-10 apart from zero) the result stays below 10**33, so neither the
        division nor the rounding can overflow the default 28-digit context.
        """
        if self.previous == 0:
            return None
        with localcontext() as context:
            context.prec = 80
            ratio = (self.current - self.previous) / abs(self.previous) * 100
            return ratio.quantize(Decimal("0.01"))


def _occurred_in_range(value: datetime, info: ValidationInfo) -> datetime:
    """``occurred_at`` must convert to UTC and lie between the epoch and one day past
    the receiver's clock (``context={"received_at": ...}``), or before
    :data:`LATEST_OCCURRED_AT` when no clock is given: a year-9000 event would plan
    sends that never go out and never expire."""
    try:
        instant = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be representable in UTC") from None
    received_at = info.context.get("received_at") if isinstance(info.context, dict) else None
    latest = LATEST_OCCURRED_AT if received_at is None else received_at + MAX_CLOCK_SKEW
    if instant < EARLIEST_OCCURRED_AT:
        raise ValueError("must not be before 1970-01-01T00:00:00Z")
    if instant > latest:
        raise ValueError(
            "must not be more than 1 day after the time of receipt"
            if received_at is not None
            else "must be before 9000-01-01T00:00:00Z"
        )
    return value


class _Envelope(_Strict):
    id: Identifier
    occurred_at: Annotated[Instant, AfterValidator(_occurred_in_range)]
    customer: CustomerData


class PurchaseEvent(_Envelope):
    type: Literal["purchase"]
    data: PurchaseData


class AnniversaryEvent(_Envelope):
    type: Literal["anniversary"]
    data: AnniversaryData


class UsageChangeEvent(_Envelope):
    type: Literal["usage_change"]
    data: UsageChangeData


Event = Annotated[PurchaseEvent | AnniversaryEvent | UsageChangeEvent, Field(discriminator="type")]
_EVENT_ADAPTER: TypeAdapter[PurchaseEvent | AnniversaryEvent | UsageChangeEvent] = TypeAdapter(
    Event
)


class ForgetCustomer(_Strict):
    id: Identifier


class ForgetEvent(_Strict):
    """The CRM asks crosssell to erase a customer's personal data (GDPR Art. 17).

    Only the customer's id travels: the request must not carry what it erases. Handled
    apart from the marketing events (never stored in the inbox, never decided on).
    """

    id: Identifier
    type: Literal["forget"]
    occurred_at: Instant
    customer: ForgetCustomer


_FORGET_ADAPTER: TypeAdapter[ForgetEvent] = TypeAdapter(ForgetEvent)


class InvalidEvent(ValueError):
    """A message that is not a valid v1 event; ``reason`` is safe to log (no PII): it
    names fields and rules, never the rejected values."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


# One token per string (closed or not: an unterminated one runs to the end) or bracket.
# Possessive quantifiers keep the scan linear whatever the input.
_STRUCTURE = re.compile(rb'"(?:[^"\\]++|\\[\s\S])*+"?|[\[\]{}]')
_OPENING = frozenset(b"[{")
_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")
# A JSON escape that may decode to NUL or a surrogate (or an escaped backslash before
# such text: a false alarm only costs the walk).
_BAD_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
# A field name, or a pydantic union member such as ``list[str]``.
_SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}(?:\[[A-Za-z0-9_]{1,16}\])?")


def _nesting_depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit``; iterative, so a
    100,000-level document is measured, not recursed into (``json`` would raise
    ``RecursionError``). A body with no more opening brackets than ``limit`` (every
    ordinary event: about 7) cannot nest deeper, and is not scanned."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for match in _STRUCTURE.finditer(raw):
        token = match.group()
        if len(token) != 1 or token == b'"':
            continue
        if token[0] in _OPENING:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class _NumberRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberRefused(f"a number literal is longer than {MAX_NUMBER_CHARS} characters")
    return int(text)


_EXPONENT_REFUSED = (
    f"a number is not below 10^{MAX_NUMBER_EXPONENT} in magnitude, has more than"
    f" {MAX_NUMBER_EXPONENT} decimal places or an exponent beyond +/-{MAX_NUMBER_EXPONENT}"
)


def _bounded_decimal(text: str) -> Decimal:
    """A JSON fraction or exponent literal as an exact ``Decimal``; refused when it is
    long or its exponent is out of range (``1e10000000`` is ten characters, but turning
    it into an ``int`` takes seconds)."""
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberRefused(f"a number literal is longer than {MAX_NUMBER_CHARS} characters")
    try:
        value = Decimal(text)
    except ArithmeticError:  # an exponent beyond what decimal can represent
        raise _NumberRefused(_EXPONENT_REFUSED) from None
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # JSON has no NaN or Infinity literal
    if not -MAX_NUMBER_EXPONENT <= exponent <= MAX_NUMBER_EXPONENT or (
        value != 0 and value.adjusted() >= MAX_NUMBER_EXPONENT
    ):
        raise _NumberRefused(_EXPONENT_REFUSED)
    return value


class _NotJson(Exception):
    pass


def _no_constant(name: str) -> Any:
    """``NaN`` and ``Infinity`` are a Python extension, not JSON (RFC 8259 section 6)."""
    raise _NotJson


def _path(parts: list[str | int]) -> str:
    """A location built from field names and indexes; a key that does not look like a
    field name (it may be data) is shown as ``<key>``."""
    shown = [
        str(part) if isinstance(part, int) or _SAFE_KEY.fullmatch(part) else "<key>"
        for part in parts
    ]
    return ".".join(shown) or "(document)"


def _check_strings(document: Any) -> None:
    """Walk the decoded document without recursion: every string and key must fit
    :data:`MAX_STRING_CHARS` and be storable (no NUL, no unpaired surrogate: PostgreSQL
    text refuses the first, UTF-8 cannot encode the second)."""
    stack: list[tuple[Any, list[str | int]]] = [(document, [])]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            _check_string(node, where)
        elif isinstance(node, dict):
            for key, value in node.items():
                _check_string(key, [*where, "<key>"])
                stack.append((value, [*where, key]))
        elif isinstance(node, list):
            stack.extend((value, [*where, index]) for index, value in enumerate(node))


def _check_string(text: str, where: list[str | int]) -> None:
    if len(text) > MAX_STRING_CHARS:
        raise InvalidEvent(
            "string_limit", f"{_path(where)}: longer than {MAX_STRING_CHARS} characters"
        )
    if _BAD_CHARACTER.search(text):
        raise InvalidEvent(
            "bad_character", f"{_path(where)}: contains NUL or an unpaired surrogate"
        )


class _DuplicateKey(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are unique. RFC 8259 §4 leaves duplicates to the parser
    ("last one wins" here, "first one wins" elsewhere): two systems could read two
    different events from one body, so a body with a repeated key is refused."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                shown = key if _SAFE_KEY.fullmatch(key) else "<key>"
                raise _DuplicateKey(f"the key {shown} appears twice in one object")
            seen.add(key)
    return document


_DECODER = json.JSONDecoder(
    parse_float=_bounded_decimal,
    parse_int=_bounded_int,
    parse_constant=_no_constant,
    object_pairs_hook=_unique_keys,
)
"""Built once: ``json.loads(text, **hooks)`` is ``JSONDecoder(**hooks).decode(text)``,
a new decoder and scanner per body. ``load_json`` of a benchmark purchase, minimum of
15 runs of 4,000: 12.2/13.8 → 11.1/11.6 µs (loaded machine; docs/performance.md, "Ingest").
Shared between threads as the ``json`` module shares its own default decoder."""


def load_json(body: bytes | str) -> Any:
    """Decode one message body as JSON within the limits above, or raise
    :class:`InvalidEvent` (codes ``oversize``, ``not_utf8``, ``too_deep``, ``not_json``,
    ``number_limit``, ``string_limit``, ``bad_character``, ``duplicate_key``). Numbers
    with a fraction or an exponent become ``Decimal``, integers ``int``. Shared by every
    transport and by ``crosssell publish``."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("oversize", f"{len(raw)} bytes exceeds the {MAX_EVENT_BYTES} limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("not_utf8", f"body is not UTF-8 (byte {exc.start})") from None
    if _nesting_depth_exceeds(raw, MAX_DEPTH):
        raise InvalidEvent("too_deep", f"arrays and objects nest deeper than {MAX_DEPTH} levels")
    try:
        document: Any = _DECODER.decode(text)
    except _DuplicateKey as duplicate:
        raise InvalidEvent("duplicate_key", duplicate.reason) from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent("not_json", _not_json_reason(exc)) from None
    except _NotJson:
        raise InvalidEvent("not_json", "NaN and Infinity are not JSON numbers") from None
    except _NumberRefused as refused:
        raise InvalidEvent("number_limit", refused.reason) from None
    except RecursionError:  # cannot happen below MAX_DEPTH; kept as a last line
        raise InvalidEvent(
            "too_deep", f"arrays and objects nest deeper than {MAX_DEPTH} levels"
        ) from None
    if _strings_need_checking(text):
        _check_strings(document)
    return document


def _not_json_reason(error: json.JSONDecodeError) -> str:
    """The decoder's reason and position, worded once ("Expecting value at line 1 column
    1"), with the character found there named when it cannot be told by eye: anything
    outside printable ASCII, such as a byte order mark at the start of a line of a
    concatenated file (RFC 8259 section 8.1: JSON text carries none), a typographic
    quote from a spreadsheet, a no-break space or a raw control character."""
    reason = f"{error.msg.removesuffix(' at')} at line {error.lineno} column {error.colno}"
    found = error.doc[error.pos : error.pos + 1]
    if not found or (found.isascii() and found.isprintable()):
        return reason
    code = ord(found)
    name = unicodedata.name(found, "") or _CONTROL_NAMES.get(code, "a control character")
    if code == 0xFEFF:
        name += ", a byte order mark"
    return f"{reason}: found U+{code:04X} ({name})"


# Names of the C0 and C1 controls and DEL, which ``unicodedata.name`` does not give.
_CONTROL_NAMES = {
    0x00: "NULL",
    0x09: "CHARACTER TABULATION",
    0x0A: "LINE FEED",
    0x0D: "CARRIAGE RETURN",
    0x1B: "ESCAPE",
    0x7F: "DELETE",
    0x85: "NEXT LINE",
}


def _strings_need_checking(text: str) -> bool:
    """Whether :func:`_check_strings` could refuse the document decoded from ``text``.

    A decoded string is never longer than the text it came from, and ``text`` (strict
    UTF-8) holds no surrogate; a raw NUL or control character inside a string is already
    ``not_json``. So only a long body or a ``\\u0000``/``\\uD800``-``\\uDFFF`` escape can
    produce a string the walk refuses; other bodies skip it with the same result."""
    return len(text) > MAX_STRING_CHARS or _BAD_ESCAPE.search(text) is not None


def parse_event(
    body: bytes | str,
    received_at: datetime | None = None,
    attributes: Mapping[str, FieldType] | None = None,
) -> PurchaseEvent | AnniversaryEvent | UsageChangeEvent:
    """Decode and validate one event; raise :class:`InvalidEvent` with a PII-free reason.

    ``received_at`` is the receiver's clock (aware): with it, an ``occurred_at`` more
    than a day in the future is refused. ``attributes`` are the declared custom
    attribute types (the attributes file): one of another type is ``wrong_schema``, as
    every condition on it would otherwise be silently false. The consumer, ``crosssell
    publish``, ``simulate`` and ``explain`` all read events through here.
    """
    event = validate_event(load_json(body), received_at)
    wrong_type = attribute_type_reason(event.customer.attributes, attributes or {})
    if wrong_type is not None:
        raise InvalidEvent("wrong_schema", wrong_type)
    return event


def validate_event(
    document: Any, received_at: datetime | None = None
) -> PurchaseEvent | AnniversaryEvent | UsageChangeEvent:
    """Validate an already decoded JSON document as an event envelope."""
    if not isinstance(document, dict):
        raise InvalidEvent("wrong_schema", "an event must be a JSON object")
    if document.get("type") not in EVENT_TYPES:
        raise InvalidEvent(
            "unknown_type",
            f"type must be one of {', '.join(EVENT_TYPES)}, or forget (an erasure request)",
        )
    try:
        return _EVENT_ADAPTER.validate_python(document, context={"received_at": received_at})
    except ValidationError as exc:
        raise InvalidEvent("wrong_schema", describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """Summarise validation errors by location and message only; input values may hold
    PII, and so may keys that are not field names (shown as ``<key>``)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False)[:5]:
        location = _path(list(error["loc"][1:] or error["loc"]))
        parts.append(f"{location}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


AnyEvent = PurchaseEvent | AnniversaryEvent | UsageChangeEvent


def parse_forget(body: bytes | str) -> ForgetEvent | None:
    """A ``forget`` request, or None when the body is not one (not JSON, not an object,
    another type); :class:`InvalidEvent` when it says ``forget`` but breaks the schema."""
    try:
        document: Any = load_json(body)  # the same limits as every event
    except InvalidEvent:
        return None
    if not isinstance(document, dict) or document.get("type") != "forget":
        return None
    try:
        return _FORGET_ADAPTER.validate_python(document)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)[:5]
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        raise InvalidEvent("wrong_schema", reason) from None


def refused_forget(bad: InvalidEvent, body: bytes | str, command: str) -> InvalidEvent:
    """``bad`` (what :func:`parse_event` raised for ``body``) for a tool that judges
    marketing events only (``command``: ``explain``, ``simulate``): when ``body`` is a
    valid ``forget`` request, a ``forget_request`` error that says so, instead of an
    ``unknown_type`` whose message lists ``forget`` among the types it accepts; when it
    is a malformed one, what is wrong with it (as the consumer would dead-letter it)."""
    if bad.code != "unknown_type":
        return bad
    try:
        request = parse_forget(body)
    except InvalidEvent as malformed:
        return malformed
    if request is None:
        return bad
    return InvalidEvent(
        "forget_request",
        f"an erasure request, not a marketing event: {command} judges purchase, anniversary"
        " and usage_change events; the consumer or `crosssell forget` applies it (an"
        " erasure already stored is taken into account)",
    )
