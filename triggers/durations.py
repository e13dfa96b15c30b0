"""Durations and times of day as marketers write them: ``90m``, ``2d``, ``1w``, ``"09:00"``."""

from __future__ import annotations

import re
from datetime import time, timedelta

_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
# The longest duration anything takes: 100 years (36,525 days). A cooldown or window
# beyond it is a typo; and an event of the year 9000 (the latest one accepted,
# ``triggers.events.LATEST_OCCURRED_AT``) plus it stays a date Python can hold (9999).
MAX_DURATION = timedelta(days=36_525)
_UNIT_SECONDS = (7 * 86_400, 86_400, 3_600, 60, 1)


def parse_duration(text: str) -> timedelta:
    """Parse ``1w2d3h4m5s`` (any subset, in that order; ``0`` or ``0m`` for none).

    Raises ``ValueError`` for anything else, and for a duration over
    :data:`MAX_DURATION` (checked on whole numbers first: ``99999999999d`` is refused
    with the others, not an ``OverflowError`` of ``timedelta``)."""
    value = text.strip()
    shown = repr(value if len(value) <= 40 else value[:40] + "…")
    if value == "0":
        return timedelta(0)
    match = _DURATION.match(value[:41])
    if not value or len(value) > 40 or match is None or not any(match.groups()):
        raise ValueError(f"bad duration {shown}: write a number with a unit, e.g. 90m, 12h, 2d, 1w")
    amounts = [int(group or 0) for group in match.groups()]
    total = sum(amount * unit for amount, unit in zip(amounts, _UNIT_SECONDS, strict=True))
    if total > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {shown} is longer than {MAX_DURATION.days} days (100 years)")
    return timedelta(seconds=total)


def parse_time_of_day(text: str) -> time:
    """Parse a 24-hour ``HH:MM`` time of day."""
    match = _TIME_OF_DAY.match(text.strip())
    if match is None:
        raise ValueError(f"bad time {text!r}: write a 24-hour time as HH:MM, e.g. 09:00")
    return time(int(match.group(1)), int(match.group(2)))
