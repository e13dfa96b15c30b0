"""Activity out: tell other systems what happened to their customers' email.

Five types leave crosssell, each on the durable topic exchange ``crosssell.activity``
(``CROSSSELL_ACTIVITY_EXCHANGE``) with the type as routing key:

================  ===================================================================
``email_sent``    the provider accepted the message (``occurred_at``: when it did)
``email_bounced`` a hard bounce, at hand-over or reported later by a provider webhook
``complained``    the recipient reported the email as spam (consent withdrawn)
``unsubscribed``  an opt-out through a crosssell channel (``occurred_at``: the consent
                  record's decision time, not when it was recorded)
``converted``     a purchase attributed to an email (recorded by the attribution code)
================  ===================================================================

The body has the inbound envelope's shape: ``{"id", "type", "occurred_at", "customer":
{"id"}, "data"}``; ``data`` holds ids, codes and amounts only (no address, no name).

Delivery guarantees (the transactional outbox pattern): :func:`record_activity` adds
a row to ``activity_outbox`` in the caller's transaction, so the event exists exactly
when the state change does. :class:`ActivityPublisher` publishes rows after commit,
waits for the broker's publisher confirm, and only then marks them published; ids
confirmed but not yet marked (the database failed in between) are marked on the next
round without publishing again, so one process never publishes an event twice. Two
processes, or a crash between confirm and mark, can repeat one: the ``id`` is stable
and derived from the source row (``email_sent:send-42``, ``unsubscribed:consent-7``),
and consumers de-duplicate by it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.messaging import Producer
from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection as DatabaseConnection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from triggers.durations import parse_duration
from worker.core.db import transaction
from worker.core.metrics import ACTIVITY_PUBLISHED
from worker.core.models import ActivityOutbox, Send
from worker.core.settings import Settings
from worker.core.topology import transport_options

log = logging.getLogger(__name__)

ActivityType = Literal["email_sent", "email_bounced", "complained", "unsubscribed", "converted"]
ACTIVITY_TYPES: frozenset[str] = frozenset(
    ("email_sent", "email_bounced", "complained", "unsubscribed", "converted")
)
Scalar = str | int | float | bool | None
# Prune old rows at most this often (seconds): a DELETE per poll would be wasted work.
PRUNE_EVERY = 60.0


def _scalar(key: str, value: object) -> Scalar:
    """A data value as JSON: decimals (money) as strings, datetimes as ISO 8601."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"activity data {key!r}: {type(value).__name__} is not a JSON scalar")


def activity_id(type: str, customer_id: str, data: dict[str, Scalar], occurred_at: datetime) -> str:
    """The id of an activity recorded without a source row: the SHA-256 of its content,
    so recording the same fact twice yields the same id (and one row)."""
    canonical = json.dumps(
        [type, customer_id, occurred_at.astimezone(UTC).isoformat(), data],
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"{type}:sha256:{hashlib.sha256(canonical.encode('utf-8')).hexdigest()[:40]}"


def record_activity(
    session: Session,
    type: str,
    customer_id: str,
    data: dict[str, Any],
    occurred_at: datetime,
    *,
    source: str | None = None,
) -> str:
    """Add one activity event to the outbox in the caller's transaction; its id.

    ``data`` is flat: strings, numbers, booleans, ``None``, decimals (as strings) and
    datetimes (as ISO 8601); never put an address or a name in it. ``source`` names the
    row the event comes from (``send-42``) and makes the id ``<type>:<source>``; without
    it the id is a hash of the content. Recording an id already recorded does nothing.
    Raises ``ValueError`` for an unknown type and ``TypeError`` for a nested value.
    """
    if type not in ACTIVITY_TYPES:
        raise ValueError(f"unknown activity type {type!r}")
    values = {str(key): _scalar(str(key), value) for key, value in data.items()}
    key = f"{type}:{source}" if source else activity_id(type, customer_id, values, occurred_at)
    if session.scalar(select(ActivityOutbox.id).where(ActivityOutbox.activity_id == key)):
        return key
    try:
        with session.begin_nested():
            session.add(
                ActivityOutbox(
                    activity_id=key,
                    type=type,
                    customer_id=customer_id,
                    occurred_at=occurred_at,
                    data=values,
                    created_at=datetime.now(UTC),
                    published_at=None,
                )
            )
    except IntegrityError:
        pass  # recorded meanwhile by a concurrent transaction: the goal is reached
    return key


@dataclass(frozen=True, slots=True)
class SendFacts:
    """What a send's activity event says about the send, as its worker already holds it."""

    send_id: int
    customer_id: str
    campaign_id: str
    kind: str
    variant: str | None
    event_id: str


def send_activity_data(
    facts: SendFacts, provider: str | None, message_id: str | None
) -> dict[str, Scalar]:
    """The ``data`` of a send's activity event (``email_sent``, ``email_bounced``): ids
    and codes only, never personal data."""
    return {
        "send_id": facts.send_id,
        "campaign_id": facts.campaign_id,
        "kind": facts.kind,
        "variant": facts.variant,
        "event_id": facts.event_id,
        "provider": provider,
        "message_id": message_id,
    }


def record_send_activity(
    session: Session, type: ActivityType, send_id: int, occurred_at: datetime
) -> str | None:
    """Record an ``email_sent`` or ``email_bounced`` event for one send (id
    ``<type>:send-<id>``), read from the database; None if the send does not exist.
    The delivery path, which holds the values, uses :func:`add_send_activity`."""
    send = session.get(Send, send_id)
    if send is None:
        return None
    facts = SendFacts(
        send.id, send.customer_id, send.campaign_id, send.kind, send.variant, send.event_id
    )
    data: dict[str, Any] = send_activity_data(facts, send.provider, send.message_id)
    if type == "email_bounced":
        data["reason"] = send.reason
    return record_activity(
        session, type, send.customer_id, data, occurred_at, source=f"send-{send.id}"
    )


def add_send_activity(
    connection: DatabaseConnection,
    type: ActivityType,
    facts: SendFacts,
    provider: str | None,
    message_id: str | None,
    occurred_at: datetime,
    reason: str | None = None,
) -> str:
    """:func:`record_send_activity` from values in hand: the same row (id
    ``<type>:send-<id>``, same data) in the caller's transaction, one
    ``INSERT … ON CONFLICT DO NOTHING`` with no read before it (an id already recorded
    stays as it is). ``reason`` is an ``email_bounced``'s. Returns the activity id."""
    data = send_activity_data(facts, provider, message_id)
    if type == "email_bounced":
        data["reason"] = reason
    key = f"{type}:send-{facts.send_id}"
    dialect = connection.dialect.name
    insert = _ACTIVITY_INSERTS.get(dialect)
    if insert is None:
        raise RuntimeError(f"crosssell needs PostgreSQL or SQLite, not {dialect}")
    connection.execute(
        insert,
        {
            "activity_id": key,
            "type": type,
            "customer_id": facts.customer_id,
            "occurred_at": occurred_at,
            "data": data,
            "created_at": datetime.now(UTC),
            "published_at": None,
        },
    )
    return key


# Built once per dialect and run with parameters: the delivery worker writes one per
# email, and building the statement (its cache key, the ORM's coercions) cost more than
# running it (docs/performance.md, "Statements built once").
_ACTIVITY_INSERTS = {
    "postgresql": postgresql.insert(ActivityOutbox).on_conflict_do_nothing(
        index_elements=["activity_id"]
    ),
    "sqlite": sqlite.insert(ActivityOutbox).on_conflict_do_nothing(index_elements=["activity_id"]),
}


def envelope(row: ActivityOutbox) -> dict[str, Any]:
    """The message body of one outbox row, in the inbound event envelope's shape."""
    return {
        "id": row.activity_id,
        "type": row.type,
        "occurred_at": row.occurred_at.astimezone(UTC).isoformat(),
        "customer": {"id": row.customer_id},
        "data": dict(row.data),
    }


def activity_exchange(settings: Settings) -> Exchange:
    return Exchange(settings.activity_exchange, type="topic", durable=True)


class ActivityPublisher:
    """Publishes unpublished outbox rows with publisher confirms, oldest first.

    Keep one per process: it remembers the ids the broker confirmed but the database
    has not marked yet, so a failed mark never leads to a second publish from here.
    """

    def __init__(self, settings: Settings, batch: int = 200) -> None:
        self.settings = settings
        self.batch = batch
        self._confirmed: set[int] = set()
        self._connection: Connection | None = None
        self._producer: Producer | None = None

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            url = self.settings.resolved_events_url
            connection = Connection(url, transport_options=transport_options(url))
            connection.ensure_connection(max_retries=3)
            producer = Producer(connection.channel(), exchange=activity_exchange(self.settings))
            producer.maybe_declare(activity_exchange(self.settings))
            self._connection, self._producer = connection, producer
        return self._producer

    def close(self) -> None:
        """Drop the broker connection (after an error, or at shutdown)."""
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:  # the connection is already broken; nothing to give back
                log.debug("closing the activity connection failed", exc_info=True)
        self._connection = self._producer = None

    def publish_pending(self) -> int:
        """Publish up to ``batch`` rows; the number published (confirmed) this round."""
        published = 0
        with transaction(self.settings.resolved_database_url) as session:
            if self._confirmed:
                self._mark(session, self._confirmed)
            query = (
                select(ActivityOutbox)
                .where(ActivityOutbox.published_at.is_(None))
                .order_by(ActivityOutbox.id)
                .limit(self.batch)
            )
            if session.bind is not None and session.bind.dialect.name == "postgresql":
                # Several dispatchers publish disjoint rows; the lock lasts one batch.
                query = query.with_for_update(skip_locked=True)
            rows = list(session.scalars(query))
            if rows:
                producer = self._ensure_producer()
                for row in rows:
                    producer.publish(
                        json.dumps(envelope(row), ensure_ascii=False).encode("utf-8"),
                        routing_key=row.type,
                        content_type="application/json",
                        content_encoding="utf-8",
                        delivery_mode=2,
                        message_id=row.activity_id,
                    )
                    # confirm_publish: publish() returned, so the broker has confirmed.
                    self._confirmed.add(row.id)
                    ACTIVITY_PUBLISHED.labels(row.type).inc()
                    published += 1
                self._mark(session, self._confirmed)
        self._confirmed.clear()
        return published

    @staticmethod
    def _mark(session: Session, ids: set[int]) -> None:
        session.execute(
            update(ActivityOutbox)
            .where(ActivityOutbox.id.in_(sorted(ids)))
            .values(published_at=datetime.now(UTC))
        )


def prune_activity(settings: Settings, now: datetime) -> int:
    """Delete outbox rows older than ``activity_retention``: published ones, and with
    publishing off every one (nothing would ever publish them). Rows waiting for a
    broker that is down stay until they are published. The number deleted."""
    cutoff = now - parse_duration(settings.activity_retention)
    condition = ActivityOutbox.created_at < cutoff
    if settings.activity_publish:
        condition = condition & ActivityOutbox.published_at.is_not(None)
    with transaction(settings.resolved_database_url) as session:
        result = session.execute(delete(ActivityOutbox).where(condition))
    return int(getattr(result, "rowcount", 0) or 0)


def run_activity_publisher(settings: Settings, stop: threading.Event) -> None:
    """Publish (when ``activity_publish`` is on) and prune until ``stop`` is set; an
    error is logged and retried after a pause, never fatal."""
    interval = settings.dispatch_interval
    publisher = ActivityPublisher(settings)
    pruned_at = 0.0
    try:
        while not stop.is_set():
            published = 0
            try:
                if settings.activity_publish:
                    published = publisher.publish_pending()
                if time.monotonic() - pruned_at > PRUNE_EVERY:
                    prune_activity(settings, datetime.now(UTC))
                    pruned_at = time.monotonic()
            except Exception as exc:
                log.warning(
                    "activity publishing failed (%s); retrying in %.1fs",
                    type(exc).__name__,
                    interval * 5,
                )
                publisher.close()
                stop.wait(interval * 5)
                continue
            if published < publisher.batch:
                stop.wait(interval)
    finally:
        publisher.close()


def start_activity_publisher(settings: Settings, stop: threading.Event) -> threading.Thread:
    """The publisher loop in a daemon thread (``crosssell dispatch`` and ``run``)."""
    thread = threading.Thread(
        target=run_activity_publisher, args=(settings, stop), name="activity", daemon=True
    )
    thread.start()
    return thread
