"""Move due sends from the outbox onto the task queue, and recover lost work.

The database is the system of record, the broker carries only ids, in batches of
``delivery_batch``. Due rows become ``queued`` and are committed *before* their ids are
published; if a publish is lost (or the broker forgets it, or the dispatcher dies in
between), the sweeper re-publishes any send still ``queued`` after ``requeue_after``.
A worker's claim expires with its lease: an expired claim whose message was not handed
over goes back to ``queued`` and is re-published; one that was handed over is reported
ambiguous. The claim in the task makes a duplicate publish harmless. Delays live in
``send_at``, never in Celery ETA/countdown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy import case, func, or_, select, update

from triggers.durations import parse_duration
from triggers.outcomes import SkipReason
from worker.db import transaction
from worker.models import Send
from worker.runtime import Runtime
from worker.sequences import plan_due
from worker.startup import announce

log = logging.getLogger(__name__)
Enqueue = Callable[[Sequence[int]], None]


@dataclass(frozen=True, slots=True)
class DispatchReport:
    queued: int
    requeued: int
    expired: int
    ambiguous: int


def _claim_due(runtime: Runtime, now: datetime) -> tuple[list[int], int]:
    settings = runtime.settings
    with transaction(settings.resolved_database_url) as session:
        expired = session.execute(
            update(Send)
            .where(Send.status == "planned", Send.expires_at < now)
            .values(status="skipped", reason="expired", updated_at=now)
        )
        # Back-pressure: no more than dispatch_max_queued tasks wait in the broker, so a
        # large campaign waits in the outbox (where the sweeper does not see it) rather
        # than in a queue longer than requeue_after.
        waiting = session.scalar(
            select(func.count()).select_from(Send).where(Send.status == "queued")
        )
        room = min(settings.dispatch_batch, settings.dispatch_max_queued - int(waiting or 0))
        if room <= 0:
            return [], int(getattr(expired, "rowcount", 0) or 0)
        due = select(Send.id).where(Send.status == "planned", Send.send_at <= now)
        due = due.order_by(Send.send_at).limit(room)
        if session.bind is not None and session.bind.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        ids = list(session.scalars(due))
        if ids:
            session.execute(
                update(Send)
                .where(Send.id.in_(ids), Send.status == "planned")
                .values(status="queued", queued_at=now, updated_at=now)
            )
        return ids, int(getattr(expired, "rowcount", 0) or 0)


def _stale_queued(runtime: Runtime, now: datetime) -> tuple[list[int], list[int], int]:
    """The sweep: queued sends whose task did not start in time, expired claims, and the
    ambiguous ones. Returns the ids of the first two (to publish again, each logged once
    by what it was) and how many became ambiguous."""
    settings = runtime.settings
    cutoff = now - parse_duration(settings.requeue_after)
    # Claims made without a lease (a worker of an earlier version) committed only at the
    # hand-over: such a row is reported after the old timeout, as before.
    legacy_cutoff = now - parse_duration(settings.sending_timeout)
    with transaction(settings.resolved_database_url) as session:
        stale = select(Send.id).where(Send.status == "queued", Send.queued_at < cutoff)
        stale = stale.limit(settings.dispatch_batch)
        ids = list(session.scalars(stale))
        if ids:
            session.execute(
                update(Send)
                .where(Send.id.in_(ids), Send.status == "queued")
                .values(queued_at=now, updated_at=now)
            )
        # The worker died (or lost the database) before handing any of these over: no
        # message left, so they are queued again under no owner — unless this was the
        # max_claims-th such claim in a row: a message that kills its worker (OOM while
        # rendering) fails instead of crash-looping the fleet forever.
        exhausted = Send.claims >= settings.max_claims
        swept = session.execute(
            update(Send)
            .where(
                Send.status == "sending",
                Send.lease_expires_at < now,
                Send.handed_over_at.is_(None),
            )
            .values(
                status=case((exhausted, "failed"), else_="queued"),
                reason=case((exhausted, SkipReason.CLAIMS_EXHAUSTED.value), else_=Send.reason),
                detail=case(
                    (
                        exhausted,
                        f"claimed {settings.max_claims} times (CROSSSELL_MAX_CLAIMS) by "
                        "workers that stopped before handing it over; nothing was sent",
                    ),
                    else_=Send.detail,
                ),
                claim_token=None,
                lease_expires_at=None,
                queued_at=case((exhausted, Send.queued_at), else_=now),
                updated_at=now,
            )
            .returning(Send.id, Send.status)
        ).all()
        failed = [row.id for row in swept if row.status == "failed"]
        recovered = [row.id for row in swept if row.status != "failed"]
        stuck = session.execute(
            update(Send)
            .where(
                Send.status == "sending",
                or_(
                    (Send.lease_expires_at < now) & Send.handed_over_at.is_not(None),
                    Send.lease_expires_at.is_(None) & (Send.updated_at < legacy_cutoff),
                ),
            )
            .values(
                status="failed",
                reason="ambiguous",
                updated_at=now,
                detail="worker stopped after handing the message over and before recording "
                "the provider's answer; the provider may have it; not re-sent "
                "(docs/delivery.md)",
            )
            .returning(Send.id, Send.message_id)
        ).all()
    for send_id, message_id in stuck:
        log.error(
            "OPERATOR: send %s (Message-ID %s) is ambiguous: its worker stopped while the "
            "provider may have been accepting it; marked failed/ambiguous, not re-sent",
            send_id,
            message_id or "not recorded",
        )
    for send_id in failed:
        log.error(
            "OPERATOR: send %s failed/claims_exhausted: its worker stopped before the "
            "hand-over %s times in a row; not sent (docs/delivery.md)",
            send_id,
            settings.max_claims,
        )
    if recovered:
        log.warning(
            "%s send(s) claimed by a worker that stopped before handing them over: queued again",
            len(recovered),
        )
    return ids, recovered, len(stuck)


def _plan_steps(runtime: Runtime, now: datetime) -> None:
    """Due sequence steps become sends (``worker.sequences``) before the due ones are claimed."""
    settings = runtime.settings
    with transaction(settings.resolved_database_url) as session:
        plan_due(session, runtime.rules.current(), runtime.policy, now, settings.dispatch_batch)


def dispatch_once(runtime: Runtime, enqueue: Enqueue) -> DispatchReport:
    now = runtime.clock.now()
    _plan_steps(runtime, now)
    ids, expired = _claim_due(runtime, now)
    if ids:
        enqueue(ids)
    stale, recovered, ambiguous = _stale_queued(runtime, now)
    if stale:
        log.warning("re-enqueueing %s send(s) whose task did not start in time", len(stale))
    if stale or recovered:
        enqueue(stale + recovered)
    return DispatchReport(len(ids), len(stale) + len(recovered), expired, ambiguous)


def celery_enqueue(ids: Sequence[int], batch: int = 50) -> None:
    """Publish ``crosssell.deliver_batch`` tasks of at most ``batch`` ids each."""
    from worker.tasks import deliver_batch

    for first in range(0, len(ids), batch):
        deliver_batch.apply_async((list(ids[first : first + batch]),), retry=True)


def run_dispatcher(runtime: Runtime, stop: threading.Event, enqueue: Enqueue | None = None) -> None:
    """Poll until ``stop`` is set; a failing poll is logged and retried, never fatal."""
    if enqueue is None:
        enqueue = partial(celery_enqueue, batch=runtime.settings.delivery_batch)
    interval = runtime.settings.dispatch_interval
    announce(runtime, "dispatch")
    while not stop.is_set():
        try:
            report = dispatch_once(runtime, enqueue)
        except Exception:
            log.exception("dispatch failed; retrying in %.1fs", interval)
            stop.wait(interval * 5)
            continue
        if report.queued == 0:
            stop.wait(interval)
