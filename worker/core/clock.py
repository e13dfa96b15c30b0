"""The shell's source of time; the decision core never reads a clock itself.

``ShiftedClock`` runs at real speed from a chosen instant: the demo uses it so that its
emails fall inside send windows whatever the hour at which someone runs it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ShiftedClock:
    def __init__(self, start: datetime) -> None:
        self._offset: timedelta = start - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset
