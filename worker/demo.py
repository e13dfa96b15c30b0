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
from typing import TextIO

from celery.exceptions import SecurityWarning
from sqlalchemy import func, select

from worker.catalog_import import upsert_products
from worker.clock import ShiftedClock
from worker.db import transaction
from worker.demo_data import DEMO_CATALOG, as_lines, catalog_rows
from worker.migrate import upgrade
from worker.models import Customer, Event, Send
from worker.progress import progress, tracked
from worker.publisher import publish_lines
from worker.run import run_all
from worker.runtime import Runtime, set_runtime
from worker.settings import Settings


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
    print(f"emails written:      {statuses['sent']} -> {settings.resolved_outbox_dir}", file=out)
    print(f"held out (control):  {statuses['held_out']}", file=out)
    print(f"scheduled for later: {statuses['planned'] + statuses['queued']}", file=out)
    print(f"failed:              {statuses['failed']}", file=out)
    print(
        "skipped by reason:   "
        + (", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "none"),
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
    print(f"events published:    {report.published} from {demo_file}", file=out)
    # Celery warns about running as root (containers often do); the demo's tasks are JSON
    # only, so the warning is noise here.
    warnings.filterwarnings("ignore", category=SecurityWarning)
    runtime = Runtime(settings, clock=ShiftedClock(anchor))
    set_runtime(runtime)
    with progress("running consumer, dispatcher and worker until drained"):
        code = run_all(runtime, until_drained=True)
    consumer = runtime.consumer
    dead = consumer.stats["dead_lettered"] if consumer is not None else 0
    summary(settings, out, dead)
    return code
