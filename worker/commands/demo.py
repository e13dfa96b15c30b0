"""``make demo`` / ``crosssell demo``: the whole pipeline on embedded defaults.

Imports the demo catalog (config/demo/catalog.csv, through the same import as
``crosssell catalog import``), publishes the demo events through the same transport a CRM uses,
runs consumer + dispatcher + Celery worker until drained and prints what happened. The
demo runs on a clock set to the latest Tuesday 10:30 UTC, so its emails fall inside the
campaigns' send windows whatever the hour at which it is run.
"""

from __future__ import annotations

import warnings
from collections import Counter
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import TextIO

from celery.exceptions import SecurityWarning
from sqlalchemy import func, select

from triggers.events import validate_event
from triggers.outcomes import SkipReason
from worker.commands.demo_data import DEMO_CATALOG, as_lines, catalog_rows, journey_followups
from worker.commands.migrate import upgrade
from worker.commands.progress import progress, tracked
from worker.commands.run import run_all
from worker.core.clock import ShiftedClock
from worker.core.db import transaction
from worker.core.models import Customer, Enrollment, Event, Send
from worker.core.settings import Settings
from worker.intake.ingest import ingest_event
from worker.intake.publisher import publish_lines, publish_unchecked
from worker.offers.catalog_import import upsert_products
from worker.outbox.delivery import deliver_send
from worker.outbox.dispatcher import dispatch_once
from worker.process.runtime import Runtime, set_runtime

EMAIL_STATUSES = ("sent", "planned", "queued", "sending")
JOURNEY_STEPS = ("accessories", "bundle", "loyalty")


def _span(delta: timedelta) -> str:
    """``6 d 23 h 59 min`` (to the minute): a gap as a person reads it."""
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{mins} min"]
    return " ".join(p for p in parts if p)


def closest_emails(rows: list[tuple[str, datetime]]) -> timedelta | None:
    """The shortest time between two emails to the same customer, from (customer, when)."""
    by_customer: dict[str, list[datetime]] = {}
    for customer_id, at in rows:
        by_customer.setdefault(customer_id, []).append(at)
    gaps = [
        later - earlier
        for times in by_customer.values()
        for earlier, later in zip(sorted(times), sorted(times)[1:], strict=False)
    ]
    return min(gaps) if gaps else None


def shown_path(path: Path, cwd: Path | None = None) -> str:
    """``path`` as the user can type it: relative to the current directory when under it
    (``var/outbox``), else absolute."""
    here = (cwd or Path.cwd()).resolve()
    full = path.resolve()
    try:
        return str(full.relative_to(here))
    except ValueError:
        return str(path)


def demo_anchor(today: datetime) -> datetime:
    """The latest Tuesday, 10:30 UTC: mid-morning in Bucharest, Rome and London."""
    day = today.date() - timedelta(days=(today.weekday() - 1) % 7)
    return datetime.combine(day, time(10, 30), tzinfo=UTC)


def seed_catalog(settings: Settings, now: datetime) -> int:
    """Import config/demo/catalog.csv as ``crosssell catalog import`` would; the number
    of products."""
    with transaction(settings.resolved_database_url) as session:
        return upsert_products(session, list(catalog_rows()), now)


def summary(settings: Settings, out: TextIO, dead_lettered: int) -> None:
    with transaction(settings.resolved_database_url) as session:
        events = Counter(
            dict(session.execute(select(Event.type, func.count()).group_by(Event.type)).all())
        )
        customers = session.scalar(select(func.count()).select_from(Customer))
        statuses = Counter(
            dict(session.execute(select(Send.status, func.count()).group_by(Send.status)).all())
        )
        reasons = Counter(
            dict(
                session.execute(
                    select(Send.reason, func.count())
                    .where(Send.status.in_(("skipped", "failed")))
                    .group_by(Send.reason)
                ).all()
            )
        )
        matched = Counter(
            dict(
                session.execute(
                    select(Send.campaign_id, func.count())
                    .where(Send.status.in_(("sent", "planned", "queued", "sending", "held_out")))
                    .group_by(Send.campaign_id)
                ).all()
            )
        )
        deferred = session.scalar(
            select(func.count())
            .select_from(Send)
            .where(Send.reason == SkipReason.DEFERRED_BY_GAP, Send.status.in_(EMAIL_STATUSES))
        )
        spaced = Counter(
            dict(
                session.execute(
                    select(Send.campaign_id, func.count())
                    .where(Send.status == "skipped", Send.reason == SkipReason.MIN_GAP)
                    .group_by(Send.campaign_id)
                ).all()
            )
        )
        email_times: list[tuple[str, datetime]] = []
        for customer_id, sent_at, send_at in session.execute(
            select(Send.customer_id, Send.sent_at, Send.send_at).where(
                Send.status.in_(EMAIL_STATUSES)
            )
        ).all():
            at = sent_at or send_at
            if at is not None:
                email_times.append((customer_id, at))
    print(
        f"events stored:       {sum(events.values())} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(events.items()))})",
        file=out,
    )
    print(f"dead-lettered:       {dead_lettered} (bad messages, kept with their reason)", file=out)
    print(f"customers:           {customers}", file=out)
    print(
        f"campaigns matched:   {', '.join(f'{k} {v}' for k, v in sorted(matched.items()))}",
        file=out,
    )
    print(
        f"emails written:      {statuses['sent']} -> {shown_path(settings.resolved_outbox_dir)}",
        file=out,
    )
    print(f"held out (control):  {statuses['held_out']}", file=out)
    print(f"scheduled for later: {statuses['planned'] + statuses['queued']}", file=out)
    print(f"failed:              {statuses['failed']}", file=out)
    print(
        "skipped by reason:   "
        + (", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "none"),
        file=out,
    )
    closest = closest_emails(email_times)
    by_campaign = ", ".join(f"{k} {v}" for k, v in sorted(spaced.items()))
    print(
        f"spaced out:          {sum(spaced.values())} not sent ({SkipReason.MIN_GAP}"
        + (f": {by_campaign}" if by_campaign else "")
        + f"), {deferred} later ({SkipReason.DEFERRED_BY_GAP}); gap {settings.min_gap}",
        file=out,
    )
    print(
        "closest emails:      "
        + (
            f"{_span(closest)} apart (the nearest two emails one customer got)"
            if closest is not None
            else "one email per customer"
        ),
        file=out,
    )


def run_demo(settings: Settings, out: TextIO) -> int:
    real_now = datetime.now(UTC)
    anchor = demo_anchor(real_now)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    products = seed_catalog(settings, real_now)
    lines = as_lines(anchor)
    demo_file = settings.var_dir / "demo" / "events.jsonl"
    demo_file.parent.mkdir(parents=True, exist_ok=True)
    demo_file.write_bytes(b"\n".join(lines) + b"\n")
    print(f"crosssell demo: clock set to {anchor:%a %Y-%m-%d %H:%M} UTC", file=out)
    print(f"catalog:             {products} products from {DEMO_CATALOG.name}", file=out)
    report = publish_lines(settings, tracked(lines, "publishing events", total=len(lines)))
    refused = [lines[bad.line - 1] for bad in report.rejected]
    # What `crosssell publish` refuses, a CRM's own client could still send: sent raw, the
    # consumer dead-letters them (the summary's "dead-lettered" line).
    publish_unchecked(settings, refused, "purchase")
    print(
        f"events published:    {report.published} from {shown_path(demo_file)}, "
        f"and {len(refused)} bad "
        f"line(s) ({', '.join(f'{bad.line}: {bad.code}' for bad in report.rejected)}) "
        "sent raw",
        file=out,
    )
    # Celery warns about running as root (containers often do); the demo's tasks are JSON
    # only, so the warning is noise here.
    warnings.filterwarnings("ignore", category=SecurityWarning)
    runtime = Runtime(settings, clock=ShiftedClock(anchor))
    set_runtime(runtime)
    with progress("running consumer, dispatcher and worker until drained"):
        code = run_all(runtime, until_drained=True)
    consumer = runtime.consumer
    dead = consumer.stats["dead_lettered"] if consumer is not None else 0
    if code == 0:
        drive_sequences(runtime, anchor, out)
    summary(settings, out, dead)
    sequence_summary(settings, out)
    bought = follow_up_week(runtime, anchor)
    print(f"the week after:      {bought} purchases by emailed and held-out customers", file=out)
    report_path = write_report(runtime)
    print(
        f"report:              {shown_path(report_path)} (crosssell report --format html)",
        file=out,
    )
    return code


# Purchase probabilities in the week after the emails: the planted effect the report
# should find (emailed customers buy more, and more of what they were offered).
FOLLOW_UP_EMAILED = 0.16
FOLLOW_UP_HELD_OUT = 0.06
FOLLOW_UP_OFFERED_SHARE = 0.6


def follow_up_week(runtime: Runtime, anchor: datetime) -> int:
    """Synthetic purchases in the seven days after the emails, ingested as a CRM's would
    be (``ingest_event``, each at its own time), so the report has something to measure.

    Only customers with a touch buy, and only accessories under every campaign's
    threshold, so no new email is planned. Deterministic (seeded, ids from the touch),
    so a second demo run adds nothing."""
    import random

    from triggers.events import validate_event
    from worker.commands.demo_data import MAIN_CATEGORIES, catalog_rows, one_item_purchase
    from worker.core.models import SendOffer
    from worker.intake.ingest import ingest_event

    settings = runtime.settings
    url = settings.resolved_database_url
    rng = random.Random(20261117)
    extras = {p.sku: p for p in catalog_rows() if p.category not in MAIN_CATEGORIES}
    with transaction(url) as session:
        touches = session.execute(
            select(Send.id, Send.status, Send.customer_id, Send.sent_at, Send.send_at)
            .where(Send.status.in_(("sent", "held_out")))
            .order_by(Send.id)
        ).all()
        offered = {row.send_id: row.skus for row in session.scalars(select(SendOffer))}
        people = {c.id: c for c in session.scalars(select(Customer))}
    documents: list[dict[str, object]] = []
    for touch in touches:
        emailed = touch.status == "sent"
        chance = FOLLOW_UP_EMAILED if emailed else FOLLOW_UP_HELD_OUT
        roll, hours, pick = rng.random(), rng.uniform(2, 160), rng.random()
        start = touch.sent_at if emailed else touch.send_at
        if roll >= chance or start is None:
            continue
        choices = [sku for sku in offered.get(touch.id, []) if sku in extras]
        sku = (
            choices[0]
            if choices and emailed and pick < FOLLOW_UP_OFFERED_SHARE
            else sorted(extras)[int(pick * len(extras))]
        )
        product = extras[sku]
        person = people[touch.customer_id]
        at = (start + timedelta(hours=hours)).replace(microsecond=0)
        documents.append(
            one_item_purchase(
                f"evt-demo-f{touch.id:05d}",
                f"O-F{touch.id:05d}",
                person.id,
                at,
                (sku, product.name, product.category, str(product.price)),
            )
        )
    rules = runtime.rules.current()
    stored = 0
    for document in sorted(documents, key=lambda d: str(d["occurred_at"])):
        event = validate_event(document)
        with transaction(url) as session:
            result = ingest_event(session, event, rules, runtime.policy, event.occurred_at)
        stored += 0 if result.duplicate else 1
    return len(documents)


def write_report(runtime: Runtime) -> Path:
    """``var/report.html``: the measurement report over everything the demo recorded,
    on a clock two weeks after the emails (every attribution window closed)."""
    from worker.commands.report import build_report, render
    from worker.decide.attribution import AttributionConfig, reconcile

    settings = runtime.settings
    url = settings.resolved_database_url
    rules = runtime.rules.current()
    config = AttributionConfig.from_settings(settings)
    later = runtime.clock.now() + timedelta(days=14)
    with transaction(url) as session:
        reconcile(session, rules, config, later)
    with transaction(url) as session:
        report = build_report(session, rules, config, later)
    path = settings.var_dir / "report.html"
    path.write_text(render(report, "html"), encoding="utf-8")
    return path


# When the demo's clock stops after the first run: follow-up purchases on day 3, then the
# day-7 and day-30 steps (a second stop six hours later for customers in quiet hours).
SEQUENCE_STOPS = (
    timedelta(days=3),
    timedelta(days=7),
    timedelta(days=7, hours=6),
    timedelta(days=30),
    timedelta(days=30, hours=6),
)


def drive_sequences(runtime: Runtime, anchor: datetime, out: TextIO) -> None:
    """Move the demo's clock through the post-purchase journey: at each stop the
    dispatcher's poll plans due steps and claims due sends, and the delivery task's own
    function sends them (in this process: no broker needed for a clock that jumps).

    On day 3, some enrolled customers buy again (``demo_data.journey_followups``),
    ingested as the consumer would: those who buy an offered product leave the sequence.
    The follow-ups carry fixed ids, so a second ``make demo`` plans nothing new."""
    url = runtime.settings.resolved_database_url
    with transaction(url) as session:
        offered = {
            customer_id: list(skus)
            for customer_id, skus in session.execute(
                select(Enrollment.customer_id, Enrollment.offered_skus).where(
                    Enrollment.status == "active"
                )
            ).all()
        }
    followups = journey_followups(offered, anchor + SEQUENCE_STOPS[0])
    for stop in SEQUENCE_STOPS:
        runtime.clock = ShiftedClock(anchor + stop)
        if stop == SEQUENCE_STOPS[0]:
            for document in followups:
                with transaction(url) as session:
                    ingest_event(
                        session,
                        validate_event(document),
                        runtime.rules.current(),
                        runtime.policy,
                        runtime.clock.now(),
                    )
        _drain(runtime)
    print(
        f"journey follow-ups:  {len(followups)} purchases on day 3 (clock driven to "
        f"{anchor + SEQUENCE_STOPS[-1]:%a %Y-%m-%d %H:%M} UTC)",
        file=out,
    )


def _drain(runtime: Runtime) -> None:
    queued: list[int] = []
    for _ in range(50):
        queued.clear()
        dispatch_once(runtime, queued.extend)
        if not queued:
            return
        for send_id in queued:
            deliver_send(runtime, send_id)


def sequence_summary(settings: Settings, out: TextIO) -> None:
    """Per sequence step: sent, held out, skipped by reason; and exits by reason."""
    with transaction(settings.resolved_database_url) as session:
        steps = session.execute(
            select(Send.campaign_id, Send.step_id, Send.status, Send.reason, func.count())
            .where(Send.step_id.is_not(None))
            .group_by(Send.campaign_id, Send.step_id, Send.status, Send.reason)
        ).all()
        exits = Counter(
            dict(
                session.execute(
                    select(Enrollment.exit_reason, func.count())
                    .where(Enrollment.exit_reason.is_not(None))
                    .group_by(Enrollment.exit_reason)
                ).all()
            )
        )
        enrolled = session.scalar(select(func.count()).select_from(Enrollment))
        active = session.scalar(
            select(func.count()).select_from(Enrollment).where(Enrollment.status == "active")
        )
    by_step: dict[tuple[str, str], Counter[str]] = {}
    for campaign_id, step_id, status, reason, count in steps:
        label = status if status != "skipped" else f"skipped {reason}"
        by_step.setdefault((campaign_id, step_id or ""), Counter())[label] += count
    print(f"sequences:           {enrolled} enrolled, {active} still running", file=out)
    for (campaign_id, step_id), counts in sorted(by_step.items(), key=_step_order):
        listing = ", ".join(f"{label} {count}" for label, count in counts.most_common())
        print(f"  {campaign_id} {step_id}: {listing}", file=out)
    print(
        "sequence exits:      "
        + (", ".join(f"{reason} {count}" for reason, count in exits.most_common()) or "none"),
        file=out,
    )


def _step_order(item: tuple[tuple[str, str], Counter[str]]) -> tuple[str, int]:
    (campaign_id, step_id), _ = item
    return campaign_id, JOURNEY_STEPS.index(step_id) if step_id in JOURNEY_STEPS else 99
