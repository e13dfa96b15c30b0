"""Durations (``90m``, ``2d``, ``1w``) and times of day (``"09:00"``) as marketers write them."""

from __future__ import annotations

from datetime import time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triggers.durations import MAX_DURATION, parse_duration, parse_time_of_day


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", timedelta(minutes=90)),
        ("12h", timedelta(hours=12)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("45s", timedelta(seconds=45)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        ("300d", timedelta(days=300)),
        (" 2d ", timedelta(days=2)),
        ("0", timedelta(0)),
        ("0m", timedelta(0)),
        ("0d0h", timedelta(0)),
    ],
)
def test_valid_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "2",
        "00",
        "d",
        "2 days",
        "2 d",
        "1.5h",
        "-1d",
        "+1d",
        "2D",
        "1d1w",
        "3m2h",
        "1y",
        "2dd",
    ],
)
def test_invalid_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration") as caught:
        parse_duration(text)
    assert "e.g." in str(caught.value)


@settings(max_examples=80, deadline=None, database=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            unit: st.integers(min_value=0, max_value=400) for unit in ("w", "d", "h", "m", "s")
        },
    ).filter(bool)
)
def test_any_combination_in_unit_order_adds_up(parts: dict[str, int]) -> None:
    order = ("w", "d", "h", "m", "s")
    text = "".join(f"{parts[unit]}{unit}" for unit in order if unit in parts)
    expected = timedelta(
        weeks=parts.get("w", 0),
        days=parts.get("d", 0),
        hours=parts.get("h", 0),
        minutes=parts.get("m", 0),
        seconds=parts.get("s", 0),
    )
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:00", time(0, 0)),
        ("09:00", time(9, 0)),
        ("08:30", time(8, 30)),
        ("19:59", time(19, 59)),
        ("23:59", time(23, 59)),
        (" 22:00 ", time(22, 0)),
    ],
)
def test_valid_times_of_day(text: str, expected: time) -> None:
    assert parse_time_of_day(text) == expected


@pytest.mark.parametrize(
    "text", ["9:00", "24:00", "12:60", "0900", "09:00:00", "9am", "", "09.00", "-1:00", "09:0"]
)
def test_invalid_times_of_day_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="bad time") as caught:
        parse_time_of_day(text)
    assert "HH:MM" in str(caught.value)


@settings(max_examples=60, deadline=None, database=None)
@given(st.times().map(lambda moment: moment.replace(second=0, microsecond=0)))
def test_every_minute_of_the_day_round_trips(moment: time) -> None:
    assert parse_time_of_day(moment.strftime("%H:%M")) == moment


@pytest.mark.parametrize(
    ("text", "days"),
    [("36525d", 36_525), ("5217w", 36_519), ("876600h", 36_525), ("52596000m", 36_525)],
)
def test_a_hundred_years_is_the_longest_duration(text: str, days: int) -> None:
    assert parse_duration(text) == timedelta(days=days)
    assert parse_duration(text) <= MAX_DURATION


@pytest.mark.parametrize(
    "text",
    [
        "36526d",
        "5218w",
        "36525d1s",
        "876601h",
        "99999999999d",  # timedelta raised OverflowError here, which lint did not catch
        "100000000000000000000m",
        "9" * 30 + "s",
    ],
)
def test_a_duration_over_a_hundred_years_is_refused_as_a_value_error(text: str) -> None:
    """Not an ``OverflowError`` (a traceback from lint, every command that loads the
    rules, and a reload without file:line:col) nor a date beyond year 9999 when the
    engine adds it to an event's time (every matching event dead-lettered)."""
    with pytest.raises(ValueError, match="longer than 36525 days") as caught:
        parse_duration(text)
    assert len(str(caught.value)) < 120


def test_a_duration_text_is_quoted_short_in_its_error() -> None:
    with pytest.raises(ValueError, match="bad duration") as caught:
        parse_duration("1" * 100_000 + "x")
    assert len(str(caught.value)) < 150
