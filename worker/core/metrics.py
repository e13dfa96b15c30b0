"""Prometheus metrics of every crosssell process (documented in docs/operations.md).

Metric objects are plain in-process counters; defining them here does no I/O. The
outbox gauges read the database when scraped, and only in a process that called
:func:`install_outbox_gauges` (the ones serving metrics); elsewhere they stay 0.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

EVENTS = Counter("crosssell_events_total", "CRM events handled by the consumer", ["result"])
SENDS = Counter(
    "crosssell_sends_total", "Sends that reached an end state or were moved", ["status", "reason"]
)
RULE_RELOADS = Counter("crosssell_rule_reloads_total", "Campaign rule set (re)loads", ["result"])
RULES_STALE = Gauge(
    "crosssell_rules_reload_failing",
    "1 while the files on disk fail validation and the previous rules keep running",
)
CAMPAIGNS_ACTIVE = Gauge("crosssell_campaigns_active", "Active campaigns in the rule set")
PROVIDER_SECONDS = Histogram(
    "crosssell_provider_send_seconds",
    "Seconds from handing a message to the email provider to its answer (or error)",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
ACTIVITY_PUBLISHED = Counter(
    "crosssell_activity_published_total",
    "Activity events published to the activity exchange (broker confirmed)",
    ["type"],
)
SENDS_DUE = Gauge("crosssell_sends_due", "Planned sends whose time has come (not yet queued)")
SENDS_QUEUED = Gauge("crosssell_sends_queued", "Sends queued for the Celery workers")
OLDEST_DUE_AGE = Gauge(
    "crosssell_oldest_due_send_age_seconds",
    "How long the oldest due send has been waiting past its send time (0: none)",
)
# Scrapes closer together than this share one set of queries.
SNAPSHOT_TTL = 5.0


@dataclass(frozen=True, slots=True)
class OutboxSnapshot:
    due: int
    queued: int
    oldest_due_age: float


def outbox_snapshot(database_url: str, now: datetime) -> OutboxSnapshot:
    """Count due and queued sends and age the oldest due one (seconds), in one read."""
    from sqlalchemy import func, select

    from worker.core.db import transaction
    from worker.core.models import Send

    with transaction(database_url) as session:
        due, oldest = session.execute(
            select(func.count(), func.min(Send.send_at)).where(
                Send.status == "planned", Send.send_at <= now
            )
        ).one()
        queued = session.scalar(
            select(func.count()).select_from(Send).where(Send.status == "queued")
        )
    age = 0.0
    if oldest is not None:
        if oldest.tzinfo is None:  # SQLite hands back naive UTC from aggregates
            oldest = oldest.replace(tzinfo=UTC)
        age = max((now - oldest).total_seconds(), 0.0)
    return OutboxSnapshot(int(due or 0), int(queued or 0), age)


class _CachedSnapshot:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._lock = threading.Lock()
        self._taken = -math.inf
        self._value = OutboxSnapshot(0, 0, 0.0)
        self._failed = False

    def get(self) -> OutboxSnapshot | None:
        """The snapshot, fresh within ``SNAPSHOT_TTL``; None while the database fails."""
        with self._lock:
            if time.monotonic() - self._taken > SNAPSHOT_TTL:
                self._taken = time.monotonic()
                try:
                    self._value = outbox_snapshot(self.database_url, datetime.now(UTC))
                    self._failed = False
                except Exception as exc:  # a scrape must answer even with the database down
                    log.warning("outbox gauges: database unavailable (%s)", type(exc).__name__)
                    self._failed = True
            return None if self._failed else self._value


def install_outbox_gauges(database_url: str) -> None:
    """Make the outbox gauges read ``database_url`` when scraped (NaN while it fails)."""
    cached = _CachedSnapshot(database_url)

    def read(field: str) -> float:
        snapshot = cached.get()
        return math.nan if snapshot is None else float(getattr(snapshot, field))

    SENDS_DUE.set_function(lambda: read("due"))
    SENDS_QUEUED.set_function(lambda: read("queued"))
    OLDEST_DUE_AGE.set_function(lambda: read("oldest_due_age"))


_serving: set[int] = set()
_serving_lock = threading.Lock()


def serve_metrics(port: int, host: str, database_url: str) -> bool:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread, with the outbox gauges;
    False if this process already serves that port."""
    with _serving_lock:
        if port in _serving:
            return False
        install_outbox_gauges(database_url)
        start_http_server(port, addr=host)
        _serving.add(port)
    return True


OFFERS_UNAVAILABLE = Counter(
    "crosssell_offers_unavailable_total",
    "Offers that found nothing to show at send time (the send is skipped with this reason)",
    ["reason"],
)
