"""The campaign file v1 model (DESIGN §3.2): what a marketer writes, validated strictly."""

from __future__ import annotations

from datetime import time, timedelta
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
    model_validator,
)

from triggers.conditions import Condition
from triggers.durations import parse_duration, parse_time_of_day

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _duration(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return timedelta(0)
    raise ValueError("write a duration as text with a unit, e.g. 90m, 12h, 2d, 1w")


def _time_of_day(value: object) -> object:
    if isinstance(value, str):
        return parse_time_of_day(value)
    raise ValueError('write a time of day as quoted text, e.g. "09:00"')


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(0|(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?)$",
            "description": "a number with a unit, largest first: 90m, 12h, 2d, 1w, 1d12h",
        }
    ),
]
TimeOfDay = Annotated[
    time,
    BeforeValidator(_time_of_day),
    WithJsonSchema(
        {"type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d$", "description": "HH:MM, 24 h"}
    ),
]
Percent = Annotated[Decimal, Field(ge=0, le=100)]
TemplateName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$", max_length=80)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Trigger(_Model):
    event: Literal["purchase", "anniversary", "usage_change"]
    where: Condition | None = None


class Window(_Model):
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    from_: TimeOfDay = Field(alias="from")
    to: TimeOfDay

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.from_ == self.to:
            raise ValueError("from and to must differ")
        return self


class Schedule(_Model):
    delay: Duration = Field(timedelta(0), json_schema_extra={"default": "0m"})
    window: Window | None = None
    timezone: str = Field(default="customer", description="'customer' or an IANA name")
    expire_after: Duration = Field(
        timedelta(days=7),
        json_schema_extra={"default": "7d"},
        description="drop the email if it cannot go out within this time after the trigger",
    )


class MaxSends(_Model):
    count: Annotated[int, Field(ge=1, le=1000)]
    period: Duration


class Frequency(_Model):
    """Per-customer limits of this campaign; the global cap in settings applies on top."""

    once_per_customer: StrictBool = False
    cooldown: Duration | None = None
    max_sends: MaxSends | None = Field(
        default=None, description="at most `count` emails of this campaign per `period`"
    )


class _Offer(_Model):
    max_items: Annotated[int, Field(ge=1, le=12)] = 3
    exclude_owned: StrictBool = True
    unavailable: Literal["skip_item", "cancel_send"] = "skip_item"


class ComplementaryOffer(_Offer):
    type: Literal["complementary"]
    categories: list[str] | None = Field(
        default=None, description="Categories to offer; default: the complement map"
    )
    skus: list[str] | None = None


class BundleOffer(_Offer):
    type: Literal["bundle"]
    categories: list[str] | None = None
    discount_percent: Percent = Decimal(10)


class UpgradeOffer(_Offer):
    type: Literal["upgrade"]
    max_price_ratio: Annotated[Decimal, Field(gt=1, le=10)] = Decimal(2)


class LoyaltyBonusOffer(_Offer):
    type: Literal["loyalty_bonus"]
    points: Annotated[int, Field(ge=1)]
    new_categories_only: StrictBool = True


Offer = Annotated[
    ComplementaryOffer | BundleOffer | UpgradeOffer | LoyaltyBonusOffer,
    Field(discriminator="type"),
]


class Variant(_Model):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$", max_length=40)]
    weight: Annotated[int, Field(ge=0, le=10_000)] = 1
    template: TemplateName
    subject: Annotated[str, Field(max_length=300)] | None = None


class Experiment(_Model):
    holdout_percent: Percent = Decimal(0)
    variants: list[Variant] = Field(min_length=1)

    @model_validator(mode="after")
    def _variants(self) -> Experiment:
        ids = [variant.id for variant in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError("variant ids must be unique")
        if sum(variant.weight for variant in self.variants) == 0:
            raise ValueError("at least one variant needs a weight above 0")
        return self


class Campaign(_Model):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9\-]*$", max_length=80)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    status: Literal["active", "paused", "draft"] = "active"
    kind: Literal["cross_sell", "upsell", "loyalty", "reengagement"]
    priority: Annotated[int, Field(ge=0, le=1000)] = 50
    trigger: Trigger
    audience: Condition | None = None
    offer: Offer
    schedule: Schedule = Field(default_factory=Schedule)
    frequency: Frequency = Field(default_factory=Frequency)
    experiment: Experiment
