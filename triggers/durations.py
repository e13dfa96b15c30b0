"""Durations and times of day as marketers write them: ``90m``, ``2d``, ``1w``, ``"09:00"``."""

from __future__ import annotations

import re
from datetime import time, timedelta

_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_duration(text: str) -> timedelta:
    """Parse ``1w2d3h4m5s`` (any subset, in that order; ``0`` or ``0m`` for none)."""
    value = text.strip()
    if value == "0":
        return timedelta(0)
    match = _DURATION.match(value)
    if not value or match is None or not any(match.groups()):
        raise ValueError(
            f"bad duration {text!r}: write a number with a unit, e.g. 90m, 12h, 2d, 1w"
        )
    weeks, days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_time_of_day(text: str) -> time:
    """Parse a 24-hour ``HH:MM`` time of day."""
    match = _TIME_OF_DAY.match(text.strip())
    if match is None:
        raise ValueError(f"bad time {text!r}: write a 24-hour time as HH:MM, e.g. 09:00")
    return time(int(match.group(1)), int(match.group(2)))
