"""``crosssell simulate``: the dry run over a JSON Lines file or the stored event log.

The suppression list and the customers' opted-out campaign kinds come from the
configured database (read only, as ``decision_inputs`` reads them for the worker); the
events cannot carry them, and without them the dry run would plan emails the worker skips.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import make_url, select
from sqlalchemy.exc import SQLAlchemyError

from triggers.events import AnyEvent, InvalidEvent, parse_event, refused_forget, validate_event
from triggers.fields import FieldType
from triggers.simulate import SimulationReport, simulate
from worker.decide.decision_inputs import Standing, load_standing
from worker.process.runtime import Runtime


def standing(runtime: Runtime) -> tuple[Standing, str]:
    """The database's suppressions and opted-out kinds, and a line saying where from."""
    from worker.core.db import transaction

    url = make_url(runtime.settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or ":memory:").exists():
        return Standing(), "suppressions and preferences: none (no database yet)"
    try:
        with transaction(runtime.settings.resolved_database_url) as session:
            found = load_standing(session)
    except SQLAlchemyError as exc:
        return (
            Standing(),
            f"suppressions and preferences: none (no database: {exc.__class__.__name__})",
        )
    return found, (
        f"suppressions and preferences: from the database ({len(found.suppressed)} suppressed, "
        f"{len(found.opted_out)} customers with opted-out kinds)"
    )


def run_simulation(
    runtime: Runtime,
    events: Iterable[AnyEvent],
    *,
    count_from: datetime | None = None,
    at: datetime | None = None,
) -> tuple[SimulationReport, str]:
    """``triggers.simulate.simulate`` with the worker's rules, policy and standing.

    With ``at``, an event that occurs after it cannot have been received then: such
    events are still decided (as if they had arrived early), and the returned source
    line says how many, so a wrong ``--at`` does not go unnoticed."""
    known, source = standing(runtime)
    late = [0]

    def counted(stream: Iterable[AnyEvent]) -> Iterator[AnyEvent]:
        for event in stream:
            if at is not None and event.occurred_at > at:
                late[0] += 1
            yield event

    report = simulate(
        counted(events),
        runtime.rules.current(),
        runtime.policy,
        count_from=count_from,
        at=at,
        subject_of=known.subject,
        erased=known.predates_erasure,
    )
    if report.erased_events:
        source += (
            f"\n{report.erased_events} event(s) decided nothing: they occurred before their"
            " customer asked to be forgotten (ingest stores such an event erased; a"
            " purchase's order still counts)"
        )
    if late[0]:
        source += (
            f"\nwarning: {late[0]} event(s) occur after the decision clock {at:%Y-%m-%d %H:%M}"
            " UTC (decided as if received early: is --at the clock you meant?)"
        )
    return report, source


def events_from_file(
    path: Path, problems: list[str], declared: Mapping[str, FieldType] | None = None
) -> Iterator[AnyEvent]:
    """The file's valid events; each invalid line is one of ``problems``, with the
    reason the consumer would dead-letter it for (``declared``: the attributes file's
    types, which the consumer checks too)."""
    from worker.intake.publisher import CutLine, bounded_lines

    with path.open("rb") as stream:
        # Read as ``crosssell publish`` reads: a giant line is cut and reported with its
        # size (not read whole), a BOM before the first line is dropped, and the line
        # ending is not part of the event (the oversize count is the same as publish's).
        for number, line in enumerate(bounded_lines(stream), start=1):
            if not line.strip():
                continue
            try:
                if isinstance(line, CutLine):
                    raise line.invalid()
                event = parse_event(line.strip(), attributes=declared)
            except InvalidEvent as invalid:
                bad = refused_forget(invalid, line.strip(), "simulate")
                problems.append(f"{path}:{number}: {bad.code}: {bad.reason}")
                continue
            yield event


def events_from_log(runtime: Runtime) -> Iterator[AnyEvent]:
    """Every stored event, oldest first, read in pages (read only)."""
    from worker.core.db import transaction
    from worker.core.models import Event

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


def report_lines(
    report: SimulationReport, campaigns: Iterable[str], source: str = ""
) -> Iterator[str]:
    """The clock and the per-campaign summary first, then the long per-day table."""
    yield f"decided at: {report.clock}"
    if source:
        yield source
    yield f"events replayed: {report.events} (counted: {report.counted_events})"
    yield ""
    yield f"{'campaign':<28} {'emails':>7} {'held out':>9} {'not matched':>12}  skipped"
    for campaign in campaigns:
        total = report.totals(campaign)
        skipped = ", ".join(f"{reason} {count}" for reason, count in total.skipped.most_common())
        yield (
            f"{campaign:<28} {total.emails:>7} {total.held_out:>9} "
            f"{report.not_matched[campaign]:>12}  {skipped or '-'}"
        )
    yield from sequence_lines(report)
    yield ""
    days = [(day, count) for day, count in report.emails_per_day().items() if count]
    yield "emails per day (customer's local date):" + ("" if days else " none")
    for day, count in days:
        yield f"  {day.isoformat()}  {count:>6}"
    yield ""
    yield f"{'campaign':<28} {'day':<10} {'emails':>7} {'held out':>9}  skipped"
    for (campaign, day), tally in sorted(report.by_campaign_day.items()):
        skipped = ", ".join(f"{reason} {count}" for reason, count in tally.skipped.most_common())
        yield (
            f"{campaign:<28} {day.isoformat():<10} {tally.emails:>7} {tally.held_out:>9}  {skipped}"
        )


def sequence_lines(report: SimulationReport) -> Iterator[str]:
    """Per sequence: entries, then per step sent / held out / skipped by reason, then exits
    by reason (steps in the order they were first resolved)."""
    campaigns = dict.fromkeys(
        [c for c, _ in report.entries]
        + [c for c, *_ in report.steps]
        + [c for c, _ in report.exits]
    )
    for campaign in campaigns:
        entries = ", ".join(
            f"{label} {count}"
            for (c, label), count in report.entries.most_common()
            if c == campaign
        )
        yield ""
        yield f"sequence {campaign}: {entries or 'no entries'}"
        steps: dict[str, list[str]] = {}
        for (c, step, outcome, reason), count in report.steps.items():
            if c == campaign and count:
                label = outcome if outcome != "skipped" else f"skipped {reason}"
                steps.setdefault(step, []).append(f"{label} {count}")
        for step, parts in steps.items():
            yield f"  step {step}: {', '.join(sorted(parts))}"
        exits = ", ".join(
            f"{reason} {count}"
            for (c, reason), count in report.exits.most_common()
            if c == campaign
        )
        yield f"  exited: {exits or 'none'}"
