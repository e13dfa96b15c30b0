"""``crosssell simulate``: the dry run over a JSON Lines file or the stored event log."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select

from triggers.events import AnyEvent, InvalidEvent, parse_event, validate_event
from triggers.simulate import SimulationReport
from worker.runtime import Runtime


def events_from_file(path: Path, problems: list[str]) -> Iterator[AnyEvent]:
    with path.open("rb") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                yield parse_event(line)
            except InvalidEvent as bad:
                problems.append(f"{path}:{number}: {bad.code}: {bad.reason}")


def events_from_log(runtime: Runtime) -> Iterator[AnyEvent]:
    """Every stored event, oldest first, read in pages (read only)."""
    from worker.db import transaction
    from worker.models import Event

    last = 0
    while True:
        with transaction(runtime.settings.resolved_database_url) as session:
            rows = session.execute(
                select(Event.id, Event.payload)
                .where(Event.id > last)
                .order_by(Event.id)
                .limit(2000)
            ).all()
        if not rows:
            return
        for row in rows:
            last = row.id
            document = json.loads(json.dumps(row.payload, default=str), parse_float=Decimal)
            yield validate_event(document)


def report_lines(report: SimulationReport, campaigns: Iterable[str]) -> Iterator[str]:
    yield f"events replayed: {report.events} (counted: {report.counted_events})"
    yield ""
    yield f"{'campaign':<28} {'day':<10} {'emails':>7} {'held out':>9}  skipped"
    for (campaign, day), tally in sorted(report.by_campaign_day.items()):
        skipped = ", ".join(f"{reason} {count}" for reason, count in tally.skipped.most_common())
        yield (
            f"{campaign:<28} {day.isoformat():<10} {tally.emails:>7} {tally.held_out:>9}  {skipped}"
        )
    yield ""
    yield f"{'campaign':<28} {'emails':>7} {'held out':>9} {'not matched':>12}  skipped"
    for campaign in campaigns:
        total = report.totals(campaign)
        skipped = ", ".join(f"{reason} {count}" for reason, count in total.skipped.most_common())
        yield (
            f"{campaign:<28} {total.emails:>7} {total.held_out:>9} "
            f"{report.not_matched[campaign]:>12}  {skipped or '-'}"
        )
    yield ""
    days = [(day, count) for day, count in report.emails_per_day().items() if count]
    yield "emails per day (customer's local date):" + ("" if days else " none")
    for day, count in days:
        yield f"  {day.isoformat()}  {count:>6}"


def parse_since(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("give --since with a time zone, e.g. 2026-11-01T00:00+00:00 or ...Z")
    return moment
