"""The step planner plans a pass's due steps together (``plan_due``) exactly as it plans
each alone, with a number of statements that does not grow with the steps; ingest's
batched entries (``sequences.Entries``) enroll as one entry at a time does."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from tests.conftest import _truncate
from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from triggers.events import validate_event
from worker.commands.demo import seed_catalog
from worker.commands.migrate import upgrade
from worker.core.db import dispose_engines, transaction
from worker.core.models import Customer, Enrollment, Event, Send, SendOffer
from worker.decide.sequences import PlanReport, plan_due
from worker.intake.ingest import ingest_batch, ingest_event
from worker.process.runtime import Runtime

ROOT = Path(__file__).resolve().parents[3]
JOURNEY = ROOT / "config" / "campaigns" / "post-purchase-journey.yaml"
NOW = TUESDAY_MORNING


def _campaigns(folder: Path) -> Path:
    """The shipped journey and a second sequence on the same purchases whose first step
    goes only after an order of 500 or more: one customer can have two steps due in one
    pass, the second planned on the history the first one just changed."""
    campaigns = folder / "campaigns"
    campaigns.mkdir(parents=True)
    shutil.copy(JOURNEY, campaigns / JOURNEY.name)
    text = JOURNEY.read_text()
    second = (
        text.replace("id: post-purchase-journey", "id: second-journey")
        .replace("priority: 65", "priority: 60")
        .replace(
            "    template: journey_accessories\n  - id: bundle",
            "    template: journey_accessories\n"
            "    only_if: {field: event.total, op: gte, value: 500}\n"
            "  - id: bundle",
        )
    )
    assert "only_if: {field: event.total" in second
    (campaigns / "second-journey.yaml").write_text(second)
    return campaigns


def _runtime(folder: Path, url: str) -> Runtime:
    settings = make_settings(
        folder, database_url=url, campaigns_dir=_campaigns(folder), quiet_hours="off"
    )
    runtime = Runtime(settings)
    seed_catalog(settings, NOW)
    return runtime


def _customers(runtime: Runtime, held_out: bool, count: int, skip: int = 0) -> list[str]:
    """Customer ids both sequences hold out (or neither does), by the assignment."""
    rules = runtime.rules.current()
    found: list[str] = []
    for number in range(skip, skip + 5000):
        customer_id = f"C-{number}"
        if all(
            (compiled := rules.by_id(cid)) is not None
            and compiled.assign(customer_id).held_out == held_out
            for cid in ("post-purchase-journey", "second-journey")
        ):
            found.append(customer_id)
            if len(found) == count:
                return found
    raise AssertionError("not enough such customers")


def _buy(customer_id: str, price: str, sku: str = "CAM-MIRRORLESS") -> dict[str, Any]:
    return purchase(
        f"entry-{customer_id}",
        at=NOW - timedelta(minutes=1),
        customer=customer_block(customer_id),
        sku=sku,
        category="cameras",
        price=price,
    )


def _scenario(runtime: Runtime) -> dict[str, str]:
    """Enrollments whose first steps are due now with every outcome a step can have;
    the customer id of each case."""
    url = runtime.settings.resolved_database_url
    mailed = _customers(runtime, held_out=False, count=6)
    held = _customers(runtime, held_out=True, count=1)[0]
    cases = {
        "both_planned_then_gap": mailed[0],  # 899: both sequences' first steps due
        "planned_and_step_condition": mailed[1],  # 200: the second's only_if is false
        "held_out": held,
        "unsubscribed": mailed[2],
        "already_planned": mailed[3],
        "recently_mailed": mailed[4],
        "completed_by_edit": mailed[5],
    }
    with transaction(url) as session:
        ingest_batch(
            session,
            [
                validate_event(
                    _buy(customer_id, "200.00" if case.startswith("planned_") else "899.00")
                )
                for case, customer_id in cases.items()
            ],
            runtime.rules.current(),
            runtime.policy,
            NOW,
        )
    with transaction(url) as session:
        session.execute(
            update(Customer)
            .where(Customer.id == cases["unsubscribed"])
            .values(email_marketing=False)
        )
        waiting = session.scalars(
            select(Enrollment).where(
                Enrollment.customer_id == cases["already_planned"],
                Enrollment.campaign_id == "post-purchase-journey",
            )
        ).one()
        session.add(_send(waiting.customer_id, "post-purchase-journey", "manual", waiting))
        session.add(_send(cases["recently_mailed"], "other", "sent-earlier", None))
        session.execute(
            update(Enrollment)
            .where(Enrollment.customer_id == cases["completed_by_edit"])
            .values(done=["accessories", "bundle", "loyalty"])
        )
    return cases


def _send(customer_id: str, campaign_id: str, key: str, enrollment: Enrollment | None) -> Send:
    sent = enrollment is None
    return Send(
        campaign_id=campaign_id,
        kind="cross_sell",
        variant="A",
        template="t",
        customer_id=customer_id,
        event_id=f"entry-{customer_id}",
        status="sent" if sent else "planned",
        reason=None,
        dedupe_key=f"{campaign_id}|{customer_id}|{key}",
        send_at=NOW - timedelta(minutes=30) if sent else NOW,
        sent_at=NOW - timedelta(minutes=30) if sent else None,
        expires_at=NOW + timedelta(days=1),
        attempts=0,
        created_at=NOW - timedelta(hours=1),
        updated_at=NOW - timedelta(hours=1),
        enrollment_id=enrollment.id if enrollment is not None else None,
        step_id="accessories" if enrollment is not None else None,
    )


def _state(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[Any]]:
    with transaction(url) as session:
        sends = [
            tuple(row)
            for row in session.execute(
                select(
                    Send.id,
                    Send.campaign_id,
                    Send.customer_id,
                    Send.enrollment_id,
                    Send.step_id,
                    Send.status,
                    Send.reason,
                    Send.variant,
                    Send.template,
                    Send.dedupe_key,
                    Send.send_at,
                    Send.expires_at,
                ).order_by(Send.id)
            )
        ]
        enrollments = [
            tuple(row)
            for row in session.execute(
                select(
                    Enrollment.id,
                    Enrollment.status,
                    Enrollment.exit_reason,
                    Enrollment.entry_slot,
                    Enrollment.done,
                    Enrollment.steps_sent,
                    Enrollment.last_step_at,
                    Enrollment.next_step_id,
                    Enrollment.next_due_at,
                ).order_by(Enrollment.id)
            )
        ]
        offers = [
            (row.send_id, row.skus, row.reason)
            for row in session.scalars(select(SendOffer).order_by(SendOffer.send_id))
        ]
    return sends, enrollments, offers


def _fresh(folder: Path, url: str) -> str:
    """An empty migrated database of the same dialect as ``url``."""
    if url.startswith("postgresql"):
        _truncate(url)
        return url
    path = folder / "crosssell.db"
    fresh = f"sqlite:///{path}"
    upgrade(fresh)
    return fresh


def _plan(runtime: Runtime, limit: int, passes: int) -> PlanReport:
    """``passes`` passes of ``limit`` enrollments each, in one transaction; the sum of
    their reports."""
    totals = [0] * 6
    with transaction(runtime.settings.resolved_database_url) as session:
        for _ in range(passes):
            report = plan_due(session, runtime.rules.current(), runtime.policy, NOW, limit)
            totals = [a + b for a, b in zip(totals, _fields(report), strict=True)]
    return PlanReport(*totals)


def _fields(report: PlanReport) -> list[int]:
    return [
        report.planned,
        report.held_out,
        report.skipped,
        report.advanced,
        report.completed,
        report.exited,
    ]


@pytest.fixture
def _engines() -> Iterator[None]:
    yield
    dispose_engines()


@pytest.mark.usefixtures("_engines")
def test_a_pass_that_takes_its_limit_says_more_may_wait(tmp_path: Path, database_url: str) -> None:
    """The dispatcher plans again at once after a full pass (``PlanReport.full``), and
    waits after one that took fewer than its limit."""
    url = _fresh(tmp_path, database_url)
    runtime = _runtime(tmp_path, url)
    try:
        _scenario(runtime)  # 14 due enrollments
        reports = []
        for limit in (5, 5, 100):
            with transaction(url) as session:
                reports.append(
                    plan_due(session, runtime.rules.current(), runtime.policy, NOW, limit)
                )
    finally:
        runtime.close()
    assert [report.full for report in reports] == [True, True, False]


@pytest.mark.usefixtures("_engines")
def test_a_pass_plans_its_steps_as_each_planned_alone(tmp_path: Path, database_url: str) -> None:
    """Every outcome a due step can have, with two due steps of one customer in the same
    pass: planned together they give the same sends, offers and enrollments as planned
    one pass per enrollment."""
    results = []
    for run, one_at_a_time in enumerate([True, False]):
        folder = tmp_path / f"run-{run}"
        folder.mkdir()
        url = _fresh(folder, database_url)
        runtime = _runtime(folder, url)
        try:
            cases = _scenario(runtime)
            with transaction(url) as session:
                due = len(
                    session.scalars(
                        select(Enrollment.id).where(
                            Enrollment.status == "active", Enrollment.next_due_at <= NOW
                        )
                    ).all()
                )
            assert due == 14
            report = _plan(runtime, 1, due) if one_at_a_time else _plan(runtime, 100, 1)
            results.append((report, _state(url)))
        finally:
            runtime.close()
    (one_by_one, alone), (together, batched) = results
    assert together == one_by_one
    assert batched == alone
    sends, _, offers = batched
    outcomes = {(row[2], row[1]): (row[5], row[6]) for row in sends if row[4] is not None}
    both = cases["both_planned_then_gap"]
    assert outcomes[(both, "post-purchase-journey")] == ("planned", None)
    # The second step of the same customer in the same pass met the first one's email.
    assert outcomes[(both, "second-journey")][1] in ("min_gap", "deferred_by_gap")
    assert outcomes[(cases["planned_and_step_condition"], "second-journey")] == (
        "skipped",
        "step_condition",
    )
    assert outcomes[(cases["held_out"], "post-purchase-journey")] == ("held_out", "holdout")
    assert not any(customer == cases["unsubscribed"] for customer, _ in outcomes)
    assert outcomes[(cases["already_planned"], "post-purchase-journey")] == ("planned", None)
    assert not any(customer == cases["completed_by_edit"] for customer, _ in outcomes)
    # Planned: the two journey steps; skipped: the two gaps above, the recent email's
    # two and the step condition; the manual send's enrollment waits, the completed ones
    # were completed by the re-time before the pass.
    assert together == PlanReport(planned=2, held_out=2, skipped=5, exited=2)
    assert {send_id for send_id, _, _ in offers} == {
        row[0] for row in sends if row[4] is not None and row[5] in ("planned", "held_out")
    } - {row[0] for row in sends if str(row[9]).endswith("|manual")}


def _due_enrollments(runtime: Runtime, count: int) -> None:
    customers = _customers(runtime, held_out=False, count=count, skip=7000)
    with transaction(runtime.settings.resolved_database_url) as session:
        ingest_batch(
            session,
            [validate_event(_buy(customer_id, "899.00")) for customer_id in customers],
            runtime.rules.current(),
            runtime.policy,
            NOW,
        )


def _statements(session: Session, runtime: Runtime) -> tuple[int, PlanReport]:
    counted: list[str] = []

    def count(*args: Any) -> None:
        counted.append(args[2])

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", count)
    try:
        report = plan_due(session, runtime.rules.current(), runtime.policy, NOW, 100)
        session.flush()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(counted), report


@pytest.mark.usefixtures("_engines")
def test_a_pass_makes_as_many_statements_for_many_steps_as_for_few(
    tmp_path: Path, database_url: str
) -> None:
    counts = []
    for run, enrollments in enumerate([2, 10]):
        folder = tmp_path / f"run-{run}"
        folder.mkdir()
        url = _fresh(folder, database_url)
        runtime = _runtime(folder, url)
        try:
            _due_enrollments(runtime, enrollments)
            with transaction(url) as session:
                # The re-time after loading the rules is not part of a pass.
                plan_due(session, runtime.rules.current(), runtime.policy, NOW - timedelta(1), 1)
            with transaction(url) as session:
                statements, report = _statements(session, runtime)
            # Each customer's journey step is planned, and the second sequence's step,
            # planned after it in the same pass, meets its gap.
            assert (report.planned, report.skipped) == (enrollments, enrollments)
            counts.append(statements)
        finally:
            runtime.close()
    assert counts[0] == counts[1]


@pytest.mark.usefixtures("_engines")
def test_a_batch_enrolls_as_its_events_one_by_one(tmp_path: Path, database_url: str) -> None:
    """The same events, in one ingest batch and one event per transaction: the same
    enrollments and the same outcomes, an entry refused while one is active included
    (a customer's second purchase in the batch), and an exit in the batch releasing the
    entry slot for the same event's new entry."""
    results = []
    for run, batched in enumerate([False, True]):
        folder = tmp_path / f"run-{run}"
        folder.mkdir()
        url = _fresh(folder, database_url)
        runtime = _runtime(folder, url)
        try:
            first, second, third = _customers(runtime, held_out=False, count=3, skip=9000)
            earlier = NOW - timedelta(days=90)
            with transaction(url) as session:
                ingest_event(
                    session,
                    validate_event(
                        purchase(
                            "earlier",
                            at=earlier,
                            customer=customer_block(third),
                            sku="CAM-MIRRORLESS",
                            category="cameras",
                            price="899.00",
                        )
                    ),
                    runtime.rules.current(),
                    runtime.policy,
                    earlier,
                )
                # As if its first step had offered the camera: buying it again exits.
                session.execute(
                    update(Enrollment)
                    .where(Enrollment.customer_id == third)
                    .values(offered_skus=["CAM-MIRRORLESS"])
                )
            events = [
                _buy(first, "899.00"),
                purchase(
                    "again",
                    at=NOW - timedelta(seconds=30),
                    customer=customer_block(first),
                    sku="CAM-MIRRORLESS",
                    category="cameras",
                    price="899.00",
                ),
                _buy(second, "200.00"),
                _buy(third, "899.00"),
            ]
            documents = [validate_event(document) for document in events]
            rules, policy = runtime.rules.current(), runtime.policy
            if batched:
                with transaction(url) as session:
                    outcomes = ingest_batch(session, documents, rules, policy, NOW)
            else:
                outcomes = []
                for document in documents:
                    with transaction(url) as session:
                        outcomes.append(ingest_event(session, document, rules, policy, NOW))
            with transaction(url) as session:
                stored = [
                    tuple(row)
                    for row in session.execute(
                        select(
                            Enrollment.id,
                            Enrollment.campaign_id,
                            Enrollment.customer_id,
                            Enrollment.entry_event_id,
                            Enrollment.entry_slot,
                            Enrollment.status,
                            Enrollment.exit_reason,
                            Enrollment.entered_at,
                            Enrollment.next_step_id,
                            Enrollment.next_due_at,
                            Enrollment.held_out,
                        ).order_by(Enrollment.id)
                    )
                ]
                recorded: dict[str, object] = {
                    row.event_id: row.outcome
                    for row in session.execute(select(Event.event_id, Event.outcome))
                }
            results.append(([result.decisions for result in outcomes], stored, recorded))
        finally:
            runtime.close()
    assert results[0] == results[1]
    _, stored, recorded = results[1]
    assert recorded["again"] == {
        "post-purchase-journey": "already_enrolled",
        "second-journey": "already_enrolled",
    }
    assert sum(1 for row in stored if row[5] == "active") == 6


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_batch_of_thousands_of_entries_is_written_whole(
    tmp_path: Path, database_url: str
) -> None:
    """2,100 purchases entering both sequences: 4,200 entries in one ingest batch, more
    than one statement of 17 values an entry can carry on PostgreSQL (65,535 parameters),
    all written, each event's outcome naming its enrollment."""
    url = _fresh(tmp_path, database_url)
    runtime = _runtime(tmp_path, url)
    try:
        documents = [validate_event(_buy(f"C-bulk-{number}", "899.00")) for number in range(2100)]
        with transaction(url) as session:
            results = ingest_batch(session, documents, runtime.rules.current(), runtime.policy, NOW)
        assert [result.duplicate for result in results] == [False] * len(documents)
        with transaction(url) as session:
            entries = session.scalar(select(func.count()).select_from(Enrollment))
            outcomes = [outcome for (outcome,) in session.execute(select(Event.outcome))]
    finally:
        runtime.close()
    assert entries == 2 * len(documents)
    assert all(
        str(outcome[campaign]).startswith("enrolled:")
        for outcome in outcomes
        for campaign in ("post-purchase-journey", "second-journey")
    )
