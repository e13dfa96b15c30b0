"""Event envelope v1: the wire contract between a CRM and the worker (DESIGN §3.1).

Money arrives as a decimal string or a JSON number and is held as :class:`Decimal`;
:func:`parse_event` decodes JSON numbers as decimals, so no float ever touches a price.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    field_validator,
)

EVENT_TYPES = ("purchase", "anniversary", "usage_change")
MAX_EVENT_BYTES = 256 * 1024

Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=4, allow_inf_nan=False)]
Identifier = Annotated[str, Field(min_length=1, max_length=128)]
AttributeValue = str | bool | int | Decimal | list[str] | None


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
    updated_at: AwareDatetime | None = None


class CustomerData(_Strict):
    """An upsert: only ``id`` is required; fields that are given replace stored ones."""

    id: Identifier
    email: Annotated[str, Field(max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = (
        None
    )
    first_name: Annotated[str, Field(max_length=100)] | None = None
    last_name: Annotated[str, Field(max_length=100)] | None = None
    locale: str | None = None
    timezone: str | None = None
    consent: Consent | None = None
    attributes: dict[str, AttributeValue] | None = None

    @field_validator("first_name", "last_name")
    @classmethod
    def _single_line(cls, value: str | None) -> str | None:
        if value is not None and any(ch in value for ch in "\r\n\x00"):
            raise ValueError("must not contain line breaks or NUL")
        return value

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            Locale.parse(value, sep="-" if "-" in value else "_")
        except (ValueError, UnknownLocaleError) as exc:
            raise ValueError(f"unknown locale {value!r}") from exc
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value


class LineItem(_Strict):
    sku: Identifier
    name: Annotated[str, Field(max_length=300)] | None = None
    category: Identifier
    quantity: Annotated[int, Field(ge=1, le=100_000)] = 1
    unit_price: Money


class PurchaseData(_Strict):
    order_id: Identifier
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    total: Money
    items: Annotated[list[LineItem], Field(min_length=1, max_length=1000)]


class AnniversaryData(_Strict):
    kind: Literal["signup", "first_purchase", "membership"]
    years: Annotated[int, Field(ge=0, le=200)]


class UsageChangeData(_Strict):
    metric: Identifier
    previous: Annotated[Decimal, Field(allow_inf_nan=False)]
    current: Annotated[Decimal, Field(allow_inf_nan=False)]
    window_days: Annotated[int, Field(ge=1, le=3660)]

    @property
    def change_pct(self) -> Decimal | None:
        """Relative change in percent; ``None`` when there is no previous level to compare."""
        if self.previous == 0:
            return None
        return ((self.current - self.previous) / abs(self.previous) * 100).quantize(Decimal("0.01"))


class _Envelope(_Strict):
    id: Identifier
    occurred_at: AwareDatetime
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
    occurred_at: AwareDatetime
    customer: ForgetCustomer


_FORGET_ADAPTER: TypeAdapter[ForgetEvent] = TypeAdapter(ForgetEvent)


class InvalidEvent(ValueError):
    """A message that is not a valid v1 event; ``reason`` is safe to log (no PII)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def parse_event(body: bytes | str) -> PurchaseEvent | AnniversaryEvent | UsageChangeEvent:
    """Decode and validate one event; raise :class:`InvalidEvent` with a PII-free reason."""
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("oversize", f"{len(raw)} bytes exceeds the {MAX_EVENT_BYTES} limit")
    try:
        document: Any = json.loads(raw.decode("utf-8"), parse_float=Decimal)
    except UnicodeDecodeError as exc:
        raise InvalidEvent("not_utf8", f"body is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent(
            "not_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    return validate_event(document)


def validate_event(document: Any) -> PurchaseEvent | AnniversaryEvent | UsageChangeEvent:
    """Validate an already decoded JSON document as an event envelope."""
    if not isinstance(document, dict):
        raise InvalidEvent("wrong_schema", "an event must be a JSON object")
    if document.get("type") not in EVENT_TYPES:
        raise InvalidEvent(
            "unknown_type",
            f"type must be one of {', '.join(EVENT_TYPES)}",
        )
    try:
        return _EVENT_ADAPTER.validate_python(document)
    except ValidationError as exc:
        raise InvalidEvent("wrong_schema", describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    """Summarise validation errors by location and message only; input values may hold PII."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:5]:
        location = ".".join(str(part) for part in error["loc"][1:] or error["loc"])
        parts.append(f"{location}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


AnyEvent = PurchaseEvent | AnniversaryEvent | UsageChangeEvent


def event_time(event: AnyEvent) -> datetime:
    """When the event happened, as an aware datetime."""
    return event.occurred_at


def parse_forget(body: bytes | str) -> ForgetEvent | None:
    """A ``forget`` request, or None when the body is not one (not JSON, not an object,
    another type); :class:`InvalidEvent` when it says ``forget`` but breaks the schema."""
    try:
        document: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("type") != "forget":
        return None
    try:
        return _FORGET_ADAPTER.validate_python(document)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)[:5]
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        raise InvalidEvent("wrong_schema", reason) from None
