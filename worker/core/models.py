"""The system of record: every accepted event and every planned email is a row here."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from worker.core.db_types import Money, UTCDateTime

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
AutoId = BigInteger().with_variant(Integer, "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        Decimal: Money(),
        dict[str, Any]: JSON(),
    }


class Customer(Base):
    """A CRM customer: the profile given by events plus aggregates kept at ingest."""

    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    first_name: Mapped[str | None] = mapped_column(String(100))
    last_name: Mapped[str | None] = mapped_column(String(100))
    locale: Mapped[str | None] = mapped_column(String(35))
    timezone: Mapped[str | None] = mapped_column(String(64))
    email_marketing: Mapped[bool | None] = mapped_column(Boolean)
    # Campaign kinds the customer opted out of on the preferences page.
    opted_out_kinds: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    orders_count: Mapped[int] = mapped_column(Integer, default=0)
    lifetime_spend: Mapped[Decimal] = mapped_column(default=Decimal(0))
    first_purchase_at: Mapped[datetime | None]
    last_purchase_at: Mapped[datetime | None]
    categories_bought: Mapped[list[str]] = mapped_column(JSON, default=list)
    skus_owned: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # When the customer's personal data was last erased (``worker.records.privacy``): an
    # event that occurred before it and arrives after it is stored erased (migration 0017).
    forgotten_at: Mapped[datetime | None] = mapped_column(default=None)


class ConsentRecord(Base):
    """One consent decision: who (``customer_id``) decided what (``scope``, ``granted``),
    when (``decided_at``) and through which channel (``source``).

    The history is append-only and belongs to the customer, not to an address, so an
    opt-out survives address changes. The effective values stay where the engine reads
    them (``customers.email_marketing``, ``customers.opted_out_kinds``); this table
    governs how a CRM upsert may change them (see ``worker.records.customers``).

    ``scope`` is ``email_marketing`` (all marketing email) or a campaign kind
    (``cross_sell``, ``upsell``, ``loyalty``, ``reengagement``). ``source`` is the channel:
    ``one-click`` (RFC 8058), ``confirmation-page``, ``preference-page``, ``mailto``,
    ``webhook:<provider>``, ``cli`` or ``crm``.
    """

    __tablename__ = "consent_records"
    __table_args__ = (
        Index(
            "ix_consent_records_customer_id_scope_decided_at", "customer_id", "scope", "decided_at"
        ),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"))
    scope: Mapped[str] = mapped_column(String(32))
    granted: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(64))
    # The address the customer had when deciding (for audits; the decision is the person's).
    email: Mapped[str | None] = mapped_column(String(320))
    detail: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[datetime]
    recorded_at: Mapped[datetime]


class Product(Base):
    """A catalog entry; ``line`` and ``tier`` let an upsell find a better version.

    ``name`` and ``description`` are the default texts; ``name_i18n`` and
    ``description_i18n`` map a lower-case BCP 47 language tag (``ro``, ``it``,
    ``pt-br``) to the text in that language, looked up for the customer's locale by
    :func:`worker.offers.catalog.localized` (RFC 4647 section 3.4 lookup).
    """

    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    name_i18n: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, server_default="{}")
    description: Mapped[str | None] = mapped_column(Text)
    description_i18n: Mapped[dict[str, str]] = mapped_column(
        JSON, default=dict, server_default="{}"
    )
    category: Mapped[str] = mapped_column(String(128), index=True)
    price: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(3))
    in_stock: Mapped[bool] = mapped_column(Boolean, default=True)
    url: Mapped[str | None] = mapped_column(String(500))
    image_url: Mapped[str | None] = mapped_column(String(500))
    line: Mapped[str | None] = mapped_column(String(128), index=True)
    tier: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime]


class Event(Base):
    """The inbox: one row per accepted CRM event; ``event_id`` makes ingest idempotent."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]]
    outcome: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    event_id: Mapped[str] = mapped_column(String(128))
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[Decimal]
    ordered_at: Mapped[datetime] = mapped_column(index=True)


class OrderLine(Base):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    sku: Mapped[str] = mapped_column(String(128), index=True)
    category: Mapped[str] = mapped_column(String(128))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal]


class Send(Base):
    """The outbox: one row per planned, held-out or skipped email, with its reason.

    ``dedupe_key`` is unique per (campaign, customer, dedupe window), so the plan is
    idempotent; the email's ``Message-ID`` is derived from ``id``.
    """

    __tablename__ = "sends"
    # A status change cannot be a HOT update (``status`` is indexed), so each of a send's
    # four updates (queued, claimed, handed over, sent) writes an entry in every index
    # whose predicate its new version meets. The lookup columns that stay NULL until late
    # in the life of a send are indexed only where set: every query on them is an
    # equality, which implies ``IS NOT NULL``. ``claim_token`` and ``event_id`` are not
    # indexed (see the columns). Migration 0016, docs/performance.md ("PostgreSQL work
    # per email").
    __table_args__ = (
        Index("ix_sends_status_send_at", "status", "send_at"),
        *(
            Index(
                f"ix_sends_{column}",
                column,
                postgresql_where=text(f"{column} IS NOT NULL"),
                sqlite_where=text(f"{column} IS NOT NULL"),
            )
            for column in ("provider_message_id", "message_id", "enrollment_id")
        ),
        Index(
            "uq_sends_coupon_code",
            "coupon_code",
            unique=True,
            postgresql_where=text("coupon_code IS NOT NULL"),
            sqlite_where=text("coupon_code IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(String(80), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    variant: Mapped[str | None] = mapped_column(String(40))
    template: Mapped[str | None] = mapped_column(String(80))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    # Not indexed: no query looks a send up by its event (migration 0016).
    event_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    dedupe_key: Mapped[str] = mapped_column(String(400), unique=True)
    send_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    queued_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    message_id: Mapped[str | None] = mapped_column(String(255))
    coupon_code: Mapped[str | None] = mapped_column(String(40))
    coupon_expires_at: Mapped[datetime | None]
    # The sequence step this email is (``enrollments``); None for a one-email campaign.
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("enrollments.id"), default=None)
    step_id: Mapped[str | None] = mapped_column(String(40), default=None)
    # The worker batch that owns a ``sending`` row, until when (renewed while it works),
    # and when this attempt's message was handed to the provider (docs/delivery.md).
    # Not indexed (migration 0016): a worker names its rows by id; only the lease renewal
    # looks rows up by token, among the ``sending`` ones (``ix_sends_status_send_at``).
    # With an index, the planner took it over the primary key for the hand-over
    # (``id = … AND claim_token = …``) and read the whole batch's entries for each row.
    claim_token: Mapped[str | None] = mapped_column(String(32), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    handed_over_at: Mapped[datetime | None] = mapped_column(default=None)
    # Claims since the last hand-over or release: the sweeper fails a send whose claim
    # expired CROSSSELL_MAX_CLAIMS times (a message that kills its worker), migration 0014.
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class RateLimitState(Base):
    """One provider's shared send rate: the theoretical arrival time (epoch seconds) of
    its next message (see ``worker.process.rate_limit``)."""

    __tablename__ = "rate_limits"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    tat: Mapped[float] = mapped_column(Float)


class ProductAffinity(Base):
    """ "Customers who bought ``sku`` also bought ``other_sku``": cosine similarity over
    customers' purchase sets, kept only with enough customers behind it (``support``)."""

    __tablename__ = "product_affinities"
    __table_args__ = (Index("ix_product_affinities_sku_score", "sku", "score"),)

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    other_sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    support: Mapped[int] = mapped_column(Integer)


class ProductStats(Base):
    """How many distinct customers bought each product: category bestsellers."""

    __tablename__ = "product_stats"
    __table_args__ = (Index("ix_product_stats_category_buyers", "category", "buyers"),)

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    category: Mapped[str] = mapped_column(String(128))
    buyers: Mapped[int] = mapped_column(Integer)
    computed_at: Mapped[datetime]


class CatalogVersion(Base):
    """One row (``id`` 1) whose ``version`` changes with every write to ``products``,
    ``product_affinities`` or ``product_stats``: triggers set it to a fresh random token
    (migration 0015), so a process holding a copy of the catalog knows with one read
    whether its copy is still the committed catalog. Written only by those triggers."""

    __tablename__ = "catalog_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[str] = mapped_column(String(32))


class Suppression(Base):
    """Addresses never to email again (hard bounce, complaint, unsubscribe, manual)."""

    __tablename__ = "suppressions"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    source: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]


class ActivityOutbox(Base):
    """One activity event waiting to be published to the activity exchange (or already
    published: ``published_at`` set after the broker's confirm).

    Written in the same transaction as the state change it reports, so the event exists
    exactly when the change does (the transactional outbox pattern). ``activity_id`` is
    stable and derived from the source row (``email_sent:send-42``), so a consumer
    de-duplicates by it. ``data`` holds ids, codes and amounts only, never personal data.
    """

    __tablename__ = "activity_outbox"
    __table_args__ = (Index("ix_activity_outbox_published_at_id", "published_at", "id"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    activity_id: Mapped[str] = mapped_column(String(200), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    customer_id: Mapped[str] = mapped_column(String(128), index=True)
    occurred_at: Mapped[datetime]
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(index=True)
    published_at: Mapped[datetime | None]


class SendOffer(Base):
    """The products a send offered — or, for a held-out send, would have offered.

    Resolved once, at planning time, for every planned and held-out send alike (see
    ``worker.decide.attribution``), so the direct/influenced split of a conversion is decided
    the same way in the emailed and the control group. ``skus`` is empty with a
    ``reason`` when the offer could not be resolved (``offer_unavailable`` …)."""

    __tablename__ = "send_offers"

    send_id: Mapped[int] = mapped_column(
        AutoId, ForeignKey("sends.id", ondelete="CASCADE"), primary_key=True
    )
    skus: Mapped[list[str]] = mapped_column(JSON, default=list)
    reason: Mapped[str | None] = mapped_column(String(64))
    resolved_at: Mapped[datetime]


class Conversion(Base):
    """A purchase attributed to one campaign's touch (a sent or held-out send).

    One row per (order, campaign): a redelivered purchase or a second reconciliation
    pass cannot count it twice. ``revenue`` is the order's total in its own
    ``currency``; ``credited`` marks the one row per order that the cross-campaign
    total counts (the latest sent touch, see ``triggers.attribution``)."""

    __tablename__ = "conversions"
    __table_args__ = (UniqueConstraint("order_id", "campaign_id"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    campaign_id: Mapped[str] = mapped_column(String(80), index=True)
    send_id: Mapped[int] = mapped_column(ForeignKey("sends.id", ondelete="CASCADE"), index=True)
    variant: Mapped[str | None] = mapped_column(String(40))
    arm: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    credited: Mapped[bool] = mapped_column(Boolean)
    revenue: Mapped[Decimal]
    currency: Mapped[str] = mapped_column(String(3))
    ordered_at: Mapped[datetime] = mapped_column(index=True)
    touched_at: Mapped[datetime]
    attributed_at: Mapped[datetime]


class Enrollment(Base):
    """One customer's way through a sequence (a campaign with ``steps``), from one entry.

    ``entry_slot`` is unique per (campaign, customer): ``once`` for ``reenter: never``,
    ``active`` while an enrollment runs, ``ended:<id>`` once it has ended — so two events
    racing to enroll the same customer leave one row, whatever the isolation level.
    ``done`` lists the step ids already sent or skipped, in order; ``next_step_id`` and
    ``next_due_at`` are the step that comes next and when (what the planner polls).
    Variant and holdout are fixed at entry. ``offered_skus`` (the products the
    enrollment's emails offered) and ``purchased_since_entry`` /
    ``categories_since_entry`` feed the exit rules and ``only_if``.
    """

    __tablename__ = "enrollments"
    __table_args__ = (
        UniqueConstraint("campaign_id", "customer_id", "entry_slot"),
        UniqueConstraint("campaign_id", "entry_event_id"),
        Index("ix_enrollments_status_next_due_at", "status", "next_due_at"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(String(80))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    entry_event_id: Mapped[str] = mapped_column(String(128))
    entry_slot: Mapped[str] = mapped_column(String(40))
    entered_at: Mapped[datetime]
    variant: Mapped[str] = mapped_column(String(40))
    held_out: Mapped[bool] = mapped_column(Boolean)
    # active | exited | completed
    status: Mapped[str] = mapped_column(String(16))
    done: Mapped[list[str]] = mapped_column(JSON, default=list)
    steps_sent: Mapped[int] = mapped_column(Integer, default=0)
    last_step_at: Mapped[datetime | None]
    next_step_id: Mapped[str | None] = mapped_column(String(40))
    next_due_at: Mapped[datetime | None]
    offered_skus: Mapped[list[str]] = mapped_column(JSON, default=list)
    purchased_since_entry: Mapped[bool] = mapped_column(Boolean, default=False)
    categories_since_entry: Mapped[list[str]] = mapped_column(JSON, default=list)
    exit_reason: Mapped[str | None] = mapped_column(String(32))
    exit_event_id: Mapped[str | None] = mapped_column(String(128))
    exited_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
