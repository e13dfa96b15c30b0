"""Customer rows: the upsert an event carries, purchase aggregates, consent, and the
decision view.

Consent has two layers. The *effective* values live on the customer row
(``email_marketing``, ``opted_out_kinds``), where the engine reads them. The *history*
(:class:`worker.core.models.ConsentRecord`) says who decided what and when, and governs how a
CRM upsert may change the effective values:

* an opt-out recorded through crosssell (one-click, confirmation page, preference page,
  mailto, provider complaint, ``crosssell suppressions add``) *stands* until a later
  opt-in for the same scope;
* a CRM opt-in (``consent.email_marketing: true``) replaces a standing opt-out only if
  it carries ``consent.updated_at`` strictly later than the opt-out; otherwise the
  effective value stays ``false``;
* a CRM opt-out always applies (withdrawing consent needs no proof).

Per-kind preferences (``consent.kinds`` from the CRM, the preference page here) follow
the same rule, each kind on its own.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal

from sqlalchemy import JSON, Dialect, Row, Table, Text, cast, delete, func, inspect, select, text
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.orm.state import InstanceState

from triggers.addresses import lookup_key
from triggers.events import Consent, CustomerData, PurchaseEvent
from triggers.facts import CustomerProfile, apply_customer, apply_purchase, purchase_of
from worker.core.dialect_insert import among, array_parameter
from worker.core.models import ConsentRecord, Customer, Suppression
from worker.records.activity import record_activity
from worker.records.privacy import suppression_keys

log = logging.getLogger(__name__)

# The consent scope of all marketing email; the other scopes are campaign kinds.
EMAIL_MARKETING = "email_marketing"
# The source of decisions the CRM reports; every other source is a crosssell channel.
CRM = "crm"


def upsert_customer(session: Session, data: CustomerData, now: datetime) -> Customer:
    """Create or update a customer; only the fields the event gives replace stored ones.

    A CRM opt-in that would undo a standing crosssell opt-out without being newer than
    it is ignored (module docstring).
    """
    locked = session.get(Customer, data.id, with_for_update=True)
    return apply_upsert_profiled(session, locked, data, now)[0]


def lock_customers(session: Session, ids: Iterable[str]) -> dict[str, Customer]:
    """The stored customers among ``ids``, locked until the transaction ends (one query).

    Locked in id order, so two consumers whose batches share customers take the locks in
    the same order and wait for each other instead of deadlocking. On PostgreSQL the
    JSON columns come as their stored text and are decoded together
    (:func:`_load_json_columns`)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    statement = (
        select(Customer).where(among(session, Customer.id, wanted)).order_by(Customer.id)
    ).with_for_update()
    dialect = session.get_bind().dialect
    if dialect.name != "postgresql":
        return {customer.id: customer for customer in session.scalars(statement)}
    rows = session.execute(
        statement.add_columns(*(cast(_CUSTOMERS.c[name], Text) for name in _JSON_NAMES)).options(
            *(defer(getattr(Customer, name)) for name in _JSON_NAMES)
        )
    ).all()
    _load_json_columns(dialect, rows)
    return {row[0].id: row[0] for row in rows}


def _load_json_columns(dialect: Dialect, rows: Sequence[Row[Any]]) -> None:
    """Give each customer its JSON columns from their stored texts (``rows``: a customer,
    then one text per :data:`_JSON_NAMES`), decoded by one call of the engine's JSON
    deserializer on one array of them.

    Loaded as columns, each document is decoded by its own call, four per customer:
    lock_customers for 200 customers took 3.8 ms of CPU that way and 3.0-3.2 ms this way
    (minimum of 150, collector as the consumer sets it), when each call still built its
    own decoder. With the decoder built once (``worker.core.db.json_loads``), 800 small
    documents still decode in 0.12 ms as one array against 0.64 ms one by one (timeit).
    A ``json`` value is valid JSON text, so the array decodes to the same values. A
    customer the session already held keeps the values it has, as the ORM's load does:
    only attributes the load left unloaded are set, as committed."""
    targets: list[tuple[Customer, str]] = []
    documents: list[str] = []
    for row in rows:
        customer: Customer = row[0]
        loaded = customer.__dict__
        texts: tuple[str | None, ...] = tuple(row[1:])
        for name, document in zip(_JSON_NAMES, texts, strict=True):
            if name in loaded:
                continue
            if document is None:
                set_committed_value(customer, name, None)
                continue
            targets.append((customer, name))
            documents.append(document)
    if not documents:
        return
    deserializer = getattr(dialect, "_json_deserializer", None) or json.loads
    values = deserializer("[" + ",".join(documents) + "]")
    for (customer, name), value in zip(targets, values, strict=True):
        set_committed_value(customer, name, value)


def write_customers(session: Session, customers: Iterable[Customer]) -> int:
    """Write the changed columns of ``customers`` (persistent rows the caller has locked)
    in as few statements as there are distinct sets of changed columns, and mark them
    unchanged for the ORM; the number of customers written. PostgreSQL only: elsewhere
    this writes nothing and the next ``Session.flush`` does it.

    Each statement is ``UPDATE customers … FROM unnest(:ids, :col, …)``, one array per
    column, so its text does not depend on the batch: the ORM's flush sends one
    ``UPDATE`` per customer (200 per ingest batch), which was ≈ 0.09 ms of client CPU per
    event in ``bench.ingest`` (docs/performance.md, "Ingest"). The values go through each
    column's bind processing, as the ORM's would; a customer with a JSON column holding
    anything but an object or an array is left to the ORM. Raises ``StaleDataError`` if a
    row is missing (the ORM's own check), and what the database raises."""
    if session.get_bind().dialect.name != "postgresql":
        return 0
    groups: dict[tuple[str, ...], list[InstanceState[Customer]]] = {}
    for customer in customers:
        state = inspect(customer)
        if not state.persistent or not state.modified:
            continue
        committed = state.committed_state
        changed = tuple(name for name in _WRITABLE if name in committed)
        if (
            changed
            and len(changed) == len(committed)
            and all(
                isinstance(getattr(customer, name), dict | list)
                for name in changed
                if name in _JSON_COLUMNS
            )
        ):
            groups.setdefault(changed, []).append(state)
    dialect = session.get_bind().dialect
    written = 0
    for changed, group in groups.items():
        sql, processors = _update_plan(dialect, changed)
        parameters: dict[str, Any] = {"ids": array_parameter([state.dict["id"] for state in group])}
        for index, (name, process) in enumerate(zip(changed, processors, strict=True)):
            values = [state.dict[name] for state in group]
            if name in _JSON_COLUMNS:
                serializer = getattr(dialect, "_json_serializer", None) or json.dumps
                parameters[f"c{index}"] = serializer(values)
            else:
                parameters[f"c{index}"] = array_parameter(
                    values if process is None else [process(v) for v in values]
                )
        with session.no_autoflush:  # the ORM would write these customers first
            result = session.execute(text(sql), parameters)
        matched = getattr(result, "rowcount", len(group))
        if matched != len(group):
            raise StaleDataError(
                f"UPDATE statement on table 'customers' expected to update {len(group)} "
                f"row(s); {matched} were matched."
            )
        # What the flush does once it has written a row: every attribute committed, the
        # row no longer modified (so the next flush has nothing to look at).
        InstanceState._commit_all_states(
            [(state, state.dict) for state in group], session.identity_map
        )
        written += len(group)
    return written


_CUSTOMERS: Table = Customer.__table__  # type: ignore[assignment]
_WRITABLE = tuple(column.name for column in _CUSTOMERS.c if column.name != "id")
_JSON_COLUMNS = frozenset(column.name for column in _CUSTOMERS.c if isinstance(column.type, JSON))
_JSON_NAMES = tuple(sorted(_JSON_COLUMNS))
# A length or precision on an array cast would cut a value (PostgreSQL truncates on an
# explicit cast to VARCHAR(n)); cast to the bare type and let the column refuse it.
_TYPE_MODIFIER = re.compile(r"\(\d+(?:,\s*\d+)?\)")


@lru_cache(maxsize=64)
def _update_plan(
    dialect: Dialect, changed: tuple[str, ...]
) -> tuple[str, list[Callable[[Any], Any] | None]]:
    """The ``UPDATE … FROM unnest`` text for these columns and each one's bind processor."""
    quote = dialect.identifier_preparer.quote
    arrays = ["CAST(:ids AS VARCHAR[])"]
    processors: list[Callable[[Any], Any] | None] = []
    for index, name in enumerate(changed):
        column_type = _CUSTOMERS.c[name].type
        sql_type = _TYPE_MODIFIER.sub("", column_type.compile(dialect=dialect))
        if name in _JSON_COLUMNS:
            # One JSON array of the documents, split back in order (as insert_rows does).
            function = "jsonb_array_elements" if sql_type == "JSONB" else "json_array_elements"
            processors.append(None)
            arrays.append(
                f"ARRAY(SELECT value FROM {function}(CAST(:c{index} AS {sql_type}))"
                " WITH ORDINALITY ORDER BY ordinality)"
            )
        else:
            processors.append(column_type.bind_processor(dialect))
            arrays.append(f"CAST(:c{index} AS {sql_type}[])")
    table = quote(_CUSTOMERS.name)
    names = ", ".join(quote(name) for name in changed)
    sql = (
        f"UPDATE {table} SET "
        + ", ".join(f"{quote(name)} = changed.{quote(name)}" for name in changed)
        + f" FROM unnest({', '.join(arrays)}) AS changed(id, {names})"
        + f" WHERE {table}.id = changed.id"
    )
    return sql, processors


def new_customer(session: Session, customer_id: str, now: datetime) -> Customer:
    """A customer the database does not know yet, with empty aggregates, added to the
    session (its profile comes from :func:`apply_upsert_profiled`, with ``created=True``)."""
    customer = Customer(
        id=customer_id,
        attributes={},
        categories_bought=[],
        skus_owned=[],
        orders_count=0,
        lifetime_spend=Decimal(0),
        created_at=now,
        updated_at=now,
    )
    session.add(customer)
    return customer


def apply_upsert_profiled(
    session: Session,
    customer: Customer | None,
    data: CustomerData,
    now: datetime,
    *,
    created: bool = False,
    purchase: PurchaseEvent | None = None,
) -> tuple[Customer, CustomerProfile]:
    """:func:`upsert_customer` on a row the caller has already locked; returns the row and
    the profile it stored, equal to what :func:`profile_of` reads back from the row,
    without reading it again (ingest decides on it next). None is a customer the
    database does not know yet (added to the session); so is one just made by
    :func:`new_customer` (``created``): no consent history to govern or record yet.

    ``purchase`` (a new order of this customer's; the caller knows it is new) also
    updates the purchase aggregates, in the same pass over the row: one profile read and
    one write per event. Its rows come from :func:`order_rows`."""
    if customer is None:
        customer = new_customer(session, data.id, now)
        created = True
    before = customer.email_marketing
    profile = apply_customer(profile_of(customer), data)
    customer.updated_at = now
    if not created and data.consent is not None and profile.email_marketing != before:
        profile = _governed(session, customer, data.consent, profile, now)
    if purchase is not None:
        profile = apply_purchase(profile, *purchase_of(purchase))
    _store(customer, profile)
    if data.consent is not None and data.consent.kinds:
        _apply_kinds(session, customer, data.consent, now, record=not created)
    return customer, profile


# How far a CRM's clock may run ahead of ours before its ``updated_at`` stops being
# believed (NTP keeps real clocks within a second; a few minutes covers a slow sync).
CLOCK_SKEW = timedelta(minutes=5)


def _decided_at(consent: Consent, now: datetime) -> datetime | None:
    """When the CRM says the customer decided. A time slightly later than ``now`` (a CRM
    clock a little ahead of ours) counts as now, since a decision cannot postdate its
    report; one more than ``CLOCK_SKEW`` ahead is no proof of anything (a clock or
    time-zone bug) and counts as absent, so it can never lift an opt-out made later."""
    if consent.updated_at is None or consent.updated_at > now + CLOCK_SKEW:
        return None
    return min(consent.updated_at, now)


def _apply_kinds(
    session: Session, customer: Customer, consent: Consent, now: datetime, *, record: bool
) -> None:
    """The CRM's per-kind answers, under the same rule as ``email_marketing``: opting out
    of a kind always applies; opting in again must be newer than a standing crosssell
    opt-out of that kind."""
    assert consent.kinds is not None
    decided_at = _decided_at(consent, now)
    opted_out = set(customer.opted_out_kinds or ())
    changed = False
    for kind, wanted in sorted(consent.kinds.items()):
        if wanted == (kind not in opted_out):
            continue
        if wanted and record:
            standing = standing_opt_out(session, customer.id, kind)
            if standing is not None and (decided_at is None or decided_at <= standing):
                log.info(
                    "customer %s: CRM opt-in to %s ignored, it is not newer than the opt-out of %s",
                    customer.id,
                    kind,
                    standing.isoformat(),
                )
                continue
        if wanted:
            opted_out.discard(kind)
        else:
            opted_out.add(kind)
        changed = True
        if record:
            record_decision(
                session,
                customer,
                kind,
                granted=wanted,
                source=CRM,
                decided_at=decided_at or now,
                now=now,
            )
    if changed:
        customer.opted_out_kinds = sorted(opted_out)


def _governed(
    session: Session,
    customer: Customer,
    consent: Consent,
    profile: CustomerProfile,
    now: datetime,
) -> CustomerProfile:
    """The profile with the CRM's consent change applied or refused, and recorded."""
    decided_at = _decided_at(consent, now)
    standing = standing_opt_out(session, customer.id, EMAIL_MARKETING)
    if profile.email_marketing and standing is not None:
        if decided_at is None or decided_at <= standing:
            log.info(
                "customer %s: CRM opt-in ignored, it is not newer than the opt-out of %s",
                customer.id,
                standing.isoformat(),
            )
            return replace(profile, email_marketing=False)
        _lift_unsubscribe_suppression(session, profile.email, decided_at)
    if profile.email_marketing is not None:
        record_decision(
            session,
            customer,
            EMAIL_MARKETING,
            granted=profile.email_marketing,
            source=CRM,
            decided_at=decided_at or now,
            now=now,
            email=profile.email,
        )
    return profile


def standing_opt_out(session: Session, customer_id: str, scope: str) -> datetime | None:
    """When the crosssell-recorded opt-out that still stands for ``scope`` was made:
    the latest non-CRM opt-out with no opt-in (from any source) strictly after it.
    None when nothing stands. Flushes first: ingest plans a batch without autoflush, and
    a decision an earlier event of the batch recorded must count."""
    session.flush()
    last_out = session.scalar(
        select(ConsentRecord.decided_at)
        .where(
            ConsentRecord.customer_id == customer_id,
            ConsentRecord.scope == scope,
            ConsentRecord.granted.is_(False),
            ConsentRecord.source != CRM,
        )
        .order_by(ConsentRecord.decided_at.desc())
        .limit(1)
    )
    if last_out is None:
        return None
    later_opt_in = session.scalar(
        select(func.count())
        .select_from(ConsentRecord)
        .where(
            ConsentRecord.customer_id == customer_id,
            ConsentRecord.scope == scope,
            ConsentRecord.granted.is_(True),
            ConsentRecord.decided_at > last_out,
        )
    )
    return None if later_opt_in else last_out


def record_decision(
    session: Session,
    customer: Customer,
    scope: str,
    *,
    granted: bool,
    source: str,
    decided_at: datetime,
    now: datetime,
    email: str | None = None,
    detail: str | None = None,
) -> ConsentRecord:
    """Append one decision to the customer's consent history (the row is flushed with
    the customer, whose row must exist first)."""
    session.flush()
    record = ConsentRecord(
        customer_id=customer.id,
        scope=scope,
        granted=granted,
        source=source[:64],
        email=email if email is not None else customer.email,
        detail=detail[:200] if detail else None,
        decided_at=decided_at,
        recorded_at=now,
    )
    session.add(record)
    return record


def withdraw_consent(
    session: Session,
    customer: Customer,
    source: str,
    now: datetime,
    *,
    decided_at: datetime | None = None,
    detail: str | None = None,
    activity: Literal["unsubscribed", "complained"] = "unsubscribed",
) -> bool:
    """Opt the customer out of all marketing email through a crosssell channel.

    Records the decision and clears ``email_marketing``. Every request is recorded, a
    repeated one too (the latest opt-out is the one a CRM opt-in must be newer than),
    but repeating it changes nothing the customer sees. Each record is also an
    ``activity`` event (``worker.records.activity``) at the decision time, with ``changed``
    saying whether consent was on before. True if consent was on before.
    """
    record = record_decision(
        session,
        customer,
        EMAIL_MARKETING,
        granted=False,
        source=source,
        decided_at=decided_at or now,
        now=now,
        detail=detail,
    )
    withdrawn = customer.email_marketing is not False
    session.flush()  # the record's id names the activity event
    record_activity(
        session,
        activity,
        customer.id,
        {"scope": EMAIL_MARKETING, "source": record.source, "changed": withdrawn},
        record.decided_at,
        source=f"consent-{record.id}",
    )
    customer.email_marketing = False
    customer.updated_at = now
    return withdrawn


def set_kind_preferences(
    session: Session, customer: Customer, opted_out: set[str], source: str, now: datetime
) -> list[str]:
    """Store the campaign kinds the customer does not want, recording each change (an
    opt-out, or an opt-in to a kind opted out before) in the history; the kinds changed."""
    current = set(customer.opted_out_kinds or ())
    changed = sorted(current ^ opted_out)
    for kind in changed:
        record_decision(
            session,
            customer,
            kind,
            granted=kind not in opted_out,
            source=source,
            decided_at=now,
            now=now,
        )
    if changed:
        customer.opted_out_kinds = sorted(opted_out)
        customer.updated_at = now
    return changed


def customers_with_address(session: Session, email: str) -> list[Customer]:
    """Every customer whose current address has the same canonical suppression key as
    ``email`` (triggers.addresses: A-label and Unicode domains, any case, are one).

    Stored addresses are canonical (normalised domain, local part's case kept), so the
    candidates are those on the same domain; the key decides. A database's ``lower()``
    is not used: SQLite's folds ASCII only."""
    address = lookup_key(email)
    domain = address.rpartition("@")[2]
    candidates = session.scalars(select(Customer).where(Customer.email.like(f"%@{domain}")))
    return [c for c in candidates if c.email and lookup_key(c.email) == address]


def _lift_unsubscribe_suppression(
    session: Session, email: str | None, resubscribed_at: datetime
) -> None:
    """A re-subscription newer than an unsubscribe also lifts the address suppression
    that unsubscribe added. Complaints and bounces stay: they are about the address,
    and only an operator lifts them (``crosssell suppressions remove``)."""
    if not email:
        return
    session.execute(
        delete(Suppression).where(
            Suppression.email.in_(suppression_keys(email)),
            Suppression.reason == "unsubscribe",
            Suppression.created_at < resubscribed_at,
        )
    )


def order_rows(
    customer_id: str, event: PurchaseEvent
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``orders`` row of a new order and its ``order_lines`` rows, for the caller to
    insert (:func:`apply_upsert_profiled` with ``purchase`` updates the customer's aggregates)."""
    data = event.data
    order = {
        "id": data.order_id,
        "customer_id": customer_id,
        "event_id": event.id,
        "currency": data.currency,
        "total": data.total,
        "ordered_at": event.occurred_at,
    }
    lines = [
        {
            "order_id": data.order_id,
            "sku": item.sku,
            "category": item.category,
            "quantity": item.quantity,
            "unit_price": item.unit_price,
        }
        for item in data.items
    ]
    return order, lines


def _store(customer: Customer, profile: CustomerProfile) -> None:
    """Write a profile back to its row (only what changed is updated by the ORM)."""
    for name in (
        "email",
        "first_name",
        "last_name",
        "locale",
        "timezone",
        "email_marketing",
        "orders_count",
        "lifetime_spend",
        "first_purchase_at",
        "last_purchase_at",
    ):
        if getattr(customer, name) != getattr(profile, name):
            setattr(customer, name, getattr(profile, name))
    if dict(customer.attributes or {}) != dict(profile.attributes):
        customer.attributes = dict(profile.attributes)
    if set(customer.categories_bought or ()) != profile.categories_bought:
        customer.categories_bought = sorted(profile.categories_bought)
    if set(customer.skus_owned or ()) != profile.skus_owned:
        customer.skus_owned = sorted(profile.skus_owned)


def profile_of(customer: Customer) -> CustomerProfile:
    return CustomerProfile(
        id=customer.id,
        email=customer.email,
        first_name=customer.first_name,
        last_name=customer.last_name,
        locale=customer.locale,
        timezone=customer.timezone,
        email_marketing=customer.email_marketing,
        orders_count=customer.orders_count or 0,
        lifetime_spend=customer.lifetime_spend or Decimal(0),
        first_purchase_at=customer.first_purchase_at,
        last_purchase_at=customer.last_purchase_at,
        categories_bought=frozenset(customer.categories_bought or ()),
        skus_owned=frozenset(customer.skus_owned or ()),
        attributes=dict(customer.attributes or {}),
    )


def is_suppressed(session: Session, email: str | None) -> bool:
    """Whether the address is suppressed: as its canonical key (triggers.addresses, so
    ``Ana@EXÄMPLE.ro`` and ``ana@xn--exmple-cua.ro`` are one address) or as the keyed
    hash a ``forget`` left in its place (``worker.records.privacy.suppression_keys``)."""
    if email is None:
        return False
    keys = suppression_keys(email)
    return session.scalar(select(Suppression.email).where(Suppression.email.in_(keys))) is not None
