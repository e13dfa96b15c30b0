"""The record of provider webhook events already applied: at most once per event.

The table is created by migration ``20261123_0004_webhook_events_and_lookup_indexes``.

* ``webhook_events`` gets one row per (provider, event_id) that
  :func:`worker.webhooks.apply.apply_events` has seen. Providers deliver at least once
  (SendGrid retries for up to 24 hours, Postmark for about 10.5, Mailgun for 8, SNS for
  at most one; each provider module states its source), so the unique constraint, not
  a read-then-write check, is what makes a retry — even one racing the first delivery
  in another process — change nothing: the row is inserted in a savepoint and a
  conflict means "already applied". This, not a short signature age, is the replay
  protection.
* The row is written in the same transaction as the suppression and the send update it
  caused, so an event is either fully applied and recorded, or neither.
* ``kind``, ``recipient`` and ``occurred_at`` make the table the record that soft
  bounces, deferrals and deliveries only need ("record only"), without a second table.
* ``event_id`` is at most 255 characters; longer provider ids are stored as their
  SHA-256 (see ``apply.storage_id``).
* Rows older than the longest provider retry window can be deleted; ``received_at`` is
  indexed for that. Keep at least 7 days.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from worker.core.models import AutoId, Base

EVENT_ID_LENGTH = 255


class WebhookEvent(Base):
    """One provider event that has been applied (or recognised as nothing to do)."""

    __tablename__ = "webhook_events"
    __table_args__ = (UniqueConstraint("provider", "event_id"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(EVENT_ID_LENGTH))
    kind: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str | None] = mapped_column(String(320))
    occurred_at: Mapped[datetime | None]
    received_at: Mapped[datetime] = mapped_column(index=True)
