"""The campaign file v1 model (DESIGN §3.2): what a marketer writes, validated strictly."""

from __future__ import annotations

import difflib
from datetime import time, timedelta
from decimal import Decimal
from functools import cache
from typing import Annotated, Literal
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from triggers.addresses import canonical_address
from triggers.conditions import Condition
from triggers.durations import parse_duration, parse_time_of_day
from triggers.text_rules import one_line

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


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


def _number(value: object) -> object:
    """Numbers as numbers: "10" (quoted) is text, and true is not 1 (no coercion)."""
    if isinstance(value, str | bool):
        raise ValueError("write a number without quotes")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _longer_than_zero(why: str = "") -> AfterValidator:
    """A duration that must exceed 0; ``why`` is added to the refusal."""

    def check(value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0" + (f": {why}" if why else ""))
        return value

    return AfterValidator(check)


def _whole(value: object) -> object:
    _number(value)
    if isinstance(value, float | Decimal) and not Decimal(value).is_finite():
        # YAML's .inf and .nan, and 1e400 (read as infinity): int() would raise
        # OverflowError, a traceback instead of a bad-value at the line.
        raise ValueError("write a finite whole number")
    if isinstance(value, Decimal) and value != value.to_integral_value():
        raise ValueError("write a whole number")
    return int(value) if isinstance(value, Decimal) else value


Number = Annotated[Decimal, BeforeValidator(_number)]
Whole = Annotated[int, BeforeValidator(_whole)]
Percent = Annotated[Number, Field(ge=0, le=100)]
# Any directory name; whether the template exists is checked against templates/.
TemplateName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$", max_length=80)]


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

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value == "customer" or value in _zones():
            return value
        hint = difflib.get_close_matches(value, sorted(_zones()), n=1, cutoff=0.6)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"unknown time zone {value!r}: use 'customer' or an IANA name{suggestion}")

    expire_after: Annotated[
        Duration, _longer_than_zero("an email that expires when due never goes out")
    ] = Field(
        timedelta(days=7),
        json_schema_extra={"default": "7d"},
        description="drop the email if it cannot go out within this time after the trigger",
    )


class MaxSends(_Model):
    count: Annotated[Whole, Field(ge=1, le=1000)]
    period: Duration


class Frequency(_Model):
    """Per-customer limits of this campaign; the global cap in settings applies on top."""

    once_per_customer: StrictBool = False
    cooldown: Duration | None = None
    max_sends: MaxSends | None = Field(
        default=None, description="at most `count` emails of this campaign per `period`"
    )
    min_gap: Duration | None = Field(
        default=None,
        description=(
            "at least this long between this campaign's email and any other marketing email "
            "to the same customer; only longer than the global CROSSSELL_MIN_GAP counts"
        ),
    )


Strategy = Literal["recommended", "complementary", "bestsellers"]


class Coupon(_Model):
    """A code per email: unguessable, the same on every retry, valid for ``expires_after``."""

    prefix: Annotated[str, Field(pattern=r"^[A-Z0-9]{0,8}$")] = ""
    discount_percent: Annotated[Number, Field(gt=0, le=100)] | None = None
    expires_after: Annotated[
        Duration, _longer_than_zero("a coupon that expires as it is sent is void")
    ] = Field(timedelta(days=14), json_schema_extra={"default": "14d"})


class _Offer(_Model):
    max_items: Annotated[Whole, Field(ge=1, le=12)] = 3
    exclude_owned: StrictBool = True
    unavailable: Literal["skip_item", "cancel_send"] = "skip_item"
    fallback: list[Strategy] = Field(
        default_factory=list,
        description="strategies tried in turn when the offer's own yields nothing",
    )
    coupon: Coupon | None = None


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
    max_price_ratio: Annotated[Number, Field(gt=1, le=10)] = Decimal(2)


class RecommendedOffer(_Offer):
    """What customers who bought the same also bought (see `crosssell recommendations`)."""

    type: Literal["recommended"]


class LoyaltyBonusOffer(_Offer):
    type: Literal["loyalty_bonus"]
    # A bonus beyond a million points is a typo, not a programme: refused at its line.
    points: Annotated[Whole, Field(ge=1, le=1_000_000)]
    new_categories_only: StrictBool = True


Offer = Annotated[
    ComplementaryOffer | BundleOffer | UpgradeOffer | LoyaltyBonusOffer | RecommendedOffer,
    Field(discriminator="type"),
]


# One line, no control or bidirectional character (triggers.text_rules).
OneLine = AfterValidator(one_line)
# Checked by the model that holds it (Variant, Step): inside the union of one text and
# texts by locale, a validator would name the union's branches in every error's path.
SubjectText = Annotated[str, Field(min_length=1, max_length=300)]
# A BCP 47 language, optionally with a region: en, ro, pt-BR (written pt_BR or pt-BR).
LOCALE_KEY_PATTERN = r"^[a-z]{2,3}([_-][A-Z]{2})?$"
LocaleKey = Annotated[str, Field(pattern=LOCALE_KEY_PATTERN)]
SubjectByLocale = Annotated[
    dict[LocaleKey, SubjectText],
    # Editors flag a misspelt locale key: no key outside the pattern.
    WithJsonSchema(
        {
            "type": "object",
            "minProperties": 1,
            "patternProperties": {
                LOCALE_KEY_PATTERN: {"type": "string", "minLength": 1, "maxLength": 300}
            },
            "additionalProperties": False,
        }
    ),
]


def subject_key(tag: str) -> str:
    """``pt-BR`` and ``pt_BR`` are the same key: ``pt_BR``, as Babel and template files
    spell it (``subject.pt_BR.txt``)."""
    return tag.replace("-", "_")


class Variant(_Model):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$", max_length=40)]
    weight: Annotated[Whole, Field(ge=0, le=10_000)] = 1
    template: TemplateName
    subject: SubjectText | SubjectByLocale | None = Field(
        default=None,
        description="Replaces the template's subject: per locale ({en: …, ro: …}; a locale "
        "left out keeps the template's own subject file for it), or one text for every "
        "locale",
    )

    @field_validator("subject")
    @classmethod
    def _one_key_per_locale(cls, value: str | dict[str, str] | None) -> str | dict[str, str] | None:
        if not isinstance(value, dict):
            return value if value is None else one_line(value)
        for text in value.values():
            one_line(text)
        if not value:
            raise ValueError("give at least one locale, e.g. {en: ..., ro: ...}")
        keys = [subject_key(key) for key in value]
        twice = sorted({key for key in keys if keys.count(key) > 1})
        if twice:
            raise ValueError(f"locale {twice[0]} is given twice")
        return {subject_key(key): text for key, text in value.items()}

    def subject_cache_key(self) -> str | tuple[tuple[str, str], ...] | None:
        """The subject as a hashable value (cache keys)."""
        if isinstance(self.subject, dict):
            return tuple(sorted(self.subject.items()))
        return self.subject


class Experiment(_Model):
    holdout_percent: Percent = Decimal(0)
    variants: list[Variant] = Field(min_length=1)


# One mailbox, stored canonical (triggers.addresses); the pattern only shapes the schema.
Address = Annotated[
    str,
    Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320),
    AfterValidator(canonical_address),
]


class Sender(_Model):
    """Who the email is from, when it is not the installation's default sender."""

    name: Annotated[str, Field(min_length=1, max_length=100), OneLine] | None = None
    address: Address | None = None
    reply_to: Address | None = None


StepId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+$", max_length=40)]


class Step(_Model):
    """One email of a sequence, timed from the customer's entry or from the step before.

    Exactly one of ``after_entry`` and ``after_previous`` says when it is due; the step's
    own ``template``, ``subject``, ``offer`` and ``window`` replace the campaign's (the
    entry variant's template and subject otherwise). ``only_if`` is evaluated when the
    step is due and again just before it is sent; false skips the step (``step_condition``)
    and the sequence goes on.
    """

    id: StepId
    after_entry: Duration | None = Field(
        default=None, description="due this long after the customer entered the sequence"
    )
    after_previous: Duration | None = Field(
        default=None, description="due this long after the previous step was sent or skipped"
    )
    template: TemplateName | None = None
    subject: Annotated[str, Field(max_length=300), OneLine] | None = None
    offer: Offer | None = None
    window: Window | None = None
    only_if: Condition | None = Field(
        default=None,
        description="customer.*, event.* (the entry event) and enrollment.* fields",
    )

    @model_validator(mode="after")
    def _one_delay(self) -> Step:
        if (self.after_entry is None) == (self.after_previous is None):
            raise ValueError("give a step exactly one of after_entry or after_previous")
        return self

    @property
    def delay(self) -> timedelta:
        """The step's delay, whichever way it is written."""
        delay = self.after_entry if self.after_entry is not None else self.after_previous
        assert delay is not None  # _one_delay
        return delay


class EventExit(_Model):
    type: Literal["purchase", "anniversary", "usage_change"]
    where: Condition | None = None


class ExitRule(_Model):
    """One way out of a sequence; exactly one key per rule.

    ``purchase: any`` (any order), ``purchase: offered`` (an order with a product one of
    the enrollment's emails offered), ``purchase_in: [categories]`` (an order with a line
    in one of them), ``event: {type, where}`` (an event of that type for which ``where``
    holds). An unsubscribe always exits, whether listed or not.
    """

    purchase: Literal["any", "offered"] | None = None
    purchase_in: (
        Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None
    ) = None
    event: EventExit | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> ExitRule:
        given = [self.purchase, self.purchase_in, self.event]
        if sum(value is not None for value in given) != 1:
            raise ValueError("an exit rule has exactly one of purchase, purchase_in or event")
        return self


class ReenterAfter(_Model):
    after: Duration


Reenter = Literal["never", "after_exit"] | ReenterAfter


class Campaign(_Model):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9\-]*$", max_length=80)]
    name: Annotated[str, Field(min_length=1, max_length=200), OneLine, AfterValidator(_not_blank)]
    status: Literal["active", "paused", "draft"] = "active"
    kind: Literal["cross_sell", "upsell", "loyalty", "reengagement"]
    priority: Annotated[Whole, Field(ge=0, le=1000)] = 50
    trigger: Trigger
    audience: Condition | None = None
    offer: Offer
    schedule: Schedule = Field(default_factory=Schedule)
    frequency: Frequency = Field(default_factory=Frequency)
    experiment: Experiment
    sender: Sender | None = None
    # How long after an email (or a holdout decision) a purchase still counts as this
    # campaign's conversion; unset: the installation's CROSSSELL_ATTRIBUTION_WINDOW.
    attribution_window: Annotated[Duration, _longer_than_zero()] | None = None
    steps: list[Step] | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description="a sequence: the emails after entry, in order (none: one email)",
    )
    exit_when: list[ExitRule] = Field(
        default_factory=list, description="what ends a sequence early (an unsubscribe always does)"
    )
    reenter: Reenter = Field(
        default="after_exit",
        description="never, after_exit, or {after: 30d} (since the previous entry)",
    )
