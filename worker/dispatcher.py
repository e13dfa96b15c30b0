"""Move due sends from the outbox onto the task queue, and recover lost broker messages.

The database is the system of record, the broker carries only ids. Due rows become
``queued`` and are committed *before* their task ids are published; if a publish is lost
(or the broker forgets it), the sweeper re-publishes any send still ``queued`` after
``requeue_after``. The claim in the task makes a duplicate publish harmless. Delays live
in ``send_at``, never in Celery ETA/countdown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update

from triggers.durations import parse_duration
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


def _stale_queued(runtime: Runtime, now: datetime) -> tuple[list[int], int]:
    settings = runtime.settings
    cutoff = now - parse_duration(settings.requeue_after)
    sending_cutoff = now - parse_duration(settings.sending_timeout)
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
        stuck = session.execute(
            update(Send)
            .where(Send.status == "sending", Send.updated_at < sending_cutoff)
            .values(
                status="failed",
                reason="ambiguous",
                updated_at=now,
                detail="worker stopped after claiming the send and before recording the "
                "provider's answer; the provider may have it; not re-sent (docs/delivery.md)",
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
    return ids, len(stuck)


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
    stale, ambiguous = _stale_queued(runtime, now)
    if stale:
        log.warning("re-enqueueing %s send(s) whose task did not start in time", len(stale))
        enqueue(stale)
    return DispatchReport(len(ids), len(stale), expired, ambiguous)


def celery_enqueue(ids: Sequence[int]) -> None:
    from worker.tasks import deliver

    for send_id in ids:
        deliver.apply_async((send_id,), retry=True)


def run_dispatcher(
    runtime: Runtime, stop: threading.Event, enqueue: Enqueue = celery_enqueue
) -> None:
    """Poll until ``stop`` is set; a failing poll is logged and retried, never fatal."""
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
