"""When a planned email may go out: delay, send window, quiet hours, time zone, expiry.

All arithmetic is done on aware datetimes: windows are laid out in the customer's local
time (so 09:00 stays 09:00 across a DST change) and compared in UTC.

An instant is inside a window when the customer's wall clock shows a time inside it, on
one of the window's days. What that means on the two days a year the clock jumps:

* spring forward (a gap: 02:00-03:00 never shows in New York on 8 March 2026): a window or
  quiet-hours bound inside the gap takes effect at the first instant after the gap, when
  the clock shows 03:00; ``02:30-03:30`` is open 03:00-03:30 that day. A window that lies
  entirely inside the gap is not open that day.
* fall back (a fold: 01:00-02:00 shows twice): both occurrences count, since the clock
  shows the same time twice; quiet hours ``01:00-06:00`` are quiet through both, and a
  window ``01:30-02:00`` is open during each of its two half hours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from triggers.campaigns import WEEKDAYS, Schedule

ALL_DAYS = frozenset(range(7))
# The day offsets next_open looks at, made once: a timedelta per step is measurable.
_FROM_PREVIOUS_DAY = tuple(timedelta(days=offset) for offset in range(-1, 9))
_FROM_SAME_DAY = _FROM_PREVIOUS_DAY[1:]


@dataclass(frozen=True, slots=True)
class DailyWindow:
    """Allowed hours on the given weekdays (0 = Monday); ``start > end`` spans midnight."""

    start: time
    end: time
    weekdays: frozenset[int] = ALL_DAYS

    def next_open(self, moment: datetime, zone: ZoneInfo) -> datetime:
        """The earliest instant at or after ``moment`` that lies inside this window."""
        local_day = moment.astimezone(zone).date()
        start, end, weekdays = self.start, self.end, self.weekdays
        found: datetime | None = None
        # Only a window that spans midnight can still be open from the previous day.
        for offset in _FROM_PREVIOUS_DAY if start > end else _FROM_SAME_DAY:
            day = local_day + offset
            if day.weekday() not in weekdays:
                if found is not None:
                    return found
                continue
            for opens, closes in _window_spans(start, end, day, zone):
                if closes > moment:
                    candidate = max(moment, opens)
                    if found is not None:
                        # A fold can make one day's window end after the next one opens
                        # (the clock shows the overlap twice): the earlier of the two.
                        return min(found, candidate)
                    if candidate == moment:
                        return moment
                    found = candidate
                    break
            else:
                if found is not None:
                    return found
        if found is not None:
            return found
        raise ValueError("the window never opens")

    def contains(self, moment: datetime, zone: ZoneInfo) -> bool:
        return self.next_open(moment, zone) == moment


@lru_cache(maxsize=16384)
def _window_spans(
    start: time, end: time, day: date, zone: ZoneInfo
) -> tuple[tuple[datetime, datetime], ...]:
    """The UTC spans ``[opens, closes)`` during which the wall clock in ``zone`` shows a time
    of the window that opens on ``day``; sorted, usually one, none when it lies in a gap,
    two when a fold repeats part of it (cached: zone math is slow).

    The wall clock (UTC plus the zone's offset) rises steadily except at a transition, so
    the spans can only begin or end where the clock shows a bound (each bound's one or two
    instants: ``fold`` 0 and 1) or at the transition next to a bound that a jump skips or
    repeats. Between two such instants the clock is inside the window or outside it
    throughout; the instant each piece starts at says which.
    """
    first = datetime.combine(day, start)
    last = datetime.combine(day if start < end else day + timedelta(days=1), end)
    points: set[datetime] = set()
    for wall in (first, last):
        early = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        late = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
        points |= {early, late}
        if early != late:  # the bound is skipped (gap) or repeated (fold)
            points.add(_transition(min(early, late), max(early, late), zone))
    ordered = sorted(points)
    spans: list[tuple[datetime, datetime]] = []
    for opens, closes in pairwise(ordered):
        if not first <= opens.astimezone(zone).replace(tzinfo=None) < last:
            continue
        if spans and spans[-1][1] == opens:
            spans[-1] = (spans[-1][0], closes)
        else:
            spans.append((opens, closes))
    return tuple(spans)


def _transition(after: datetime, until: datetime, zone: ZoneInfo) -> datetime:
    """The instant in ``(after, until]`` (UTC, at most a day apart, one transition between
    them) from which ``zone`` uses ``until``'s offset: the first instant after a gap, or
    the first instant of a fold's second pass. Transitions fall on whole seconds."""
    offset = until.astimezone(zone).utcoffset()
    low, high = 0, int((until - after).total_seconds())  # offset differs at low, holds at high
    while high - low > 1:
        middle = (low + high) // 2
        if (after + timedelta(seconds=middle)).astimezone(zone).utcoffset() == offset:
            high = middle
        else:
            low = middle
    return after + timedelta(seconds=high)


def quiet_hours_window(quiet_from: time, quiet_to: time) -> DailyWindow:
    """Quiet hours 21:00-08:00 are the daily window 08:00-21:00, every day."""
    return DailyWindow(start=quiet_to, end=quiet_from)


def campaign_window(schedule: Schedule) -> DailyWindow | None:
    if schedule.window is None:
        return None
    weekdays = frozenset(WEEKDAYS.index(day) for day in schedule.window.days)
    return DailyWindow(schedule.window.from_, schedule.window.to, weekdays)


@lru_cache(maxsize=1024)
def combined(windows: tuple[DailyWindow, ...]) -> tuple[DailyWindow, ...]:
    """Windows that do not span midnight intersect into one: [latest start, earliest end)
    on the days they share. Spanning ones are kept apart and solved by iteration."""
    simple = [w for w in windows if w.start < w.end]
    if len(simple) < 2:
        return windows
    start = max(w.start for w in simple)
    end = min(w.end for w in simple)
    days = frozenset.intersection(*(w.weekdays for w in simple))
    if start >= end or not days:
        return windows  # they never overlap: next_allowed says so
    rest = tuple(w for w in windows if not w.start < w.end)
    return (DailyWindow(start, end, days), *rest)


def next_allowed(moment: datetime, windows: Sequence[DailyWindow], zone: ZoneInfo) -> datetime:
    """Earliest instant at or after ``moment`` inside every window at once."""
    return _next_in_combined(moment, combined(tuple(windows)), zone)


def _next_in_combined(
    moment: datetime, windows: tuple[DailyWindow, ...], zone: ZoneInfo
) -> datetime:
    """``next_allowed`` for windows that have already been through ``combined``."""
    if len(windows) == 1:
        return windows[0].next_open(moment.astimezone(UTC), zone)
    current = moment
    for _ in range(64):
        moved = current
        for window in windows:
            moved = window.next_open(moved, zone)
        if moved == current:
            return current
        current = moved
    raise ValueError("the send window and quiet hours never overlap")


@lru_cache(maxsize=1024)
def resolve_zone(schedule_timezone: str, customer_timezone: str | None, fallback: str) -> ZoneInfo:
    """The zone a schedule is laid out in: the customer's, a fixed one, or the fallback.

    Cached: a few distinct zone names recur on every event, and ``ZoneInfo(name)`` (its
    own cache included) costs more than the lookup.
    """
    name = schedule_timezone
    if schedule_timezone == "customer":
        name = customer_timezone or fallback
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(fallback)


@dataclass(frozen=True, slots=True)
class SendTime:
    send_at: datetime
    expires_at: datetime

    @property
    def expired(self) -> bool:
        return self.send_at > self.expires_at


def send_windows(window: DailyWindow | None, quiet: DailyWindow | None) -> tuple[DailyWindow, ...]:
    """The windows a send must fall in (campaign window, quiet hours), already combined.

    Depends only on the campaign and the policy, so the engine computes it once per
    campaign (``CompiledCampaign.send_windows``) instead of once per decision.
    """
    return combined(tuple(w for w in (window, quiet) if w is not None))


def plan_in_windows(
    schedule: Schedule,
    windows: tuple[DailyWindow, ...],
    triggered_at: datetime,
    now: datetime,
    zone: ZoneInfo,
) -> SendTime:
    """Delay from the trigger, then the first instant inside ``windows`` (the schedule's
    ``send_windows``, combined once per campaign); expired past ``expire_after``."""
    delay = schedule.delay
    ready = max(triggered_at + delay, now)
    send_at = _next_in_combined(ready, windows, zone) if windows else ready
    return SendTime(send_at, triggered_at + delay + schedule.expire_after)
