"""Customer data rights: erase a customer's personal data, or export all of it.

``crosssell forget CUSTOMER_ID`` (or a ``forget`` event from the CRM) serves the right to
erasure (GDPR Art. 17); ``crosssell export CUSTOMER_ID`` the right of access and to
portability (Art. 15 and 20).

Forgetting keeps every row, so reports keep their totals (sends, orders, conversions,
activity), and removes what identifies the person:

* on the customer: ``email``, ``first_name``, ``last_name`` and the free ``attributes``;
* in each stored event: the customer block is cut down to ``{"id": …}``;
* in suppressions, the consent history and provider webhook records: each of the
  customer's addresses is replaced by its keyed hash, ``hmac-sha256:<hex>`` (HMAC-SHA256,
  RFC 2104, of the trimmed, lower-cased address, with ``CROSSSELL_FORGET_KEY``). The hash
  says nothing without the key, but the same address always gives the same hash, so a
  suppressed address stays suppressed: :func:`suppression_keys` gives both forms, and
  the suppression check matches either;
* in sends' ``detail`` (provider replies quote addresses and names): those are replaced
  by ``[erased]``; sends still waiting (``planned``, ``queued``) are skipped with reason
  ``forgotten``;
* ``customers.forgotten_at`` keeps the request's time (for a customer not stored yet, a
  row with only its id and that time): an event from before it that is stored after it
  (another consumer's, or a late one) is stored erased (``worker.intake.ingest``).

The key must stay the same for the life of the database: with another key, hashed
addresses are no longer recognised. Without ``CROSSSELL_FORGET_KEY`` the first ``forget``
creates a random key in ``var_dir/forget.key`` (owner-only), which every process on the
machine then reads.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from triggers.addresses import lookup_key
from triggers.events import parse_forget
from worker.core.db import surviving_disconnects, transaction
from worker.core.metrics import EVENTS
from worker.core.models import (
    ActivityOutbox,
    ConsentRecord,
    Customer,
    Event,
    Order,
    OrderLine,
    Send,
    Suppression,
)
from worker.core.settings import Settings, get_settings
from worker.records.webhook_events import WebhookEvent

if TYPE_CHECKING:
    from worker.process.runtime import Runtime

log = logging.getLogger(__name__)

HASH_PREFIX = "hmac-sha256:"
ERASED = "[erased]"
KEY_FILE = "forget.key"
_cached_key: tuple[Settings, bytes] | None = None


def forget_key(settings: Settings, *, create: bool = False) -> bytes | None:
    """The HMAC key: ``CROSSSELL_FORGET_KEY``, else the key file in ``var_dir``; the file
    is made (random, 256 bits, mode 0600) only when ``create`` — by ``forget``. None when
    there is no key yet, which means nothing was ever forgotten with a file key."""
    if settings.forget_key is not None:
        return settings.forget_key.get_secret_value().encode("utf-8")
    path = settings.var_dir / KEY_FILE
    if not path.exists():
        if not create:
            return None
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: read theirs
        else:
            with os.fdopen(descriptor, "w") as stream:
                stream.write(secrets.token_urlsafe(32))
    return path.read_text().strip().encode("utf-8")


def _process_key() -> bytes | None:
    """This process's key (from its environment's settings), cached once found."""
    global _cached_key
    settings = get_settings()
    if _cached_key is None or _cached_key[0] is not settings:
        key = forget_key(settings)
        if key is None:
            return None  # not cached: a forget may create the key file later
        _cached_key = (settings, key)
    return _cached_key[1]


def normalise(email: str) -> str:
    """The suppression list's canonical key (``triggers.addresses.lookup_key``)."""
    return lookup_key(email)


def address_hash(email: str, key: bytes) -> str:
    """``hmac-sha256:`` and the hex HMAC-SHA256 (RFC 2104) of the normalised address."""
    digest = hmac.new(key, normalise(email).encode("utf-8"), hashlib.sha256).hexdigest()
    return HASH_PREFIX + digest


def suppression_keys(email: str, key: bytes | None = None) -> list[str]:
    """Every form under which ``email`` may be suppressed: the normalised address and,
    when a forget key exists, its keyed hash (an address whose customer was forgotten).
    ``key`` defaults to the process's (``CROSSSELL_FORGET_KEY`` or the key file)."""
    return _keys_of(normalise(email), key if key is not None else _process_key())


def suppression_keys_of(emails: Iterable[str]) -> dict[str, list[str]]:
    """:func:`suppression_keys` of each address, with the process's key looked up once: a
    batch's. Until a forget makes the key file, looking it up is a ``stat`` of the file,
    which one call per address made 2 % of ingest's CPU (py-spy of ``bench.ingest``,
    2026-12-01; docs/performance.md, "Ingest")."""
    secret = _process_key()
    return {email: _keys_of(normalise(email), secret) for email in emails}


def _keys_of(address: str, secret: bytes | None) -> list[str]:
    return [address] if secret is None else [address, address_hash(address, secret)]


@dataclass(frozen=True, slots=True)
class ForgetReport:
    """What one ``forget`` changed (counts of rows), for the CLI and logs."""

    customer_id: str
    addresses: int
    suppressions: int
    consent_records: int
    events: int
    webhook_events: int
    sends_scrubbed: int
    sends_cancelled: int


def _addresses(session: Session, customer: Customer) -> set[str]:
    """The customer's current address and every earlier one the consent history kept."""
    found = {normalise(customer.email)} if customer.email else set()
    for email in session.scalars(
        select(ConsentRecord.email).where(
            ConsentRecord.customer_id == customer.id, ConsentRecord.email.is_not(None)
        )
    ):
        if email and not email.startswith(HASH_PREFIX):
            found.add(normalise(email))
    return found


def _scrub(text: str, secrets_in_text: list[str]) -> str:
    if not secrets_in_text:
        return text
    alternatives = "|".join(re.escape(s) for s in sorted(secrets_in_text, key=len, reverse=True))
    return re.sub(alternatives, ERASED, text, flags=re.IGNORECASE)


def forget_customer(
    session: Session,
    customer_id: str,
    key: bytes,
    now: datetime,
    requested_at: datetime | None = None,
) -> ForgetReport | None:
    """Erase the customer's personal data in the caller's transaction (module docstring)
    and record when the erasure was asked for as its ``forgotten_at``: ``requested_at``
    (a ``forget`` event's ``occurred_at``; never later than ``now``), else ``now``. None
    if the customer was not stored, in which case a row with its id and ``forgotten_at``
    only is stored. Either way an event of the customer that occurred before that time
    and is stored later (another consumer's, a late one) is stored erased
    (``worker.intake.ingest``); one that occurred after it, during a backlog, is not.
    Safe to repeat: a second run finds nothing to do, and a redelivered request does
    not move the time."""
    asked = min(requested_at, now) if requested_at is not None else now
    customer = session.get(Customer, customer_id, with_for_update=True)
    if customer is None:
        if _stored_as_forgotten(session, customer_id, now, asked):
            return None
        # An ingest stored the customer meanwhile: erase what it committed.
        customer = session.get(Customer, customer_id, with_for_update=True, populate_existing=True)
        assert customer is not None
    customer.forgotten_at = max(customer.forgotten_at or asked, asked)
    addresses = _addresses(session, customer)
    hashed = {address: address_hash(address, key) for address in addresses}
    names = [n for n in (customer.first_name, customer.last_name) if n and n.strip()]

    moved = 0
    for address, digest in hashed.items():
        row = session.get(Suppression, address)
        if row is None:
            continue
        if session.get(Suppression, digest) is None:
            session.add(
                Suppression(
                    email=digest, reason=row.reason, source=row.source, created_at=row.created_at
                )
            )
        session.delete(row)
        moved += 1

    records = 0
    for record in session.scalars(
        select(ConsentRecord).where(ConsentRecord.customer_id == customer.id)
    ):
        if record.email and not record.email.startswith(HASH_PREFIX):
            record.email = address_hash(record.email, key)
            records += 1
        if record.detail:
            record.detail = _scrub(record.detail, [*addresses, *names])

    events = 0
    for event in session.scalars(select(Event).where(Event.customer_id == customer.id)):
        if dict(event.payload.get("customer") or {}) != {"id": customer.id}:
            event.payload = erased_payload(event.payload, customer.id)
            events += 1

    webhooks = 0
    if addresses:
        for tracked in session.scalars(
            select(WebhookEvent).where(WebhookEvent.recipient.in_(sorted(addresses)))
        ):
            tracked.recipient = hashed[normalise(tracked.recipient or "")]
            webhooks += 1

    scrubbed = 0
    for send in session.scalars(
        select(Send).where(Send.customer_id == customer.id, Send.detail.is_not(None))
    ):
        cleaned = _scrub(send.detail or "", [*addresses, *names])
        if cleaned != send.detail:
            send.detail = cleaned
            scrubbed += 1
    cancelled = session.execute(
        update(Send)
        .where(Send.customer_id == customer.id, Send.status.in_(("planned", "queued")))
        .values(status="skipped", reason="forgotten", detail=None, updated_at=now)
    )

    customer.email = None
    customer.first_name = None
    customer.last_name = None
    customer.attributes = {}
    customer.updated_at = now
    return ForgetReport(
        customer_id=customer.id,
        addresses=len(addresses),
        suppressions=moved,
        consent_records=records,
        events=events,
        webhook_events=webhooks,
        sends_scrubbed=scrubbed,
        sends_cancelled=int(getattr(cancelled, "rowcount", 0) or 0),
    )


def _json(value: object) -> object:
    """A column value as JSON: decimals as strings (money stays exact), times ISO 8601."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


def _row(row: object) -> dict[str, Any]:
    """Every mapped column of an ORM row, as JSON-ready data."""
    mapper = inspect(type(row))
    return {column.key: _json(getattr(row, column.key)) for column in mapper.column_attrs}


def export_customer(session: Session, customer_id: str, key: bytes | None) -> dict[str, Any] | None:
    """Everything held about the customer, as one JSON-ready document; None if unknown.

    Suppressions and webhook records are found by each of the customer's addresses
    (plain or hashed, see :func:`suppression_keys`); the rest by customer id.
    """
    customer = session.get(Customer, customer_id)
    if customer is None:
        return None
    addresses = sorted(_addresses(session, customer))
    keys = sorted({k for address in addresses for k in suppression_keys(address, key)})
    consent = select(ConsentRecord).where(ConsentRecord.customer_id == customer_id)
    hashed_records = [
        r.email for r in session.scalars(consent) if r.email and r.email.startswith(HASH_PREFIX)
    ]
    keys = sorted({*keys, *hashed_records})
    orders = []
    for order in session.scalars(
        select(Order).where(Order.customer_id == customer_id).order_by(Order.ordered_at)
    ):
        lines = session.scalars(
            select(OrderLine).where(OrderLine.order_id == order.id).order_by(OrderLine.id)
        )
        orders.append({**_row(order), "lines": [_row(line) for line in lines]})
    return {
        "customer": _row(customer),
        "consent_records": [_row(r) for r in session.scalars(consent.order_by(ConsentRecord.id))],
        "events": [
            _row(e)
            for e in session.scalars(
                select(Event).where(Event.customer_id == customer_id).order_by(Event.id)
            )
        ],
        "orders": orders,
        "sends": [
            _row(s)
            for s in session.scalars(
                select(Send).where(Send.customer_id == customer_id).order_by(Send.id)
            )
        ],
        "suppressions": [
            _row(s) for s in session.scalars(select(Suppression).where(Suppression.email.in_(keys)))
        ],
        "webhook_events": [
            _row(w)
            for w in session.scalars(
                select(WebhookEvent)
                .where(WebhookEvent.recipient.in_(keys))
                .order_by(WebhookEvent.id)
            )
        ],
        "activity": [
            _row(a)
            for a in session.scalars(
                select(ActivityOutbox)
                .where(ActivityOutbox.customer_id == customer_id)
                .order_by(ActivityOutbox.id)
            )
        ],
    }


def occurred_before_erasure(occurred_at: datetime, forgotten_at: datetime | None) -> bool:
    """Whether an event that occurred at ``occurred_at`` is covered by the customer's
    erasure request of ``forgotten_at`` (None: none), and so is stored erased when it
    arrives after it: at or before the request's time."""
    return forgotten_at is not None and occurred_at <= forgotten_at


def erased_payload(payload: dict[str, Any], customer_id: str) -> dict[str, Any]:
    """A stored event's payload as an erasure leaves it: the customer block cut to the
    id, the rest (order, items) kept."""
    return {**payload, "customer": {"id": customer_id}}


def _stored_as_forgotten(
    session: Session, customer_id: str, now: datetime, asked: datetime
) -> bool:
    """Store a customer not known yet as its id and ``forgotten_at`` only; False when a
    concurrent transaction stored the customer first (its insert waited for that commit)."""
    from worker.records.customers import new_customer  # it imports this module

    try:
        with session.begin_nested():
            new_customer(session, customer_id, now).forgotten_at = asked
    except IntegrityError:
        return False
    return True


def forget_now(
    settings: Settings, customer_id: str, now: datetime, requested_at: datetime | None = None
) -> ForgetReport | None:
    """Forget one customer in its own transaction (``crosssell forget``, the event)."""
    key = forget_key(settings, create=True)
    assert key is not None
    with transaction(settings.resolved_database_url) as session:
        return forget_customer(session, customer_id, key, now, requested_at)


def forget_from_message(runtime: Runtime, body: bytes | str) -> bool:
    """Apply a ``forget`` event from the queue; False when the body is not one.

    Raises ``InvalidEvent`` for a ``forget`` that breaks the schema (it is then
    dead-lettered like any bad message). Forgetting is idempotent, so a lost database
    connection simply runs it again.
    """
    request = parse_forget(body)
    if request is None:
        return False
    customer_id = request.customer.id
    report = surviving_disconnects(
        partial(forget_now, runtime.settings, customer_id, runtime.clock.now(), request.occurred_at)
    )
    EVENTS.labels("forgotten" if report else "forget_unknown").inc()
    log.info(
        "forget %s: customer %s %s",
        request.id,
        customer_id,
        "erased"
        if report
        else "is not known here (recorded as forgotten: its earlier events"
        " arriving later are stored erased)",
        extra={"event_id": request.id, "outcome": "forgotten" if report else "unknown"},
    )
    return True
