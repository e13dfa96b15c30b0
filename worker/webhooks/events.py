"""The provider-independent shape of a delivery webhook, and the errors of parsing one.

Every provider module turns its own payload into :class:`TrackingEvent` values, so
:func:`worker.webhooks.apply.apply_events` never needs to know who sent them (as
django-anymail's provider-neutral tracking events do).

    WebhookError
    ├── WebhookRejected      not authenticated (credentials, signature, stale timestamp,
    │                        untrusted certificate): answer 401/403, apply nothing
    └── WebhookPayloadError  authenticated but not understood: answer 400 and log it,
                             it is a provider change or a misrouted webhook

A missing secret in *our* configuration is a ``ValueError`` of its own, not a webhook
error: the sender is not at fault and should retry once the operator fixes it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

EventKind = Literal[
    "delivered", "bounced", "deferred", "complained", "unsubscribed", "rejected", "other"
]
BounceType = Literal["hard", "soft"]

MAX_EMAIL_LENGTH = 320  # the width of every email column (RFC 5321 limits)

# RFC 3463 enhanced status code, e.g. "5.1.1" or "5.7.26", anywhere in an MTA reply.
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")


class WebhookError(Exception):
    """Base of every error raised while reading a provider's webhook request."""


class WebhookRejected(WebhookError):
    """The request could not be authenticated; nothing in it may be trusted or applied."""


class WebhookPayloadError(WebhookError):
    """The request was authentic but its body is not a payload this module understands."""


@dataclass(frozen=True, slots=True)
class TrackingEvent:
    """One thing that happened to one recipient of one message, in neutral terms.

    ``event_id`` is stable across the provider's retries of the same event, so it is the
    de-duplication key together with ``provider``. ``message_id`` is the RFC 5322
    ``Message-ID`` (always in angle brackets, as :class:`worker.core.models.Send` stores it);
    ``provider_message_id`` is the id the provider's send API returned. ``policy`` marks a
    5.7.x refusal (DMARC, reputation, blocklists): the operator must act, the customer's
    address is fine, so it is never suppressed for it (docs/delivery.md, "Retries,
    permanent failures and suppression").
    """

    provider: str
    event_id: str
    kind: EventKind
    recipient: str | None
    timestamp: datetime | None
    bounce_type: BounceType | None = None
    message_id: str | None = None
    provider_message_id: str | None = None
    description: str | None = None
    policy: bool = False
    # More de-duplication keys, each recorded too: the event is a duplicate when any of
    # its keys was seen (Mailgun: the signature's token and the event's own id).
    also_ids: tuple[str, ...] = ()


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A request header by name, whatever case the mapping (or the client) used."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, found in headers.items():
        if key.lower() == wanted:
            return found
    return None


def load_json(body: bytes, error: type[WebhookError] = WebhookPayloadError) -> Any:
    """The decoded JSON body, or ``error`` (callers that need the body to authenticate
    pass :class:`WebhookRejected`: an unreadable body cannot prove where it came from).

    Invalid UTF-8, invalid JSON and JSON nested deeper than the decoder's recursion
    limit (``[[[[…]]]]`` 100,000 deep raises ``RecursionError`` in :func:`json.loads`)
    are all the sender's fault, so all are ``error``, never a 500.
    """
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"body is not UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        raise error("body is JSON nested too deeply") from exc


def fingerprint(payload: object) -> str:
    """A stable id for a payload that carries none: retries resend identical JSON."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def json_text(payload: object, field: str) -> str | None:
    """``payload[field]`` when ``payload`` is a JSON object and that value a non-empty
    string (an id in a provider's answer or event), else None."""
    value = payload.get(field) if isinstance(payload, dict) else None
    return value if isinstance(value, str) and value else None


def normalize_email(value: object) -> str | None:
    """Addresses compare case-insensitively here, as the suppression list stores them."""
    if not isinstance(value, str) or "@" not in value:
        return None
    address = value.strip().lower()
    return address if len(address) <= MAX_EMAIL_LENGTH else None


def normalize_message_id(value: object) -> str | None:
    """``<id@host>`` whether or not the provider kept the angle brackets."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if not text.startswith("<"):
        text = f"<{text}>"
    return text


def enhanced_status(*texts: object) -> str | None:
    """The first RFC 3463 status code found in the given MTA texts, if any."""
    for text in texts:
        if isinstance(text, str):
            match = _ENHANCED.search(text)
            if match:
                return ".".join(match.groups())
    return None


def is_policy_status(status: str | None) -> bool:
    """5.7.x is a security or policy refusal (RFC 3463): the sender, not the address."""
    return status is not None and status.startswith("5.7.")


def from_epoch(value: object) -> datetime | None:
    """An aware UTC datetime from seconds since the epoch (int, float or digits)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


def from_iso(value: object) -> datetime | None:
    """An aware UTC datetime from ISO 8601 text, tolerating ``Z`` and 7-digit fractions."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    # .NET (Postmark) writes 7 fractional digits; Python reads at most 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def text_or_none(value: object, limit: int = 1000) -> str | None:
    """Descriptions are for people; keep them short and drop what is not text."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:limit]
