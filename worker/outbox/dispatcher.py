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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import cast

from sqlalchemy import Table, case, func, or_, select, update

from triggers.durations import parse_duration
from triggers.outcomes import SkipReason
from worker.core.db import engine_for, plan_for_this_batch, transaction
from worker.core.models import Send
from worker.core.wakeup import STEPS, Waiter
from worker.decide.sequences import plan_due
from worker.process.collector import collector_if_own_process
from worker.process.runtime import Runtime
from worker.process.startup import announce

log = logging.getLogger(__name__)
Enqueue = Callable[[Sequence[int]], None]
SENDS_TABLE = cast(Table, Send.__table__)
# Woken passes start at least this long apart, so that ingest's commits of one moment
# (one every CROSSSELL_INGEST_LINGER while events stream in) share a pass: a wake-up
# within this interval of the last pass's start waits for the rest of it, one after a
# quiet moment runs its pass at once (the first email of a burst waits for no interval).
WAKE_COALESCE_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class DispatchReport:
    queued: int
    requeued: int
    expired: int
    ambiguous: int
    steps_left: bool = False
    """The step planner took a full batch: more due steps may wait for the next pass."""


def _claim_due(runtime: Runtime, now: datetime, expire: bool = True) -> tuple[list[int], int]:
    """Due ``planned`` sends become ``queued`` (at most ``dispatch_batch``, fewer when the
    broker holds ``dispatch_max_queued``): their ids, oldest due first, and how many
    sends expired (``expire``: the housekeeping pass only). One transaction on SQLAlchemy
    Core: the claim is a single ``UPDATE … RETURNING``."""
    settings = runtime.settings
    sends = SENDS_TABLE
    expired = 0
    with engine_for(settings.resolved_database_url).begin() as connection:
        if expire:
            result = connection.execute(
                update(sends)
                .where(sends.c.status == "planned", sends.c.expires_at < now)
                .values(status="skipped", reason="expired", updated_at=now)
            )
            expired = int(result.rowcount or 0)
        # Back-pressure: no more than dispatch_max_queued tasks wait in the broker, so a
        # large campaign waits in the outbox (where the sweeper does not see it) rather
        # than in a queue longer than requeue_after.
        waiting = connection.scalar(
            select(func.count()).select_from(sends).where(sends.c.status == "queued")
        )
        room = min(settings.dispatch_batch, settings.dispatch_max_queued - int(waiting or 0))
        if room <= 0:
            return [], expired
        due = select(sends.c.id).where(sends.c.status == "planned", sends.c.send_at <= now)
        due = due.order_by(sends.c.send_at).limit(room)
        claim = update(sends).values(status="queued", queued_at=now, updated_at=now)
        if connection.dialect.name == "postgresql":
            # A materialized CTE runs its locking LIMIT once: as an ``IN (subquery)`` the
            # planner may rescan it and claim more than ``room`` rows. The rows it returns
            # are locked and were checked ``planned`` on their latest version, so the
            # UPDATE joins on ``id`` alone: with ``status = 'planned'`` repeated there, the
            # planner scanned the planned rows by ``ix_sends_status_send_at`` and compared
            # each with every CTE row (116 rows: 13,340 join-filter rows in the bench).
            picked = due.with_for_update(skip_locked=True).cte("due").prefix_with("MATERIALIZED")
            claim = claim.where(sends.c.id == picked.c.id)
        else:
            claim = claim.where(sends.c.id.in_(due.scalar_subquery()), sends.c.status == "planned")
        claimed = connection.execute(claim.returning(sends.c.id, sends.c.send_at)).all()
    return [row.id for row in sorted(claimed, key=lambda row: (row.send_at, row.id))], expired


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


def _plan_steps(runtime: Runtime, now: datetime) -> bool:
    """Due sequence steps become sends (``worker.decide.sequences``) before the due ones
    are claimed; True when the pass took a full batch (more may wait)."""
    settings = runtime.settings
    with transaction(settings.resolved_database_url) as session:
        plan_for_this_batch(session)
        report = plan_due(
            session, runtime.rules.current(), runtime.policy, now, settings.dispatch_batch
        )
    return report.full


def dispatch_once(
    runtime: Runtime, enqueue: Enqueue, housekeeping: bool = True, steps: bool = True
) -> DispatchReport:
    """One pass: plan the due sequence steps (``steps``), claim and publish the due sends.
    ``housekeeping`` adds what only time makes due (expiry, the sweep of lost work); the
    loop runs it once per ``dispatch_interval``, not on every wake-up. The loop asks for
    steps on its housekeeping passes and on a wake-up for a step: ingest wakes the
    dispatcher for a sequence entry whose first step is due at once, which must not wait
    for the next housekeeping (``worker.core.wakeup``)."""
    now = runtime.clock.now()
    steps_left = _plan_steps(runtime, now) if steps else False
    ids, expired = _claim_due(runtime, now, expire=housekeeping)
    if ids:
        enqueue(ids)
    if not housekeeping:
        return DispatchReport(len(ids), 0, expired, 0, steps_left)
    stale, recovered, ambiguous = _stale_queued(runtime, now)
    if stale:
        log.warning("re-enqueueing %s send(s) whose task did not start in time", len(stale))
    if stale or recovered:
        enqueue(stale + recovered)
    return DispatchReport(len(ids), len(stale) + len(recovered), expired, ambiguous, steps_left)


def task_batches(ids: Sequence[int], batch: int, spread: int = 1) -> list[list[int]]:
    """``ids`` cut into tasks of at most ``batch`` ids, and into at least ``spread`` tasks
    while there are that many ids: a task's sends go out one after another on one worker
    thread, so a pass of 8 sends as one task would make the last wait for 7 SMTP
    exchanges while the other threads idle. A large pass keeps full batches."""
    full = -(-len(ids) // batch)
    tasks = max(full, min(len(ids), spread))
    if tasks == full:  # the spread does not bind: full batches, the rest in the last
        return [list(ids[first : first + batch]) for first in range(0, len(ids), batch)]
    size, larger = divmod(len(ids), tasks)  # the first ``larger`` tasks take one more
    bounds = [index * size + min(index, larger) for index in range(tasks + 1)]
    return [list(ids[bounds[index] : bounds[index + 1]]) for index in range(tasks)]


def celery_enqueue(ids: Sequence[int], batch: int = 50, spread: int = 1) -> None:
    """Publish ``crosssell.deliver_batch`` tasks of at most ``batch`` ids each, spread over
    at least ``spread`` tasks (``task_batches``)."""
    from worker.outbox.tasks import deliver_batch

    for chunk in task_batches(ids, batch, spread):
        deliver_batch.apply_async((chunk,), retry=True)


def run_dispatcher(runtime: Runtime, stop: threading.Event, enqueue: Enqueue | None = None) -> None:
    """Dispatch until ``stop`` is set; a failing pass is logged and retried, never fatal.

    Between passes the dispatcher waits for ingest to commit a due send (``worker.core.wakeup``)
    or for ``dispatch_interval`` to pass, whichever comes first; a pass that filled its
    batch is followed at once by another. On its process's main thread (``crosssell
    dispatch``) the collector is tuned for a service (``worker.process.collector``)."""
    settings = runtime.settings
    if enqueue is None:
        enqueue = partial(
            celery_enqueue, batch=settings.delivery_batch, spread=settings.delivery_spread
        )
    waiter = Waiter(settings.resolved_database_url) if settings.dispatch_wakeup else None
    announce(runtime, "dispatch")
    with collector_if_own_process():
        _dispatch_until_stopped(runtime, stop, enqueue, waiter)


def _dispatch_until_stopped(
    runtime: Runtime, stop: threading.Event, enqueue: Enqueue, waiter: Waiter | None
) -> None:
    settings = runtime.settings
    interval = settings.dispatch_interval
    next_housekeeping = 0.0
    steps_asked = False  # a wake-up asked for the sequences' due steps
    try:
        while not stop.is_set():
            started = time.monotonic()
            housekeeping = started >= next_housekeeping
            try:
                report = dispatch_once(runtime, enqueue, housekeeping, housekeeping or steps_asked)
            except Exception:
                log.exception("dispatch failed; retrying in %.1fs", interval)
                stop.wait(interval * 5)
                continue
            # A step planner that took a full batch plans again on the next pass.
            steps_asked = report.steps_left
            if housekeeping:
                next_housekeeping = time.monotonic() + interval
            if report.queued >= settings.dispatch_batch or report.steps_left:
                continue  # more may be due: no waiting
            left = max(0.0, next_housekeeping - time.monotonic())
            if waiter is None:
                stop.wait(left)
                continue
            woken = waiter.wait(left, stop)
            if woken:
                steps_asked = STEPS in woken
                # Woken: within the interval of the last pass, let the commits of the
                # next moment join this one (a pass costs the same for 1 send as for 50).
                coalesce = started + WAKE_COALESCE_SECONDS - time.monotonic()
                if coalesce > 0:
                    stop.wait(min(coalesce, left))
    finally:
        if waiter is not None:
            waiter.close()
