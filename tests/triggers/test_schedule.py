"""Send windows, quiet hours, delays, expiry and time zones (including DST transitions)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.triggers.builders import compiled
from tests.triggers.reference import plan_send_time
from triggers.campaigns import WEEKDAYS, Schedule
from triggers.schedule import (
    DailyWindow,
    SendTime,
    campaign_window,
    next_allowed,
    plan_in_windows,
    quiet_hours_window,
    resolve_zone,
)

QUIET_FROM, QUIET_TO = time(21, 0), time(8, 0)
QUIET = quiet_hours_window(QUIET_FROM, QUIET_TO)
BUCHAREST = ZoneInfo("Europe/Bucharest")
NEW_YORK = ZoneInfo("America/New_York")
MON, TUE, WED, THU, FRI, SAT, SUN = range(7)

ZONES = [
    "Europe/Bucharest",
    "Europe/Rome",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "America/Santiago",  # DST changes at midnight
    "America/Havana",  # DST changes at midnight
    "Australia/Sydney",  # southern hemisphere
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Asia/Kathmandu",  # +05:45, no DST
    "Pacific/Chatham",  # +12:45/+13:45
    "Pacific/Apia",
    "UTC",
]

# Instants near the 2026 DST transitions of the zones above.
TRANSITIONS = [
    datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # US spring forward
    datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # EU spring forward
    datetime(2026, 4, 5, 2, 0, tzinfo=UTC),  # AU / Chile fall back
    datetime(2026, 9, 6, 4, 0, tzinfo=UTC),  # Chile spring forward
    datetime(2026, 9, 27, 2, 0, tzinfo=UTC),  # Chatham spring forward
    datetime(2026, 10, 3, 16, 0, tzinfo=UTC),  # AU spring forward
    datetime(2026, 10, 25, 1, 0, tzinfo=UTC),  # EU fall back
    datetime(2026, 11, 1, 6, 0, tzinfo=UTC),  # US / Cuba fall back
]


def schedule(**fields: Any) -> Schedule:
    return Schedule.model_validate(fields)


def local(zone: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone)


def in_daily_window(
    moment: datetime, zone: ZoneInfo, start: time, end: time, days: set[int]
) -> bool:
    """Independent reference: is ``moment`` inside the window, read on the local wall clock?"""
    wall = moment.astimezone(zone)
    clock = wall.time().replace(tzinfo=None)
    today = wall.weekday()
    if start < end:
        return today in days and start <= clock < end
    # Spans midnight: the evening belongs to today's window, the early hours to yesterday's.
    return (today in days and clock >= start) or ((today - 1) % 7 in days and clock < end)


def in_quiet_hours(moment: datetime, zone: ZoneInfo) -> bool:
    clock = moment.astimezone(zone).time()
    return clock >= QUIET_FROM or clock < QUIET_TO


# --- DailyWindow --------------------------------------------------------------------------


def test_a_moment_inside_the_window_is_kept() -> None:
    window = DailyWindow(time(9), time(19))
    moment = local(BUCHAREST, 2026, 11, 17, 12, 34)
    assert window.next_open(moment, BUCHAREST) == moment
    assert window.contains(moment, BUCHAREST)


def test_before_opening_moves_to_opening_the_same_day() -> None:
    window = DailyWindow(time(9), time(19))
    assert window.next_open(local(BUCHAREST, 2026, 11, 17, 6, 0), BUCHAREST) == local(
        BUCHAREST, 2026, 11, 17, 9, 0
    )


def test_the_closing_minute_is_outside_and_moves_to_the_next_day() -> None:
    window = DailyWindow(time(9), time(19))
    at_close = local(BUCHAREST, 2026, 11, 17, 19, 0)
    assert not window.contains(at_close, BUCHAREST)
    assert window.next_open(at_close, BUCHAREST) == local(BUCHAREST, 2026, 11, 18, 9, 0)
    assert window.contains(local(BUCHAREST, 2026, 11, 17, 9, 0), BUCHAREST)


def test_weekdays_are_respected() -> None:
    weekdays_only = DailyWindow(time(9), time(19), frozenset({MON, TUE, WED, THU, FRI}))
    friday_evening = local(BUCHAREST, 2026, 11, 20, 20, 0)
    assert friday_evening.weekday() == FRI
    assert weekdays_only.next_open(friday_evening, BUCHAREST) == local(
        BUCHAREST, 2026, 11, 23, 9, 0
    )


def test_weekdays_are_the_customers_local_weekdays() -> None:
    # Monday 02:00 UTC is still Sunday evening in New York.
    monday_only = DailyWindow(time(9), time(19), frozenset({MON}))
    moment = datetime(2026, 11, 16, 2, 0, tzinfo=UTC)
    assert moment.astimezone(NEW_YORK).weekday() == SUN
    assert monday_only.next_open(moment, NEW_YORK) == local(NEW_YORK, 2026, 11, 16, 9, 0)


def test_a_window_spanning_midnight() -> None:
    night = DailyWindow(time(22), time(6), frozenset({FRI}))
    friday_23 = local(BUCHAREST, 2026, 11, 20, 23, 0)
    saturday_05 = local(BUCHAREST, 2026, 11, 21, 5, 0)
    saturday_07 = local(BUCHAREST, 2026, 11, 21, 7, 0)
    assert night.contains(friday_23, BUCHAREST)
    assert night.contains(saturday_05, BUCHAREST)  # Friday's window, still open
    assert night.next_open(saturday_07, BUCHAREST) == local(BUCHAREST, 2026, 11, 27, 22, 0)


def test_quiet_hours_are_the_complementary_daily_window() -> None:
    quiet = quiet_hours_window(time(21), time(8))
    assert (quiet.start, quiet.end, quiet.weekdays) == (time(8), time(21), frozenset(range(7)))
    assert not quiet.contains(local(BUCHAREST, 2026, 11, 17, 3, 0), BUCHAREST)
    assert quiet.contains(local(BUCHAREST, 2026, 11, 17, 8, 0), BUCHAREST)
    assert not quiet.contains(local(BUCHAREST, 2026, 11, 17, 21, 0), BUCHAREST)


def test_quiet_hours_that_do_not_span_midnight() -> None:
    quiet = quiet_hours_window(time(1), time(5))  # quiet 01:00-05:00 only
    assert quiet.contains(local(BUCHAREST, 2026, 11, 17, 23, 0), BUCHAREST)
    assert quiet.next_open(local(BUCHAREST, 2026, 11, 17, 2, 0), BUCHAREST) == local(
        BUCHAREST, 2026, 11, 17, 5, 0
    )


def test_campaign_window_maps_day_names_to_weekday_numbers() -> None:
    window = campaign_window(
        schedule(window={"days": ["mon", "wed", "sun"], "from": "09:00", "to": "19:00"})
    )
    assert window == DailyWindow(time(9), time(19), frozenset({MON, WED, SUN}))
    assert campaign_window(schedule()) is None
    default_days = campaign_window(schedule(window={"from": "09:00", "to": "19:00"}))
    assert default_days is not None
    assert default_days.weekdays == frozenset(range(len(WEEKDAYS)))


def test_windows_that_never_overlap_are_an_error() -> None:
    late = DailyWindow(time(22), time(23))
    with pytest.raises(ValueError, match="never overlap"):
        next_allowed(local(BUCHAREST, 2026, 11, 17, 12, 0), [late, QUIET], BUCHAREST)


# --- DST --------------------------------------------------------------------------------------


def test_nine_oclock_stays_nine_oclock_across_spring_forward() -> None:
    window = DailyWindow(time(9), time(19), frozenset({MON, TUE, WED, THU, FRI}))
    saturday = local(BUCHAREST, 2026, 3, 28, 20, 0)  # DST starts Sunday 29 March
    opens = next_allowed(saturday, [window, QUIET], BUCHAREST)
    assert opens == local(BUCHAREST, 2026, 3, 30, 9, 0)
    # Winter time is UTC+2, summer time UTC+3: the same 09:00 is an hour earlier in UTC.
    assert saturday.utcoffset() == timedelta(hours=2)
    assert opens.astimezone(BUCHAREST).utcoffset() == timedelta(hours=3)
    assert opens.astimezone(UTC).time() == time(6, 0)


def test_quiet_hours_end_at_eight_local_across_fall_back() -> None:
    # US DST ends Sunday 1 November 2026 at 02:00; quiet hours still end at 08:00 local.
    night = local(NEW_YORK, 2026, 11, 1, 0, 30)
    opens = next_allowed(night, [QUIET], NEW_YORK)
    assert opens.astimezone(NEW_YORK).time() == QUIET_TO
    assert opens == local(NEW_YORK, 2026, 11, 1, 8, 0)
    assert opens - night == timedelta(hours=8, minutes=30)  # one hour more than the wall says


# --- plan_send_time -------------------------------------------------------------------------


def test_delay_is_added_to_the_trigger_time() -> None:
    triggered = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
    plan = plan_send_time(schedule(delay="2h"), triggered, triggered, ZoneInfo("UTC"), QUIET)
    assert plan.send_at == triggered + timedelta(hours=2)
    assert plan.expires_at == triggered + timedelta(hours=2) + timedelta(days=7)
    assert not plan.expired


def test_a_late_event_is_planned_from_now_not_in_the_past() -> None:
    triggered = datetime(2026, 11, 17, 9, 0, tzinfo=UTC)
    now = triggered + timedelta(hours=5)
    plan = plan_send_time(schedule(delay="2h"), triggered, now, ZoneInfo("UTC"), QUIET)
    assert plan.send_at == now


def test_quiet_hours_are_in_the_customers_time() -> None:
    triggered = datetime(2026, 11, 17, 7, 0, tzinfo=UTC)  # 02:00 in New York
    plan = plan_send_time(schedule(), triggered, triggered, NEW_YORK, QUIET)
    assert plan.send_at == local(NEW_YORK, 2026, 11, 17, 8, 0)
    # Without quiet hours it goes out at once.
    assert plan_send_time(schedule(), triggered, triggered, NEW_YORK, None).send_at == triggered


def test_expires_when_the_window_cannot_open_before_expire_after() -> None:
    triggered = local(BUCHAREST, 2026, 11, 17, 12, 0)  # a Tuesday
    sundays = schedule(window={"days": ["sun"], "from": "10:00", "to": "12:00"}, expire_after="1d")
    plan = plan_send_time(sundays, triggered, triggered, BUCHAREST, QUIET)
    assert plan.send_at == local(BUCHAREST, 2026, 11, 22, 10, 0)
    assert plan.expires_at == triggered + timedelta(days=1)
    assert plan.expired

    roomy = schedule(window={"days": ["sun"], "from": "10:00", "to": "12:00"}, expire_after="6d")
    assert not plan_send_time(roomy, triggered, triggered, BUCHAREST, QUIET).expired


def test_expiry_counts_from_trigger_plus_delay() -> None:
    triggered = datetime(2026, 11, 17, 12, 0, tzinfo=UTC)
    plan_schedule = schedule(delay="1d", expire_after="2d")
    just_in_time = triggered + timedelta(days=3)
    on_time = plan_send_time(plan_schedule, triggered, just_in_time, ZoneInfo("UTC"), QUIET)
    assert on_time.send_at == on_time.expires_at == just_in_time
    assert not on_time.expired
    late = plan_send_time(
        plan_schedule, triggered, just_in_time + timedelta(minutes=1), ZoneInfo("UTC"), QUIET
    )
    assert late.expired


@pytest.mark.parametrize(
    ("schedule_zone", "customer_zone", "expected"),
    [
        ("customer", "Europe/Rome", "Europe/Rome"),
        ("customer", None, "Europe/Bucharest"),
        ("customer", "Not/AZone", "Europe/Bucharest"),
        ("America/New_York", "Europe/Rome", "America/New_York"),
        ("Nowhere/Special", "Europe/Rome", "Europe/Bucharest"),
    ],
)
def test_resolve_zone(schedule_zone: str, customer_zone: str | None, expected: str) -> None:
    assert resolve_zone(schedule_zone, customer_zone, "Europe/Bucharest") == ZoneInfo(expected)


# --- property: the planned time is allowed, and the earliest allowed ------------------------

half_hours = st.builds(time, st.integers(0, 23), st.sampled_from([0, 30]))


@settings(max_examples=250, deadline=None, database=None)
@given(
    zone_name=st.sampled_from(ZONES),
    start=half_hours,
    end=half_hours,
    days=st.sets(st.sampled_from(WEEKDAYS), min_size=1),
    anchor=st.sampled_from(TRANSITIONS),
    offset_minutes=st.integers(-3 * 24 * 60, 3 * 24 * 60),
    delay_minutes=st.integers(0, 2 * 24 * 60),
    late_minutes=st.integers(0, 12 * 60),
)
def test_planned_send_is_inside_the_window_outside_quiet_hours_and_earliest(
    zone_name: str,
    start: time,
    end: time,
    days: set[str],
    anchor: datetime,
    offset_minutes: int,
    delay_minutes: int,
    late_minutes: int,
) -> None:
    assume(start != end)
    zone = ZoneInfo(zone_name)
    day_numbers = {WEEKDAYS.index(day) for day in days}
    # The window must share some local time with 08:00-21:00, or nothing can ever be sent.
    if start < end:
        assume(start < QUIET_FROM and end > QUIET_TO)
    else:
        assume(start < QUIET_FROM or end > QUIET_TO)

    plan_schedule = schedule(
        delay=f"{delay_minutes}m",
        window={
            "days": sorted(days, key=WEEKDAYS.index),
            "from": start.strftime("%H:%M"),
            "to": end.strftime("%H:%M"),
        },
        expire_after="30d",
    )
    triggered = anchor + timedelta(minutes=offset_minutes, seconds=17)
    now = triggered + timedelta(minutes=late_minutes)

    plan = plan_send_time(plan_schedule, triggered, now, zone, QUIET)

    def allowed(moment: datetime) -> bool:
        return in_daily_window(moment, zone, start, end, day_numbers) and not in_quiet_hours(
            moment, zone
        )

    ready = max(triggered + timedelta(minutes=delay_minutes), now)
    assert plan.send_at >= ready
    assert allowed(plan.send_at), plan.send_at.astimezone(zone)
    # Nothing allowed was skipped: every allowed stretch lasts at least 30 minutes, so a
    # 10-minute scan between "ready" and the planned time would have landed in one.
    probe = ready
    while probe < plan.send_at:
        assert not allowed(probe), (probe.astimezone(zone), plan.send_at.astimezone(zone))
        probe += timedelta(minutes=10)
    if plan.send_at > ready:
        assert not allowed(plan.send_at - timedelta(seconds=1))


@settings(max_examples=100, deadline=None, database=None)
@given(
    zone_name=st.sampled_from(ZONES),
    anchor=st.sampled_from(TRANSITIONS),
    offset_minutes=st.integers(-2 * 24 * 60, 2 * 24 * 60),
)
def test_without_a_campaign_window_only_quiet_hours_apply(
    zone_name: str, anchor: datetime, offset_minutes: int
) -> None:
    zone = ZoneInfo(zone_name)
    triggered = anchor + timedelta(minutes=offset_minutes)
    plan = plan_send_time(schedule(), triggered, triggered, zone, QUIET)
    assert not in_quiet_hours(plan.send_at, zone)
    if not in_quiet_hours(triggered, zone):
        assert plan.send_at == triggered
    else:
        assert plan.send_at.astimezone(zone).time() == QUIET_TO
        assert plan.send_at - triggered <= timedelta(hours=12)


# --- property: windows combined once per campaign plan exactly like the per-call path -------


def reference_plan(
    plan_schedule: Schedule,
    triggered: datetime,
    now: datetime,
    zone: ZoneInfo,
    quiet: DailyWindow | None,
) -> SendTime:
    """The planning as it was before windows were precomputed: every window, every call."""
    ready = max(triggered + plan_schedule.delay, now)
    windows = [w for w in (campaign_window(plan_schedule), quiet) if w is not None]
    send_at = next_allowed(ready, windows, zone) if windows else ready
    return SendTime(send_at, triggered + plan_schedule.delay + plan_schedule.expire_after)


def outcome(plan: Any) -> object:
    """A plan as comparable text (the zone an instant is expressed in included), or the error."""
    try:
        result = plan()
    except ValueError as error:
        return f"error: {error}"
    return (result.send_at.isoformat(), result.expires_at.isoformat())


@settings(max_examples=300, deadline=None, database=None)
@given(
    zone_name=st.sampled_from(ZONES),
    window=st.none() | st.tuples(half_hours, half_hours),
    days=st.sets(st.sampled_from(WEEKDAYS), min_size=1),
    quiet=st.sampled_from(
        [None, QUIET, quiet_hours_window(time(20), time(9)), quiet_hours_window(time(2), time(5))]
    ),
    anchor=st.sampled_from(TRANSITIONS),
    offset_minutes=st.integers(-3 * 24 * 60, 3 * 24 * 60),
    delay_minutes=st.integers(0, 2 * 24 * 60),
    late_minutes=st.integers(0, 12 * 60),
    written_in=st.sampled_from([UTC, timezone(timedelta(hours=2)), NEW_YORK]),
)
def test_precomputed_send_windows_plan_the_same_time_as_the_per_call_path(
    zone_name: str,
    window: tuple[time, time] | None,
    days: set[str],
    quiet: DailyWindow | None,
    anchor: datetime,
    offset_minutes: int,
    delay_minutes: int,
    late_minutes: int,
    written_in: tzinfo,
) -> None:
    fields: dict[str, Any] = {"delay": f"{delay_minutes}m", "expire_after": "3d"}
    if window is not None:
        assume(window[0] != window[1])
        fields["window"] = {
            "days": sorted(days, key=WEEKDAYS.index),
            "from": window[0].strftime("%H:%M"),
            "to": window[1].strftime("%H:%M"),
        }
    campaign = compiled("planned", schedule=fields)
    plan_schedule = campaign.campaign.schedule
    zone = ZoneInfo(zone_name)
    # The trigger keeps the offset it was written with, the clock is UTC: the plan must
    # come out in the same zones as on the per-call path, not just at the same instants.
    triggered = (anchor + timedelta(minutes=offset_minutes, seconds=17)).astimezone(written_in)
    now = (triggered + timedelta(minutes=late_minutes)).astimezone(UTC)

    expected = outcome(lambda: reference_plan(plan_schedule, triggered, now, zone, quiet))
    windows = campaign.send_windows(quiet)
    assert campaign.send_windows(quiet) is windows  # computed once per quiet setting
    assert outcome(lambda: plan_in_windows(plan_schedule, windows, triggered, now, zone)) == (
        expected
    )
    assert outcome(lambda: plan_send_time(plan_schedule, triggered, now, zone, quiet)) == expected


# --- DST gaps and folds: wall-clock membership, against a minute-by-minute reference -------


def test_a_window_starting_inside_a_gap_opens_when_the_gap_ends() -> None:
    # 8 March 2026 in New York: 02:00 EST is followed by 03:00 EDT, 02:30 never shows.
    window = schedule(window={"from": "02:30", "to": "03:30"})
    start = local(NEW_YORK, 2026, 3, 8, 0, 0)
    plan = plan_send_time(window, start, start, NEW_YORK, None)
    assert plan.send_at == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert plan.send_at.astimezone(NEW_YORK).isoformat() == "2026-03-08T03:00:00-04:00"


def test_the_precomputed_windows_of_a_compiled_campaign_open_when_the_gap_ends() -> None:
    campaign = compiled("gap", schedule={"window": {"from": "02:30", "to": "03:30"}})
    start = local(NEW_YORK, 2026, 3, 8, 0, 0)
    windows = campaign.send_windows(None)
    plan = plan_in_windows(campaign.campaign.schedule, windows, start, start, NEW_YORK)
    assert plan.send_at.astimezone(NEW_YORK).isoformat() == "2026-03-08T03:00:00-04:00"


def test_quiet_hours_ending_inside_a_gap_end_with_the_gap_not_an_hour_later() -> None:
    quiet = quiet_hours_window(time(22), time(2, 30))  # sending allowed 02:30-22:00
    start = local(NEW_YORK, 2026, 3, 8, 1, 0)
    opens = next_allowed(start, [quiet], NEW_YORK)
    assert opens.astimezone(NEW_YORK).isoformat() == "2026-03-08T03:00:00-04:00"


def test_a_window_ending_inside_a_gap_closes_when_the_gap_starts() -> None:
    window = DailyWindow(time(1, 0), time(2, 30))
    # 01:59 EST is inside; the next instant on the clock is 03:00 EDT, which is not.
    assert window.contains(datetime(2026, 3, 8, 6, 59, tzinfo=UTC), NEW_YORK)
    assert not window.contains(datetime(2026, 3, 8, 7, 0, tzinfo=UTC), NEW_YORK)


def test_both_passes_of_a_repeated_hour_count() -> None:
    # 1 November 2026 in New York: 01:00-02:00 shows twice, first EDT then EST.
    window = DailyWindow(time(1, 30), time(2, 0))
    first = window.next_open(local(NEW_YORK, 2026, 11, 1, 0, 0), NEW_YORK)
    assert first == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT
    second = window.next_open(first + timedelta(minutes=30), NEW_YORK)
    assert second == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST
    # Between them the clock shows 01:00-01:29 (EST): outside the window.
    assert not window.contains(datetime(2026, 11, 1, 6, 15, tzinfo=UTC), NEW_YORK)


def transitions(zone: ZoneInfo, year: int) -> list[datetime]:
    """Every UTC instant in ``year`` at which ``zone`` changes its offset, to the minute.

    Found by reading the offset hour by hour, then minute by minute inside the hour that
    changed: independent of the code under test.
    """
    found: list[datetime] = []
    moment = datetime(year, 1, 1, tzinfo=UTC)
    while moment.year == year:
        following = moment + timedelta(hours=1)
        if moment.astimezone(zone).utcoffset() != following.astimezone(zone).utcoffset():
            minute = moment
            while minute.astimezone(zone).utcoffset() == moment.astimezone(zone).utcoffset():
                minute += timedelta(minutes=1)
            found.append(minute)
        moment = following
    return found


DST_ZONES = [
    ("America/New_York", 2026),
    ("Europe/Bucharest", 2026),
    ("Australia/Lord_Howe", 2026),  # 30-minute shift at 02:00
    ("America/Santiago", 2026),  # changes at midnight
    ("America/Havana", 2026),  # spring forward at midnight
    ("Asia/Beirut", 2026),  # changes at midnight
    ("America/Asuncion", 2024),  # midnight changes (DST abolished after 2024)
    ("Pacific/Chatham", 2026),  # +12:45/+13:45
]
ZONE_TRANSITIONS = [
    (name, instant) for name, year in DST_ZONES for instant in transitions(ZoneInfo(name), year)
]
quarter_hours = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))


def test_every_zone_in_the_dst_property_has_a_gap_and_a_fold() -> None:
    def offset(moment: datetime, name: str) -> timedelta:
        return moment.astimezone(ZoneInfo(name)).utcoffset() or timedelta(0)

    for name, _year in DST_ZONES:
        forward = [
            offset(at, name) > offset(at - timedelta(minutes=1), name)
            for zone_name, at in ZONE_TRANSITIONS
            if zone_name == name
        ]
        assert True in forward and False in forward, name  # a gap and a fold


def first_allowed_minute(
    moment: datetime,
    zone: ZoneInfo,
    windows: list[tuple[time, time, set[int]]],
    limit: timedelta,
) -> datetime | None:
    """Brute force: walk UTC minute by minute, reading the wall clock at each."""
    probe = moment
    while probe - moment <= limit:
        if all(in_daily_window(probe, zone, *window) for window in windows):
            return probe
        probe += timedelta(minutes=1)
    return None


@settings(max_examples=250, deadline=None, database=None)
@given(
    zone_and_transition=st.sampled_from(ZONE_TRANSITIONS),
    start=quarter_hours,
    end=quarter_hours,
    days=st.sets(st.integers(0, 6), min_size=5),
    quiet=st.none() | st.tuples(quarter_hours, quarter_hours),
    before_minutes=st.integers(0, 30 * 60),
)
def test_windows_around_transitions_open_at_the_first_allowed_minute(
    zone_and_transition: tuple[str, datetime],
    start: time,
    end: time,
    days: set[int],
    quiet: tuple[time, time] | None,
    before_minutes: int,
) -> None:
    assume(start != end)
    name, transition = zone_and_transition
    zone = ZoneInfo(name)
    moment = transition - timedelta(minutes=before_minutes)
    windows = [DailyWindow(start, end, frozenset(days))]
    reference = [(start, end, days)]
    if quiet is not None:
        assume(quiet[0] != quiet[1])
        windows.append(quiet_hours_window(*quiet))
        reference.append((quiet[1], quiet[0], set(range(7))))
    limit = timedelta(days=3)
    expected = first_allowed_minute(moment, zone, reference, limit)
    try:
        found = next_allowed(moment, windows, zone)
    except ValueError:
        assert expected is None
        return
    if expected is None:
        assert found - moment > limit
    else:
        assert found == expected, (found.astimezone(zone), expected.astimezone(zone))


def test_a_window_open_before_a_fold_is_open_during_it_even_when_the_next_day_overlaps() -> None:
    """Pacific/Chatham falls back at 03:45 -> 02:45 on Sunday 2026-04-05 (14:00 UTC). A
    window 03:15-03:00 (over midnight) on Saturday and Sunday: a minute before the fold
    the clock shows 03:44, inside Sunday's window, while Saturday's window comes back at
    02:45 (the repeated hour). Open now, not at the fold (found by the minute-by-minute
    property test)."""
    zone = ZoneInfo("Pacific/Chatham")
    window = DailyWindow(time(3, 15), time(3, 0), frozenset({0, 1, 2, 3, 5, 6}))
    moment = datetime(2026, 4, 4, 13, 59, tzinfo=UTC)
    assert moment.astimezone(zone).strftime("%a %H:%M") == "Sun 03:44"
    assert window.next_open(moment, zone) == moment
