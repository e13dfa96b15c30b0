"""What the engine decided for one campaign and one event (shared by loader and engine)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

Outcome = Literal["planned", "held_out", "skipped", "not_matched", "enrolled"]


class SkipReason(StrEnum):
    """Why an email was not sent (or not yet), as stored in ``sends.reason``.

    A ``StrEnum``: each member *is* its string (``SkipReason.COOLDOWN == "cooldown"``), so
    rows written before the enum existed, metrics labels and reports keep their values.
    Every member is listed, with its meaning, in one table in docs/campaigns.md.
    """

    # Not matched: the campaign did not apply to the event.
    TRIGGER_CONDITIONS = "trigger_conditions"
    AUDIENCE = "audience"
    # Consent and standing of the customer (the engine's own rules, never switched off).
    NO_EMAIL = "no_email"
    NO_CONSENT = "no_consent"
    SUPPRESSED = "suppressed"
    OPTED_OUT = "opted_out"
    # Frequency: the campaign's own limits, then the global ones.
    ONCE_PER_CUSTOMER = "once_per_customer"
    COOLDOWN = "cooldown"
    MAX_SENDS = "max_sends"
    FREQUENCY_CAP = "frequency_cap"
    MIN_GAP = "min_gap"
    # Competition and timing.
    LOWER_PRIORITY = "lower_priority"
    EXPIRED = "expired"
    HOLDOUT = "holdout"
    ALREADY_PLANNED = "already_planned"
    # Sequences (campaigns with steps, triggers/sequences.py).
    ALREADY_ENROLLED = "already_enrolled"
    SEQUENCE_EXITED = "sequence_exited"
    STEP_CONDITION = "step_condition"
    STEP_REMOVED = "step_removed"
    # Planned, but later than asked (the send still goes).
    DEFERRED_BY_CAP = "deferred_by_cap"
    DEFERRED_BY_GAP = "deferred_by_gap"
    OUTSIDE_WINDOW = "outside_window"
    RATE_LIMITED = "rate_limited"
    RETRY = "retry"
    # At sending: the campaign, the offer, the message.
    CAMPAIGN_INACTIVE = "campaign_inactive"
    OUT_OF_STOCK = "out_of_stock"
    NO_OFFER = "no_offer"
    RENDER_ERROR = "render_error"
    UNSUPPORTED_ADDRESS = "unsupported_address"
    # Delivery failures (status ``failed``).
    RETRIES_EXHAUSTED = "retries_exhausted"
    CLAIMS_EXHAUSTED = "claims_exhausted"
    HARD_BOUNCE = "hard_bounce"
    REJECTED = "rejected"
    POLICY_REJECTED = "policy_rejected"
    AMBIGUOUS = "ambiguous"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class Decision:
    campaign_id: str
    outcome: Outcome
    reason: str | None = None
    variant: str | None = None
    template: str | None = None
    send_at: datetime | None = None
    expires_at: datetime | None = None
    dedupe_key: str | None = None


# The generated __init__ of a frozen dataclass stores each field through
# object.__setattr__, a generic attribute lookup per field: about 1 µs per Decision.
# ``skipped`` sets the slots through their descriptors directly, about twice as fast;
# the engine makes one per matched campaign that loses, several per event.
_FIELDS = (
    "campaign_id",
    "outcome",
    "reason",
    "variant",
    "template",
    "send_at",
    "expires_at",
    "dedupe_key",
)
if Decision.__slots__ != _FIELDS:
    raise TypeError("Decision's fields changed: update triggers.outcomes.skipped")
_Setter = Callable[[Decision, object], None]
_SETTERS: tuple[_Setter, ...] = tuple(getattr(Decision, name).__set__ for name in _FIELDS)
_set_id, _set_outcome, _set_reason, _set_variant, _set_template, _set_send, _set_expires = _SETTERS[
    :7
]
_set_key = _SETTERS[7]
_new = object.__new__


def skipped(campaign_id: str, reason: str, dedupe_key: str) -> Decision:
    """``Decision(campaign_id, "skipped", reason, dedupe_key=dedupe_key)``, equal in every way."""
    decision: Decision = _new(Decision)
    _set_id(decision, campaign_id)
    _set_outcome(decision, "skipped")
    _set_reason(decision, reason)
    _set_variant(decision, None)
    _set_template(decision, None)
    _set_send(decision, None)
    _set_expires(decision, None)
    _set_key(decision, dedupe_key)
    return decision
