"""One send rate per provider, shared by every worker process on every machine.

The limiter is GCRA (the generic cell rate algorithm) kept as one number per provider,
the *theoretical arrival time* (TAT) of the next message. A caller reserves a slot with
one atomic step and learns how long to wait before sending:

    start = max(tat, now)
    tat   = start + interval              (interval = 1 / rate)
    wait  = max(0, start - now - (burst - 1) * interval)

so up to ``burst`` messages go at once and then exactly ``rate`` per second, however many
processes ask. Reserving (rather than asking again and again) keeps the shared store at
one round trip per message and spaces senders evenly instead of in bursts. A slot whose
wait would exceed ``max_wait`` is not taken: the caller gives the send back to the
outbox for later, so a worker never sleeps for minutes holding a task.

Two stores: Redis (a Lua script, the clock is Redis's own ``TIME``, so machines with
skewed clocks still agree) and the database (one row per provider, an atomic UPDATE …
RETURNING; the clock is the caller's, so keep machines on NTP).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from sqlalchemy import case, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from worker.core.db import transaction
from worker.core.models import RateLimitState
from worker.core.settings import Settings


@dataclass(frozen=True, slots=True)
class Reservation:
    """``granted``: send after sleeping ``wait`` seconds; otherwise retry in ``wait``."""

    granted: bool
    wait: float


class RateLimiter(ABC):
    """Reserve send slots for one provider at ``rate`` messages per second."""

    def __init__(self, name: str, rate: float, burst: int, max_wait: float) -> None:
        if rate <= 0:
            raise ValueError("rate limit must be positive")
        self.name = name
        self.interval = 1.0 / rate
        self.burst = max(burst, 1)
        self.max_wait = max_wait

    @abstractmethod
    def reserve(self) -> Reservation:
        """Take the next slot if it comes within ``max_wait``; never blocks."""

    def close(self) -> None:  # noqa: B027 - only the Redis store holds a connection
        """Release the store's connections."""

    def acquire(self) -> Reservation:
        """Reserve and, when granted, sleep until the slot; returns what was decided."""
        reservation = self.reserve()
        if reservation.granted and reservation.wait > 0:
            time.sleep(reservation.wait)
        return reservation


_GCRA = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(tat, now)
local wait = math.max(0, start - now - tolerance)
if wait > max_wait then
  return {0, wait}
end
local ttl = math.ceil((start + interval - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', start + interval), 'PX', ttl)
return {1, wait}
"""


class RedisRateLimiter(RateLimiter):
    """GCRA in Redis; times are integer microseconds on Redis's clock."""

    def __init__(self, url: str, name: str, rate: float, burst: int, max_wait: float) -> None:
        super().__init__(name, rate, burst, max_wait)
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._script = self._client.register_script(_GCRA)
        self._key = f"crosssell:rate:{name}"

    def reserve(self) -> Reservation:
        interval = round(self.interval * 1_000_000)
        granted, wait = self._script(
            keys=[self._key],
            args=[interval, interval * (self.burst - 1), round(self.max_wait * 1_000_000)],
        )
        return Reservation(bool(granted), int(wait) / 1_000_000)

    def close(self) -> None:
        self._client.close()


class DatabaseRateLimiter(RateLimiter):
    """GCRA in the ``rate_limits`` table: one conditional UPDATE … RETURNING per slot."""

    def __init__(
        self, database_url: str, name: str, rate: float, burst: int, max_wait: float
    ) -> None:
        super().__init__(name, rate, burst, max_wait)
        self.database_url = database_url
        self._created = threading.Event()

    def _ensure_row(self) -> None:
        if self._created.is_set():
            return
        try:
            with transaction(self.database_url) as session:
                exists = session.get(RateLimitState, self.name)
                if exists is None:
                    session.execute(insert(RateLimitState).values(name=self.name, tat=0.0))
        except IntegrityError:
            pass  # another process created it first
        self._created.set()

    def reserve(self) -> Reservation:
        self._ensure_row()
        now = time.time()
        tolerance = self.interval * (self.burst - 1)
        start = case((RateLimitState.tat > now, RateLimitState.tat), else_=literal(now))
        with transaction(self.database_url) as session:
            # Only take the slot if it is close enough; the WHERE makes it atomic.
            row = session.execute(
                update(RateLimitState)
                .where(
                    RateLimitState.name == self.name,
                    RateLimitState.tat - now - tolerance <= self.max_wait,
                )
                .values(tat=start + self.interval)
                .returning(RateLimitState.tat)
            ).first()
            if row is not None:
                begins = float(row[0]) - self.interval
                return Reservation(True, max(0.0, begins - now - tolerance))
            tat = session.scalar(select(RateLimitState.tat).where(RateLimitState.name == self.name))
        return Reservation(False, max(0.0, float(tat or 0.0) - now - tolerance))


def make_rate_limiter(settings: Settings, provider_name: str) -> RateLimiter | None:
    """The limiter the settings ask for, or ``None`` when sending is unlimited."""
    rate = settings.rate_limit_per_second
    if not rate:
        return None
    url: str = settings.rate_limit_url or ""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisRateLimiter(
            url, provider_name, rate, settings.rate_limit_burst, settings.rate_limit_max_wait
        )
    if url not in ("", "database"):
        raise ValueError(
            f"CROSSSELL_RATE_LIMIT_URL must be a redis:// URL or 'database', not {url!r}"
        )
    return DatabaseRateLimiter(
        settings.resolved_database_url,
        provider_name,
        rate,
        settings.rate_limit_burst,
        settings.rate_limit_max_wait,
    )
