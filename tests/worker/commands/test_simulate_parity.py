"""`simulate` predicts what the pipeline plans: same events, clock and settings, same counts.

The pipeline side is the real ``ingest_event`` (one event per transaction) or
``ingest_batch`` (the consumer's batches) into a fresh SQLite database (the demo's own
backend); the prediction is ``triggers.simulate.simulate`` on the same events at the same
clock. They are compared per (campaign, status, reason), the figures the ``sends`` table
holds, so any check one of them makes and the other forgets shows up as a difference.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.support.factories import make_settings
from tests.support.sqlite_template import migrated_sqlite_url
from triggers.decide import Policy
from triggers.events import AnyEvent, InvalidEvent, parse_event
from triggers.outcomes import SkipReason
from triggers.simulate import DUPLICATE, simulate
from worker.commands.demo import demo_anchor
from worker.commands.demo_data import as_lines
from worker.core.db import dispose_engines, transaction
from worker.core.models import Customer, Event, Send, Suppression
from worker.decide.decision_inputs import load_standing
from worker.intake.ingest import ingest_batch, ingest_event
from worker.process.runtime import Runtime

# A fixed demo clock: the latest Tuesday 10:30 UTC before this date, as `make demo` picks.
ANCHOR = demo_anchor(datetime(2026, 11, 19, 15, 0, tzinfo=UTC))
OUTCOMES = tuple[str, str, str | None]


def demo_events() -> list[AnyEvent]:
    """The demo's event set in publish order (the bad messages are dead-lettered)."""
    parsed = []
    for line in as_lines(ANCHOR):
        try:
            parsed.append(parse_event(line))
        except InvalidEvent:
            continue
    return parsed


def _standing_rows(url: str) -> None:
    """A customer who opted out of loyalty emails and one whose address is suppressed:
    things the events cannot tell and both sides must read from the database."""
    with transaction(url) as session:
        session.add(
            Customer(
                id="C-1003",
                attributes={},
                categories_bought=[],
                skus_owned=[],
                orders_count=0,
                opted_out_kinds=["loyalty", "cross_sell"],
                created_at=ANCHOR,
                updated_at=ANCHOR,
            )
        )
    first = next(e for e in demo_events() if e.customer.id == "C-1010" and e.customer.email)
    assert first.customer.email is not None
    with transaction(url) as session:
        session.add(
            Suppression(
                email=first.customer.email.lower(),
                reason="complaint",
                source="test",
                created_at=ANCHOR,
            )
        )


def pipeline(
    url: str, runtime: Runtime, events: list[AnyEvent], now: datetime, batch: int
) -> Counter[OUTCOMES]:
    """The plan the pipeline stores: one event per transaction (``batch`` 1, as
    ``ingest_event`` stores one), or ``batch`` at a time as the consumer stores them."""
    rules = runtime.rules.current()
    if batch == 1:
        for event in events:
            with transaction(url) as session:
                ingest_event(session, event, rules, runtime.policy, now)
    for start in range(0, len(events) if batch > 1 else 0, batch):
        with transaction(url) as session:
            ingest_batch(session, events[start : start + batch], rules, runtime.policy, now)
    planned: Counter[OUTCOMES] = Counter()
    with transaction(url) as session:
        for campaign, status, reason in session.execute(
            select(Send.campaign_id, Send.status, Send.reason)
        ).all():
            planned[(campaign, status, reason)] += 1
        for (outcome,) in session.execute(select(Event.outcome)).all():
            for campaign, said in outcome.items():
                if str(said).startswith(f"{SkipReason.ALREADY_PLANNED}:"):
                    planned[(campaign, DUPLICATE, SkipReason.ALREADY_PLANNED)] += 1
    return planned


def _compare(
    tmp_path: Path, policy: Policy, now: datetime, batch: int
) -> tuple[Counter[OUTCOMES], int]:
    url = migrated_sqlite_url(tmp_path / "parity.db")
    try:
        runtime = Runtime(make_settings(tmp_path, database_url=url))
        runtime.__dict__["policy"] = policy
        _standing_rows(url)
        with transaction(url) as session:
            standing = load_standing(session)
        events = demo_events()
        predicted = simulate(
            events, runtime.rules.current(), policy, at=now, subject_of=standing.subject
        )
        actual = pipeline(url, runtime, events, now, batch)
        assert +predicted.outcomes == +actual
        with transaction(url) as session:
            sends = len(session.execute(select(Send.id)).all())
        return actual, sends
    finally:
        dispose_engines()


def test_simulate_at_the_pipelines_clock_predicts_the_demo_plan(tmp_path: Path) -> None:
    policy = make_settings(tmp_path).policy()
    actual, _ = _compare(tmp_path, policy, ANCHOR, batch=1)
    # The standing rows and the spacing rule are all exercised by the demo's events.
    reasons = {reason for _, _, reason in actual}
    assert {"opted_out", "suppressed", "min_gap", "no_consent", "cooldown"} <= reasons
    # Decided at each event's own time, the same replay predicts another plan entirely:
    # the question it answers is "what if these had been processed live".
    live = simulate(demo_events(), Runtime(make_settings(tmp_path)).rules.current(), policy)
    assert +live.outcomes != +actual


@pytest.mark.parametrize(
    "change",
    [
        {"over_cap": "defer"},
        {"max_campaigns_per_event": 3, "min_gap": timedelta(0)},
        {"max_campaigns_per_event": 2, "over_cap": "defer", "min_gap": timedelta(hours=2)},
        {"min_gap": timedelta(days=3), "max_emails_per_customer": 1},
        {"quiet_from": None, "quiet_to": None, "default_timezone": "America/New_York"},
    ],
)
def test_parity_holds_under_other_settings(tmp_path: Path, change: dict[str, object]) -> None:
    policy = replace(make_settings(tmp_path).policy(), **change)  # type: ignore[arg-type]
    # The consumer's path: batches of the default CROSSSELL_INGEST_BATCH, same events.
    batch = make_settings(tmp_path).ingest_batch
    _compare(tmp_path, policy, ANCHOR + timedelta(hours=3), batch=batch)
