"""``crosssell status`` and ``crosssell sends list``: the pipeline at a glance, from the
database (the system of record) and the events broker.

Everything here reads; nothing changes. Lines name sends by id, campaigns by id and
customers by id; a send's ``detail`` (a provider reply may quote the address) passes
through :func:`worker.core.redaction.redact` first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.core.models import ActivityOutbox, Send
from worker.core.redaction import redact
from worker.core.settings import Settings

FAILURE_WINDOW = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Ambiguous:
    send_id: int
    campaign_id: str
    message_id: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """Counts of sends by where they wait, failures of the last hour by reason, the
    ambiguous sends (newest first, at most ``limit``) and the unpublished activity."""

    planned_later: int
    due: int
    oldest_due: datetime | None
    queued: int
    sending: int
    failed_last_hour: dict[str, int]
    ambiguous_total: int
    ambiguous: list[Ambiguous]
    activity_unpublished: int


def outbox_status(session: Session, now: datetime, limit: int = 10) -> OutboxStatus:
    planned = select(func.count()).select_from(Send).where(Send.status == "planned")
    due, oldest = session.execute(
        select(func.count(), func.min(Send.send_at)).where(
            Send.status == "planned", Send.send_at <= now
        )
    ).one()
    by_status = dict(
        session.execute(
            select(Send.status, func.count())
            .where(Send.status.in_(("queued", "sending")))
            .group_by(Send.status)
        ).all()
    )
    failures = dict(
        session.execute(
            select(Send.reason, func.count())
            .where(Send.status == "failed", Send.updated_at >= now - FAILURE_WINDOW)
            .group_by(Send.reason)
        ).all()
    )
    ambiguous_rows = session.execute(
        select(Send.id, Send.campaign_id, Send.message_id, Send.updated_at)
        .where(Send.status == "failed", Send.reason == "ambiguous")
        .order_by(Send.updated_at.desc())
        .limit(limit)
    ).all()
    ambiguous_total = session.scalar(
        select(func.count())
        .select_from(Send)
        .where(Send.status == "failed", Send.reason == "ambiguous")
    )
    unpublished = session.scalar(
        select(func.count())
        .select_from(ActivityOutbox)
        .where(ActivityOutbox.published_at.is_(None))
    )
    return OutboxStatus(
        planned_later=int(session.scalar(planned) or 0) - int(due or 0),
        due=int(due or 0),
        oldest_due=oldest,
        queued=int(by_status.get("queued", 0)),
        sending=int(by_status.get("sending", 0)),
        failed_last_hour={str(reason or "-"): int(n) for reason, n in failures.items()},
        ambiguous_total=int(ambiguous_total or 0),
        ambiguous=[Ambiguous(r[0], r[1], r[2], r[3]) for r in ambiguous_rows],
        activity_unpublished=int(unpublished or 0),
    )


def _age(now: datetime, then: datetime) -> str:
    seconds = max(int((now - then).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def status_lines(
    status: OutboxStatus,
    now: datetime,
    events_waiting: int | None,
    rules: str,
    activity_publishing: bool = True,
) -> Iterator[str]:
    """The report ``crosssell status`` prints, one fact per line."""
    yield f"crosssell status at {now:%Y-%m-%d %H:%M:%S %Z}"
    waiting = "unknown (broker not reachable)" if events_waiting is None else events_waiting
    yield f"events waiting in the queue:  {waiting}"
    oldest = f" (oldest waiting {_age(now, status.oldest_due)})" if status.oldest_due else ""
    yield f"sends due, not yet queued:    {status.due}{oldest}"
    yield f"sends queued for workers:     {status.queued}"
    yield f"sends being delivered:        {status.sending}"
    yield f"sends planned for later:      {status.planned_later}"
    failed = status.failed_last_hour
    if failed:
        detail = ", ".join(f"{reason} {n}" for reason, n in sorted(failed.items()))
        yield f"failed in the last hour:      {sum(failed.values())} ({detail})"
    else:
        yield "failed in the last hour:      0"
    yield f"ambiguous sends (all time):   {status.ambiguous_total}"
    for item in status.ambiguous:
        yield (
            f"  send {item.send_id}  {item.campaign_id}  Message-ID "
            f"{item.message_id or 'not recorded'}  at {item.at:%Y-%m-%d %H:%M}"
        )
    if status.ambiguous_total > len(status.ambiguous):
        yield (
            f"  … {status.ambiguous_total - len(status.ambiguous)} more "
            "(--ambiguous N lists more; crosssell sends list --status failed)"
        )
    if activity_publishing:
        yield f"activity not yet published:   {status.activity_unpublished}"
    else:  # kept for CROSSSELL_ACTIVITY_RETENTION, not a backlog
        yield (
            f"activity outbox:              {status.activity_unpublished} kept, publishing off "
            "(CROSSSELL_ACTIVITY_PUBLISH)"
        )
    yield f"rules: {rules}"


@dataclass(frozen=True, slots=True)
class SendRow:
    id: int
    campaign_id: str
    customer_id: str
    status: str
    reason: str | None
    when: datetime | None
    attempts: int
    detail: str | None


def list_sends(session: Session, status: str, campaign: str | None, limit: int) -> list[SendRow]:
    """Sends in ``status``: planned ones soonest first (what waits, until when and why),
    others most recently changed first."""
    query = select(Send).where(Send.status == status)
    if campaign is not None:  # "" is a campaign id no send has, not "every campaign"
        query = query.where(Send.campaign_id == campaign)
    if status == "planned":
        query = query.order_by(Send.send_at, Send.id)
    else:
        query = query.order_by(Send.updated_at.desc(), Send.id.desc())
    rows = []
    for send in session.scalars(query.limit(limit)):
        rows.append(
            SendRow(
                id=send.id,
                campaign_id=send.campaign_id,
                customer_id=send.customer_id,
                status=send.status,
                reason=send.reason,
                when=send.send_at if status == "planned" else send.updated_at,
                attempts=send.attempts or 0,
                detail=redact(send.detail)[:200] if send.detail else None,
            )
        )
    return rows


# What a planned send's reason means while it waits.
WAITING_BECAUSE = {
    None: "scheduled by the campaign (its delay, send window or quiet hours)",
    "outside_window": "outside the send window or in quiet hours",
    "retry": "retry after a transient provider error",
    "rate_limited": "waiting for a slot of the provider's rate",
    "deferred_by_cap": "over the frequency cap, deferred until it fits",
}


def send_lines(rows: list[SendRow], status: str) -> Iterator[str]:
    """Tab-separated: id, campaign, customer, time, attempts, reason, explanation/detail."""
    header = "send_at" if status == "planned" else "updated_at"
    yield f"id\tcampaign\tcustomer\t{header}\tattempts\treason\twhy"
    for row in rows:
        when = f"{row.when:%Y-%m-%d %H:%M}" if row.when else "-"
        why = (
            WAITING_BECAUSE.get(row.reason, row.reason or "")
            if status == "planned"
            else row.detail or ""
        )
        yield (
            f"{row.id}\t{row.campaign_id}\t{row.customer_id}\t{when}\t{row.attempts}\t"
            f"{row.reason or '-'}\t{why}"
        )


def rules_summary(
    settings: Settings, campaigns: int | None, problems: int | None, now: datetime
) -> str:
    """What the campaign files on disk hold and when they last changed: running
    processes reload them within seconds of a change when they are valid, and keep the
    previous set (``crosssell_rules_reload_failing`` = 1) when they are not."""
    from worker.decide.rule_files import campaign_files

    files = campaign_files([settings.campaigns_dir])
    files += [settings.segments_file, settings.attributes_file]
    if settings.templates_dir.is_dir():
        files += [p for p in settings.templates_dir.rglob("*") if p.is_file()]
    stamps = [p.stat().st_mtime for p in files if p.exists()]
    changed = (
        f"files last changed {datetime.fromtimestamp(max(stamps), UTC):%Y-%m-%d %H:%M:%S} UTC "
        f"({_age(now, datetime.fromtimestamp(max(stamps), UTC))} ago)"
        if stamps
        else "no campaign files"
    )
    if problems is not None:
        return (
            f"the files on disk FAIL validation ({problems} error(s), see `crosssell lint`); "
            f"running processes keep the previous rules; {changed}"
        )
    return f"{campaigns} campaign(s), valid; {changed}; reloaded by running processes"
