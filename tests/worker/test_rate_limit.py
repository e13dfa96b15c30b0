"""The shared send rate, on the real Redis and on both databases."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.services import require_redis
from worker.rate_limit import DatabaseRateLimiter, RateLimiter, RedisRateLimiter


@pytest.fixture(params=["redis", "sqlite", "postgresql"])
def limiters(request: pytest.FixtureRequest) -> Iterator[tuple[RateLimiter, RateLimiter]]:
    """Two limiters for one provider, as two worker processes would hold them."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        url = require_redis()
        pair = tuple(RedisRateLimiter(url, name, 20, 3, 1.0) for _ in range(2))
        warm_up(pair[0], pair[1])
        yield pair[0], pair[1]
        for limiter in pair:
            limiter.close()
        return
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    database = str(request.getfixturevalue(fixture))
    first = DatabaseRateLimiter(database, name, 20, 3, 1.0)
    second = DatabaseRateLimiter(database, name, 20, 3, 1.0)
    warm_up(first, second)
    yield first, second


def warm_up(*limiters: RateLimiter) -> None:
    """Open connections and create the row, then let the bucket fill up again."""
    for limiter in limiters:
        limiter.reserve()
    time.sleep(0.5)


def test_burst_then_the_rate_shared_between_holders(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    first, second = limiters
    slots, waits = [], []
    for n in range(9):
        reservation = (first if n % 2 else second).reserve()
        assert reservation.granted
        waits.append(reservation.wait)
        slots.append(time.monotonic() + reservation.wait)
    # 3 go at once, then one every 1/20 s after the first, whichever holder asks.
    assert waits[:3] == [0, 0, 0]
    after_first = [slot - slots[0] for slot in slots[3:]]
    assert after_first == pytest.approx([n * 0.05 for n in range(1, 7)], abs=0.012)


def test_a_slot_beyond_max_wait_is_refused_and_not_taken(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    first, _ = limiters
    granted = 0
    while (reservation := first.reserve()).granted:
        granted += 1
        assert granted < 40, "max_wait (1 s) must stop the reservations"
    # 3 at once plus about one second's worth at 20/s, less what the calls took.
    assert 17 <= granted <= 30
    refused_at = time.monotonic()
    assert reservation.wait > 1.0
    again = first.reserve()
    elapsed = time.monotonic() - refused_at
    # Had the refusal taken a slot, the next one would be 0.05 s further away.
    assert again.wait == pytest.approx(reservation.wait - elapsed, abs=0.02)


def test_concurrent_acquirers_are_spaced_at_the_rate(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    first, second = limiters
    stamps: list[float] = []

    def take(limiter: RateLimiter) -> None:
        assert limiter.acquire().granted
        stamps.append(time.monotonic())

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(take, [first, second] * 7))
    # 14 slots: 3 at once, then 11 more at 20/s, so the last one ≈ 0.55 s after the start.
    assert max(stamps) - start == pytest.approx(0.55, abs=0.15)


def test_unknown_rate_limit_store_is_a_clear_error(tmp_path: object) -> None:
    from worker.rate_limit import make_rate_limiter
    from worker.settings import Settings

    settings = Settings(rate_limit_per_second=10, rate_limit_url="memcached://x")
    with pytest.raises(ValueError, match="CROSSSELL_RATE_LIMIT_URL"):
        make_rate_limiter(settings, "smtp")
    assert make_rate_limiter(Settings(), "smtp") is None
