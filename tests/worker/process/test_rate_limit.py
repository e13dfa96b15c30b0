"""The shared send rate, on the real Redis and on both databases."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.services import require_redis
from worker.process.rate_limit import (
    DatabaseRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    Reservation,
)

# 10/s: a reservation on a loaded machine's PostgreSQL can take 50 ms, and the spacing
# test needs calls quicker than the interval to queue slots.
RATE, BURST, MAX_WAIT = 10, 3, 1.0
INTERVAL = 1 / RATE  # seconds between slots
CLOCK = 0.002  # seconds: rounding of the stores' clocks (Redis: whole microseconds)


@pytest.fixture(params=["redis", "sqlite", "postgresql"])
def limiters(request: pytest.FixtureRequest) -> Iterator[tuple[RateLimiter, RateLimiter]]:
    """Two limiters for one provider, as two worker processes would hold them."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        url = require_redis()
        pair = tuple(RedisRateLimiter(url, name, RATE, BURST, MAX_WAIT) for _ in range(2))
        warm_up(pair[0], pair[1])
        yield pair[0], pair[1]
        for limiter in pair:
            limiter.close()
        return
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    database = str(request.getfixturevalue(fixture))
    first = DatabaseRateLimiter(database, name, RATE, BURST, MAX_WAIT)
    second = DatabaseRateLimiter(database, name, RATE, BURST, MAX_WAIT)
    warm_up(first, second)
    yield first, second


def warm_up(*limiters: RateLimiter) -> None:
    """Open connections and create the row, then let the bucket fill up again."""
    for limiter in limiters:
        limiter.reserve()
    time.sleep(BURST * INTERVAL + 0.2)


def bracketed(limiter: RateLimiter) -> tuple[float, float, Reservation]:
    """One reservation with the wall-clock time just before and just after it: the
    limiter read its clock (Redis's ``TIME`` or ``time.time()``, the same clock on this
    machine) somewhere in between, however long a loaded machine made the call."""
    before = time.time()
    reservation = limiter.reserve()
    return before, time.time(), reservation


def test_burst_then_the_rate_shared_between_holders(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    first, second = limiters
    calls = [bracketed(first if n % 2 else second) for n in range(3)]
    # 3 go at once (the bucket is full), then, whichever holder asks, each queued slot
    # comes exactly one interval after the one before.
    assert [reservation.wait for _, _, reservation in calls] == [0, 0, 0]
    while sum(reservation.wait > 0 for _, _, reservation in calls) < 6:
        calls.append(bracketed(first if len(calls) % 2 else second))
        assert calls[-1][2].granted
        assert len(calls) < 40, "the calls never outran the rate: each took an interval"
    # A slot is the limiter's clock at the call plus its wait: between the bracket's ends
    # plus the wait. Two successive queued slots are one interval apart on that clock.
    queued = [call for call in calls if call[2].wait > 0]
    for (before_a, after_a, a), (before_b, after_b, b) in itertools.pairwise(queued):
        earliest = (before_b + b.wait) - (after_a + a.wait)
        latest = (after_b + b.wait) - (before_a + a.wait)
        assert earliest - CLOCK <= INTERVAL <= latest + CLOCK, (earliest, latest)


def test_a_slot_beyond_max_wait_is_refused_and_not_taken(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    first, _ = limiters
    granted = 0
    started = time.time()
    while (refusal := bracketed(first))[2].granted:
        granted += 1
        assert granted < 200, "max_wait must stop the reservations"
    refused_before, refused_after, refused = refusal
    # The burst plus max_wait's worth at the rate (a slot is refused once its wait passes
    # max_wait), plus one slot for every interval the calls themselves took; one less or
    # more for where the last wait falls against max_wait.
    expected = BURST + MAX_WAIT / INTERVAL
    assert expected - 1 <= granted <= expected + 1 + (refused_after - started) / INTERVAL
    assert refused.wait > 1.0
    before, after, again = bracketed(first)
    # Without a slot taken by the refusal, the next wait is the refused one less the time
    # between the two calls' clock readings; had it taken one, an interval longer.
    assert again.wait <= refused.wait - (before - refused_after) + CLOCK
    assert again.wait >= refused.wait - (after - refused_before) - CLOCK


def test_concurrent_acquirers_are_spaced_at_the_rate(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    first, second = limiters
    stamps: list[float] = []

    def take(limiter: RateLimiter) -> None:
        assert limiter.acquire().granted
        stamps.append(time.time())

    start = time.time()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(take, [first, second] * 7))
    # 14 slots: 3 at once, then 11 more at the rate. A sleep never ends early, so the k-th
    # acquirer to return does so no sooner than the k-th slot: the limiter's guarantee,
    # checked strictly. The upper bound only says the holders are not held far beyond
    # it (threads woken late on a loaded machine; the exact spacing is checked above).
    for k, stamp in enumerate(sorted(stamps)):
        assert stamp - start >= max(0, k - BURST + 1) * INTERVAL - CLOCK, k
    assert max(stamps) - start < 11 * INTERVAL + 1.0


def test_unknown_rate_limit_store_is_a_clear_error(tmp_path: object) -> None:
    from worker.core.settings import Settings
    from worker.process.rate_limit import make_rate_limiter

    # Refused when the settings are read, before any process starts (a ValidationError
    # is a ValueError), naming the variable and the schemes it takes.
    with pytest.raises(ValueError, match="memcached") as refused:
        Settings(rate_limit_per_second=10, rate_limit_url="memcached://x")
    assert "redis" in str(refused.value)
    assert make_rate_limiter(Settings(), "smtp") is None
