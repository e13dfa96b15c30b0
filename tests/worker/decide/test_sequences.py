"""Sequences end to end on a real database: enroll at ingest, steps planned by the
dispatcher, delivered through the outbox with the same rechecks, exits, hot reload."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import event as sql_event
from sqlalchemy import select, update

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from triggers.events import validate_event
from triggers.sequences import earliest_offsets
from worker.commands.demo import seed_catalog
from worker.core.db import engine_for, transaction
from worker.core.models import Enrollment, Send
from worker.decide.rule_files import load_rule_set
from worker.intake.ingest import ingest_event
from worker.outbox import delivery
from worker.outbox.claims import HandOver
from worker.outbox.delivery import deliver_batch, deliver_send
from worker.outbox.dispatcher import dispatch_once
from worker.process.runtime import Runtime

ROOT = Path(__file__).resolve().parents[3]
JOURNEY = ROOT / "config" / "campaigns" / "post-purchase-journey.yaml"
_opened: list[Runtime] = []


class SteppedClock:
    """A clock the test moves by hand (the engine never reads another)."""

    def __init__(self, start: datetime) -> None:
        self.at = start

    def now(self) -> datetime:
        return self.at


@pytest.fixture(autouse=True)
def _close_runtimes() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def _journey() -> object:
    return load_rule_set([JOURNEY]).by_id("post-purchase-journey")


def _customer(held_out: bool) -> str:
    """A customer id the journey's experiment holds out (or not), found by the reference
    assignment function rather than assumed."""
    return _customers(held_out, 1)[0]


def _customers(held_out: bool, count: int) -> list[str]:
    compiled = load_rule_set([JOURNEY]).by_id("post-purchase-journey")
    assert compiled is not None
    found = [
        customer_id
        for customer_id in (f"C-{number}" for number in range(1000))
        if compiled.assign(customer_id).held_out == held_out
    ]
    assert len(found) >= count, f"fewer than {count} such customers in 1000"
    return found[:count]


def _runtime(tmp_path: Path, database_url: str) -> tuple[Runtime, SteppedClock]:
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    shutil.copy(JOURNEY, campaigns / JOURNEY.name)
    settings = make_settings(
        tmp_path, database_url=database_url, campaigns_dir=campaigns, quiet_hours="off"
    )
    clock = SteppedClock(TUESDAY_MORNING)
    runtime = Runtime(settings, clock=clock)
    seed_catalog(settings, TUESDAY_MORNING)
    _opened.append(runtime)
    return runtime, clock


def _ingest(runtime: Runtime, document: dict[str, object]) -> None:
    with transaction(runtime.settings.resolved_database_url) as session:
        ingest_event(
            session,
            validate_event(document),
            runtime.rules.current(),
            runtime.policy,
            runtime.clock.now(),
        )


def _pump(runtime: Runtime) -> list[str]:
    """Plan due steps, claim due sends and deliver them until nothing moves."""
    statuses: list[str] = []
    queued: list[int] = []

    def collect(ids: Sequence[int]) -> None:
        queued.extend(ids)

    for _ in range(10):
        queued.clear()
        dispatch_once(runtime, collect)
        if not queued:
            break
        statuses += [deliver_send(runtime, send_id) for send_id in queued]
    return statuses


def _camera(customer_id: str, at: datetime, event_id: str | None = None) -> dict[str, object]:
    return purchase(
        event_id,
        at=at,
        customer=customer_block(customer_id),
        sku="CAM-MIRRORLESS",
        category="cameras",
        price="899.00",
    )


def _steps(database_url: str, customer_id: str) -> list[tuple[str | None, str, str | None]]:
    with transaction(database_url) as session:
        rows = session.execute(
            select(Send.step_id, Send.status, Send.reason)
            .where(Send.customer_id == customer_id)
            .order_by(Send.id)
        ).all()
    return [(row.step_id, row.status, row.reason) for row in rows]


def _enrollment(database_url: str, customer_id: str) -> Enrollment:
    with transaction(database_url) as session:
        return session.scalars(
            select(Enrollment).where(Enrollment.customer_id == customer_id)
        ).one()


def _advance(runtime: Runtime, clock: SteppedClock, days: int) -> None:
    """Move the clock day by day (the dispatcher polls every day), to a Tuesday 10:30."""
    for _ in range(days):
        clock.at += timedelta(days=1)
        _pump(runtime)


def test_three_steps_go_out_in_order_at_their_delays(tmp_path: Path, database_url: str) -> None:
    runtime, clock = _runtime(tmp_path, database_url)
    customer = _customer(held_out=False)
    _ingest(runtime, _camera(customer, clock.at))
    assert _pump(runtime) == ["sent"]
    _advance(runtime, clock, 35)
    assert _steps(database_url, customer) == [
        ("accessories", "sent", None),
        ("bundle", "sent", None),
        ("loyalty", "sent", None),
    ]
    with transaction(database_url) as session:
        sent = session.execute(
            select(Send.step_id, Send.sent_at).where(Send.customer_id == customer)
        ).all()
    entered = TUESDAY_MORNING
    delays = {"accessories": timedelta(0), "bundle": timedelta(days=7), "loyalty": timedelta(30)}
    for step_id, sent_at in sent:
        assert sent_at is not None and sent_at >= entered + delays[step_id or ""]
    enrollment = _enrollment(database_url, customer)
    assert (enrollment.status, enrollment.exit_reason, enrollment.steps_sent) == (
        "completed",
        "completed",
        3,
    )
    assert enrollment.done == ["accessories", "bundle", "loyalty"]


def _first_steps_queued(
    tmp_path: Path, database_url: str, count: int
) -> tuple[Runtime, list[str], list[int]]:
    """``count`` customers who bought a camera, each journey's first step queued (dispatched
    together, so one deliver batch takes them all): the runtime, customers, send ids."""
    runtime, clock = _runtime(tmp_path, database_url)
    customers = _customers(held_out=False, count=count)
    for customer in customers:
        _ingest(runtime, _camera(customer, clock.at))
    queued: list[int] = []
    dispatch_once(runtime, queued.extend)
    assert len(queued) == count
    return runtime, customers, queued


@pytest.mark.parametrize("exit_second", [False, True], ids=["all-active", "second-exits"])
def test_a_batch_of_steps_hands_each_over_with_the_answer_before_it_in_one_statement(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, exit_second: bool
) -> None:
    """A step's hand-over checks its enrollment (still active, locked until the commit)
    and records what the step offers. On PostgreSQL that check rides in the statement
    that hands the message over and records the previous message's answer: each
    hand-over after a batch's first is one statement. An enrollment that ended between
    the recheck and the hand-over (an exit committed meanwhile) refuses the whole
    statement: that step never leaves, and the answer it carried is written once, on
    its own. SQLite writes the same rows with separate statements (the statement count:
    ``test_hand_over_statements_per_step_on_postgresql``)."""
    runtime, customers, queued = _first_steps_queued(tmp_path, database_url, 3)
    enrollment_ids = [_enrollment(database_url, customer).id for customer in customers]
    real_hand_over = delivery._Batch._hand_over

    def exit_before_the_second(batch: Any, item: HandOver) -> None:
        assert item.enrollment_id is not None and item.offered_skus
        if exit_second and item.send_id == queued[1]:
            with transaction(database_url) as session:  # the exit commits first
                session.execute(
                    update(Enrollment)
                    .where(Enrollment.id == item.enrollment_id)
                    .values(status="exited", exit_reason="unsubscribed")
                )
        real_hand_over(batch, item)

    monkeypatch.setattr(delivery._Batch, "_hand_over", exit_before_the_second)
    outcomes = deliver_batch(runtime, queued)

    expected = ["sent", "skipped", "sent"] if exit_second else ["sent"] * 3
    assert [outcomes[send_id] for send_id in queued] == expected
    with transaction(database_url) as session:
        sends = {row.id: row for row in session.scalars(select(Send).where(Send.id.in_(queued)))}
        enrollments = {
            row.id: row
            for row in session.scalars(select(Enrollment).where(Enrollment.id.in_(enrollment_ids)))
        }
    for position, send_id in enumerate(queued):
        send = sends[send_id]
        enrollment = enrollments[int(str(send.enrollment_id))]
        if expected[position] == "sent":
            assert send.status == "sent" and send.sent_at is not None
            assert enrollment.status == "active" and enrollment.offered_skus
        else:
            assert (send.status, send.reason) == ("skipped", "sequence_exited")
            assert send.handed_over_at is None
            assert (enrollment.status, enrollment.offered_skus) == ("exited", [])
    written = sorted((tmp_path / "var" / "outbox").iterdir())
    assert len(written) == expected.count("sent"), "the refused step never left"


def test_hand_over_statements_per_step_on_postgresql(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step hand-over after a batch's first is one statement on PostgreSQL (it was
    four: the hand-over, the enrollment check, the answer and its activity row)."""
    runtime, _, queued = _first_steps_queued(tmp_path, postgres_url, 4)
    statements: list[int] = []
    real_hand_over = delivery._Batch._hand_over

    def counted_hand_over(batch: Any, item: HandOver) -> None:
        statements.append(0)
        real_hand_over(batch, item)

    def count_statement(*_: Any) -> None:
        if statements:
            statements[-1] += 1

    engine = engine_for(postgres_url)
    monkeypatch.setattr(delivery._Batch, "_hand_over", counted_hand_over)
    sql_event.listen(engine, "before_cursor_execute", count_statement)
    try:
        outcomes = deliver_batch(runtime, queued)
    finally:
        sql_event.remove(engine, "before_cursor_execute", count_statement)
    assert list(outcomes.values()) == ["sent"] * 4
    # The counts run to the next hand-over: the last one's includes the final answer.
    assert statements[1:3] == [1, 1], statements


def test_buying_an_offered_product_exits_before_the_next_step(
    tmp_path: Path, database_url: str
) -> None:
    runtime, clock = _runtime(tmp_path, database_url)
    customer = _customer(held_out=False)
    _ingest(runtime, _camera(customer, clock.at))
    _pump(runtime)
    offered = _enrollment(database_url, customer).offered_skus
    assert offered, "the first step recorded what it offered"
    _advance(runtime, clock, 6)
    # Day 7 arrives with the purchase already in the inbox, before the dispatcher polls.
    clock.at += timedelta(days=1)
    _ingest(runtime, purchase(at=clock.at, customer=customer_block(customer), sku=offered[0]))
    _advance(runtime, clock, 40)
    assert _steps(database_url, customer) == [("accessories", "sent", None)]
    enrollment = _enrollment(database_url, customer)
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "purchased_offered")


def test_a_purchase_of_something_else_skips_the_bundle_by_only_if(
    tmp_path: Path, database_url: str
) -> None:
    runtime, clock = _runtime(tmp_path, database_url)
    customer = _customer(held_out=False)
    _ingest(runtime, _camera(customer, clock.at))
    _pump(runtime)
    _advance(runtime, clock, 2)
    _ingest(
        runtime,
        purchase(
            at=clock.at, customer=customer_block(customer), sku="KEY-MECH", category="keyboards"
        ),
    )
    _advance(runtime, clock, 35)
    assert _steps(database_url, customer) == [
        ("accessories", "sent", None),
        ("bundle", "skipped", "step_condition"),
        ("loyalty", "sent", None),
    ]


def test_held_out_customers_receive_nothing_but_their_steps_are_recorded(
    tmp_path: Path, database_url: str
) -> None:
    runtime, clock = _runtime(tmp_path, database_url)
    customer = _customer(held_out=True)
    _ingest(runtime, _camera(customer, clock.at))
    _advance(runtime, clock, 35)
    steps = _steps(database_url, customer)
    assert [status for _, status, _ in steps] == ["held_out"] * 3
    assert not (tmp_path / "var" / "outbox").exists() or not list(
        (tmp_path / "var" / "outbox").iterdir()
    )


def test_two_entries_in_the_same_second_enroll_once(tmp_path: Path, database_url: str) -> None:
    runtime, clock = _runtime(tmp_path, database_url)
    customer = _customer(held_out=False)
    _ingest(runtime, _camera(customer, clock.at))
    _ingest(runtime, _camera(customer, clock.at))
    with transaction(database_url) as session:
        rows = session.scalars(select(Enrollment).where(Enrollment.customer_id == customer)).all()
    assert len(rows) == 1


def test_unsubscribe_exits_at_the_next_event(tmp_path: Path, database_url: str) -> None:
    runtime, clock = _runtime(tmp_path, database_url)
    customer = _customer(held_out=False)
    _ingest(runtime, _camera(customer, clock.at))
    _pump(runtime)
    clock.at += timedelta(days=1)
    withdrawn = customer_block(customer, consent={"email_marketing": False})
    _ingest(
        runtime, purchase(at=clock.at, customer=withdrawn, sku="TRI-GORILLA", category="tripods")
    )
    _advance(runtime, clock, 35)
    assert _steps(database_url, customer) == [("accessories", "sent", None)]
    assert _enrollment(database_url, customer).exit_reason == "unsubscribed"


def test_editing_a_live_sequence(tmp_path: Path, database_url: str) -> None:
    """Steps are matched by id: a removed step is skipped, a changed delay applies to
    steps not yet planned, a paused campaign stops future steps."""
    runtime, clock = _runtime(tmp_path, database_url)
    first, second = _customer(held_out=False), None
    _ingest(runtime, _camera(first, clock.at))
    _pump(runtime)
    campaign_file = runtime.settings.campaigns_dir / JOURNEY.name
    text = campaign_file.read_text()
    # The bundle step goes; the loyalty step comes after 10 days instead of 30.
    start = text.index("  - id: bundle")
    end = text.index("  - id: loyalty")
    edited = (text[:start] + text[end:]).replace("after_entry: 30d", "after_entry: 10d")
    campaign_file.write_text(edited)
    runtime.rules.load()
    _advance(runtime, clock, 14)  # to a Tuesday: in the campaign's window
    assert _steps(database_url, first) == [("accessories", "sent", None), ("loyalty", "sent", None)]
    assert _enrollment(database_url, first).status == "completed"

    # Paused: a newly enrolled customer gets their first step, then nothing more.
    for number in range(1000, 2000):
        candidate = f"C-{number}"
        if candidate != first and _customer_is_mailed(candidate):
            second = candidate
            break
    assert second is not None
    _ingest(runtime, _camera(second, clock.at))
    _pump(runtime)
    campaign_file.write_text(edited.replace("status: active", "status: paused"))
    runtime.rules.load()
    _advance(runtime, clock, 15)
    assert _steps(database_url, second) == [("accessories", "sent", None)]
    assert _enrollment(database_url, second).status == "active"


def _customer_is_mailed(customer_id: str) -> bool:
    compiled = load_rule_set([JOURNEY]).by_id("post-purchase-journey")
    assert compiled is not None
    return not compiled.assign(customer_id).held_out


def test_explain_shows_the_path_of_an_enrollment(tmp_path: Path, database_url: str) -> None:
    from worker.commands.explain import explain

    runtime, clock = _runtime(tmp_path, database_url)
    customer = _customer(held_out=False)
    entry = _camera(customer, clock.at)
    _ingest(runtime, entry)
    _pump(runtime)
    offered = _enrollment(database_url, customer).offered_skus
    clock.at += timedelta(days=2)
    bought = purchase(at=clock.at, customer=customer_block(customer), sku=offered[0])
    _ingest(runtime, bought)
    lines = list(explain(runtime, validate_event(entry), "post-purchase-journey", None))
    text = "\n".join(lines)
    assert "decision: enters the sequence, variant A" in text, text
    assert f"exited (purchased_offered at {clock.at.isoformat()}, event {bought['id']})" in text
    assert "step accessories: sent" in text
    assert "step bundle: not reached (purchased_offered)" in text
    assert "step loyalty: not reached (purchased_offered)" in text


def test_simulate_predicts_each_step_and_exit_of_the_pipeline(
    tmp_path: Path, database_url: str
) -> None:
    from collections import Counter

    from sqlalchemy import func

    from triggers.simulate import simulate

    runtime, clock = _runtime(tmp_path, database_url)
    mailed = [c for c in (f"C-{n}" for n in range(2000, 2100)) if _customer_is_mailed(c)][:3]
    held = _customer(held_out=True)
    other, withdrawn, plain = mailed
    start = clock.at
    timeline: list[tuple[int, dict[str, object]]] = [
        (0, _camera(plain, start)),
        (0, _camera(other, start)),
        (0, _camera(withdrawn, start)),
        (0, _camera(held, start)),
        (
            2,
            purchase(
                at=start + timedelta(days=2),
                customer=customer_block(other),
                sku="KEY-MECH",
                category="keyboards",
            ),
        ),
        (
            3,
            purchase(
                at=start + timedelta(days=3),
                customer=customer_block(withdrawn, consent={"email_marketing": False}),
                sku="KEY-SLIM",
                category="keyboards",
            ),
        ),
    ]
    for day in range(40):
        for when, document in timeline:
            if when == day:
                _ingest(runtime, document)
        _pump(runtime)
        clock.at += timedelta(days=1)
    with transaction(database_url) as session:
        actual_steps = Counter(
            {
                (step, status, reason): count
                for step, status, reason, count in session.execute(
                    select(Send.step_id, Send.status, Send.reason, func.count()).group_by(
                        Send.step_id, Send.status, Send.reason
                    )
                ).all()
            }
        )
        actual_exits = Counter(
            dict(
                session.execute(
                    select(Enrollment.exit_reason, func.count()).group_by(Enrollment.exit_reason)
                ).all()
            )
        )
    report = simulate(
        [validate_event(document) for _, document in timeline],
        runtime.rules.current(),
        runtime.policy,
    )
    predicted_steps = Counter(
        {
            (step, outcome, reason): count
            for (_, step, outcome, reason), count in report.steps.items()
        }
    )
    predicted_exits = Counter({reason: count for (_, reason), count in report.exits.items()})
    assert +predicted_steps == +actual_steps
    assert +predicted_exits == +actual_exits
    # And what that is, as the campaign file states it.
    assert actual_steps[("bundle", "skipped", "step_condition")] == 1  # the keyboard buyer
    assert actual_steps[("loyalty", "sent", None)] == 2
    assert actual_exits["unsubscribed"] == 1 and actual_exits["completed"] == 3


# --- the invariants over arbitrary interleavings, on the real pipeline ----------------------

_TEMPLATE_DB: dict[str, Path] = {}


def _fresh_sqlite(folder: Path) -> str:
    """A migrated SQLite database, copied from one migrated once per session (fast)."""
    from worker.commands.migrate import upgrade

    if "db" not in _TEMPLATE_DB:
        template = Path(tempfile.mkdtemp(prefix="seq-template-")) / "template.db"
        upgrade(f"sqlite:///{template}")
        _TEMPLATE_DB["db"] = template
    target = folder / "crosssell.db"
    shutil.copy(_TEMPLATE_DB["db"], target)
    return f"sqlite:///{target}"


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("enter"), st.sampled_from(("mailed-1", "mailed-2", "held"))),
        st.tuples(st.just("buy_offered"), st.sampled_from(("mailed-1", "mailed-2", "held"))),
        st.tuples(st.just("buy_other"), st.sampled_from(("mailed-1", "mailed-2"))),
        st.tuples(st.just("wait"), st.integers(1, 9 * 24)),
    ),
    min_size=1,
    max_size=14,
)


@settings(
    max_examples=int(os.environ.get("CROSSSELL_SEQUENCE_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ACTIONS)
def test_pipeline_invariants_over_interleavings(
    tmp_path_factory: pytest.TempPathFactory, script: list[tuple[Any, ...]]
) -> None:
    from worker.core.db import dispose_engines

    folder = tmp_path_factory.mktemp("interleaving")
    url = _fresh_sqlite(folder)
    runtime, clock = _runtime(folder, url)
    names = {
        "mailed-1": _customer(held_out=False),
        "mailed-2": next(
            c for c in (f"C-{n}" for n in range(3000, 4000)) if _customer_is_mailed(c)
        ),
        "held": _customer(held_out=True),
    }
    # (enrollment, when the exiting event was stored, the last send id before it)
    exits: list[tuple[int, datetime, int]] = []
    try:
        for number, action in enumerate(script):
            if action[0] == "wait":
                clock.at += timedelta(hours=action[1])
                _pump(runtime)
                continue
            customer = names[action[1]]
            if action[0] == "enter":
                document = _camera(customer, clock.at, f"e-{number}")
            else:
                active = _active(url, customer)
                offered = sorted({sku for e in active for sku in e.offered_skus})
                sku = offered[0] if action[0] == "buy_offered" and offered else "KEY-MECH"
                category = _category(sku)
                document = purchase(
                    f"e-{number}",
                    at=clock.at,
                    customer=customer_block(customer),
                    sku=sku,
                    category=category,
                )
                should_exit = [e.id for e in active if sku in e.offered_skus]
                last_send = _last_send_id(url)
            _ingest(runtime, document)
            if action[0] != "enter":
                for enrollment_id in should_exit:
                    exits.append((enrollment_id, clock.at, last_send))
                    assert _status(url, enrollment_id) == ("exited", "purchased_offered")
            _pump(runtime)
        clock.at += timedelta(days=40)
        _pump(runtime)
        _check_invariants(url, names["held"], exits)
        event("an enrollment exited" if exits else "no exit")
    finally:
        runtime.close()
        _opened.remove(runtime)
        dispose_engines()


def _category(sku: str) -> str:
    from worker.commands.demo_data import catalog_rows

    return next(row.category for row in catalog_rows() if row.sku == sku)


def _active(url: str, customer_id: str) -> list[Enrollment]:
    with transaction(url) as session:
        return list(
            session.scalars(
                select(Enrollment).where(
                    Enrollment.customer_id == customer_id, Enrollment.status == "active"
                )
            )
        )


def _last_send_id(url: str) -> int:
    from sqlalchemy import func

    with transaction(url) as session:
        return int(session.scalar(select(func.max(Send.id))) or 0)


def _status(url: str, enrollment_id: int) -> tuple[str, str | None]:
    with transaction(url) as session:
        row = session.get(Enrollment, enrollment_id)
        assert row is not None
        return row.status, row.exit_reason


def _check_invariants(url: str, held_customer: str, exits: list[tuple[int, datetime, int]]) -> None:
    compiled = load_rule_set([JOURNEY]).by_id("post-purchase-journey")
    assert compiled is not None and compiled.campaign.steps is not None
    order = [step.id for step in compiled.campaign.steps]
    offsets = dict(zip(order, earliest_offsets(compiled.campaign.steps), strict=True))
    with transaction(url) as session:
        enrollments = {e.id: e for e in session.scalars(select(Enrollment))}
        sends = list(session.scalars(select(Send).where(Send.enrollment_id.is_not(None))))
    by_enrollment: dict[int, list[Send]] = {}
    for send in sends:
        assert send.enrollment_id is not None
        by_enrollment.setdefault(send.enrollment_id, []).append(send)
    for enrollment_id, rows in by_enrollment.items():
        enrollment = enrollments[enrollment_id]
        step_ids = [row.step_id for row in rows]
        assert len(step_ids) == len(set(step_ids)), "a step twice"
        sent = sorted((row for row in rows if row.status == "sent"), key=lambda r: r.id)
        assert [order.index(r.step_id or "") for r in sent] == sorted(
            order.index(r.step_id or "") for r in sent
        ), "steps out of order"
        for row in sent:
            assert row.sent_at is not None
            assert row.sent_at >= enrollment.entered_at + offsets[row.step_id or ""], "early"
        if enrollment.customer_id == held_customer:
            assert all(row.status == "held_out" for row in rows), "a held-out customer got mail"
    for enrollment_id, stored_at, last_send in exits:
        for row in by_enrollment.get(enrollment_id, []):
            assert row.id <= last_send, "a step planned after the exit"
            assert row.sent_at is None or row.sent_at <= stored_at, "a step sent after the exit"
            if row.sent_at is None:
                assert row.status in ("skipped", "held_out"), (row.status, row.reason)


def test_reenter_after_waits_from_the_previous_entry(tmp_path: Path, database_url: str) -> None:
    """``reenter: {after: 60d}``: not while enrolled, not within 60 days of the last entry."""
    from worker.core.models import Event

    runtime, clock = _runtime(tmp_path, database_url)
    customer = _customer(held_out=False)
    _ingest(runtime, _camera(customer, clock.at, "entry-1"))
    _advance(runtime, clock, 35)  # completed by now
    _ingest(runtime, _camera(customer, clock.at, "entry-2"))
    clock.at += timedelta(days=28)  # 63 days after the first entry
    _ingest(runtime, _camera(customer, clock.at, "entry-3"))
    with transaction(database_url) as session:
        outcomes = {
            row.event_id: row.outcome["post-purchase-journey"]
            for row in session.scalars(select(Event).where(Event.event_id.like("entry-%")))
        }
        entries = session.scalars(
            select(Enrollment.entry_event_id).where(Enrollment.customer_id == customer)
        ).all()
    assert outcomes["entry-2"] == "already_enrolled"
    assert outcomes["entry-3"].startswith("enrolled:")
    assert sorted(entries) == ["entry-1", "entry-3"]


def test_a_step_already_planned_is_not_planned_again(tmp_path: Path, database_url: str) -> None:
    """A due time written over (a concurrent re-time after a reload) while the step's send
    waits: the planner notices the send and waits for it, instead of failing on its key."""
    runtime, clock = _runtime(tmp_path, database_url)
    customer = _customer(held_out=False)
    clock.at = TUESDAY_MORNING.replace(hour=22)  # planned for tomorrow morning
    _ingest(runtime, _camera(customer, clock.at))
    assert _pump(runtime) == []
    with transaction(database_url) as session:
        enrollment = session.scalars(
            select(Enrollment).where(Enrollment.customer_id == customer)
        ).one()
        assert enrollment.next_due_at is None
        enrollment.next_due_at = clock.at - timedelta(minutes=1)
    assert _pump(runtime) == []
    assert _steps(database_url, customer) == [("accessories", "planned", "outside_window")]
    assert _enrollment(database_url, customer).next_due_at is None


def test_lint_renders_each_step_as_it_will_be_sent(tmp_path: Path) -> None:
    """A step's own subject and offer are rendered by lint, and a fault points at the step."""
    from triggers.lint_issues import RuleSetError
    from worker.core.settings import Settings
    from worker.decide.rules import load_rules
    from worker.email.rendering import Renderer

    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    text = JOURNEY.read_text().replace(
        "    template: journey_bundle\n",
        '    template: journey_bundle\n    subject: "{{ 1/0 }}"\n',
    )
    (campaigns / "journey.yaml").write_text(text)
    settings = Settings(var_dir=tmp_path / "var", campaigns_dir=campaigns)
    with pytest.raises(RuleSetError) as raised:
        load_rules(settings, Renderer(settings))
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "journey_bundle" in row)
    subject_line = line + 1  # the fault is in the step's own subject, on the next line
    subject_col = text.splitlines()[line].index("{{ 1/0 }}") + 1
    errors = raised.value.errors
    assert {(i.line, i.col, i.code, i.path) for i in errors} == {
        (subject_line, subject_col, "template-runtime", "steps[1].subject")
    }
    # One subject text over a template with Romanian and Italian subject files also warns.
    warnings = {(i.line, i.code) for i in raised.value.issues if i.level == "warning"}
    assert warnings == {(line, "single-language-subject")}
    # Unchanged, the shipped file lints: the bundle template renders with the step's offer.
    (campaigns / "journey.yaml").write_text(JOURNEY.read_text())
    assert load_rules(settings, Renderer(settings)).by_id("post-purchase-journey") is not None


def test_a_late_event_from_before_the_entry_exits_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """A purchase that happened before the customer entered, delivered late, is no
    purchase "since entry": it neither exits nor counts for only_if."""
    runtime, clock = _runtime(tmp_path, database_url)
    customer = _customer(held_out=False)
    _ingest(runtime, _camera(customer, clock.at))
    _pump(runtime)
    offered = _enrollment(database_url, customer).offered_skus
    earlier = clock.at - timedelta(days=1)
    _ingest(runtime, purchase(at=earlier, customer=customer_block(customer), sku=offered[0]))
    enrollment = _enrollment(database_url, customer)
    assert (enrollment.status, enrollment.purchased_since_entry) == ("active", False)


def test_two_racing_entries_leave_one_enrollment(tmp_path: Path, postgres_url: str) -> None:
    """Two transactions enroll the same customer at once, neither seeing the other's row:
    the unique entry slot keeps one, the other inserts nothing (no error, no second row)."""
    import threading

    from tests.conftest import _truncate
    from triggers.outcomes import Decision
    from worker.core.db import session_factory
    from worker.decide.sequences import enroll

    _truncate(postgres_url)
    runtime, clock = _runtime(tmp_path, postgres_url)
    compiled = runtime.rules.current().by_id("post-purchase-journey")
    assert compiled is not None
    customer = _customer(held_out=False)
    other = purchase(
        at=clock.at, customer=customer_block(customer), sku="KEY-SLIM", category="keyboards"
    )
    _ingest(runtime, other)  # the customer row exists; nobody is enrolled yet
    events = [validate_event(_camera(customer, clock.at, f"race-{n}")) for n in range(2)]
    decisions = [
        Decision(compiled.id, "enrolled", None, "A", None, None, None, f"race-{n}")
        for n in range(2)
    ]
    factory = session_factory(postgres_url)
    first, second = factory(), factory()
    results: dict[str, int | None] = {}

    def race() -> None:
        with second.begin():
            results["second"] = enroll(
                second, compiled, decisions[1], customer, events[1], clock.at
            )

    try:
        first.begin()
        results["first"] = enroll(first, compiled, decisions[0], customer, events[0], clock.at)
        thread = threading.Thread(target=race)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive(), "the second insert waits on the first one's unique key"
        first.commit()
        thread.join(10)
        assert not thread.is_alive()
    finally:
        first.close()
        second.close()
    assert results["first"] is not None and results["second"] is None
    with transaction(postgres_url) as session:
        rows = session.scalars(select(Enrollment.id).where(Enrollment.customer_id == customer))
        assert list(rows) == [results["first"]]
    _truncate(postgres_url)


def test_a_planned_step_removed_from_the_file_is_skipped(tmp_path: Path, database_url: str) -> None:
    runtime, clock = _runtime(tmp_path, database_url)
    customer = _customer(held_out=False)
    clock.at = TUESDAY_MORNING.replace(hour=22)  # the first step waits for the morning
    _ingest(runtime, _camera(customer, clock.at))
    _pump(runtime)
    assert _steps(database_url, customer) == [("accessories", "planned", "outside_window")]
    campaign_file = runtime.settings.campaigns_dir / JOURNEY.name
    text = campaign_file.read_text()
    start, end = text.index("  - id: accessories"), text.index("  - id: bundle")
    campaign_file.write_text(text[:start] + text[end:])
    runtime.rules.load()
    clock.at += timedelta(hours=12)
    _pump(runtime)
    assert _steps(database_url, customer) == [("accessories", "skipped", "step_removed")]
    assert _enrollment(database_url, customer).next_step_id == "bundle"


def test_reenter_never_keeps_the_entry_slot_for_ever(tmp_path: Path, database_url: str) -> None:
    from worker.core.models import Event

    runtime, clock = _runtime(tmp_path, database_url)
    campaign_file = runtime.settings.campaigns_dir / JOURNEY.name
    campaign_file.write_text(
        campaign_file.read_text().replace("reenter: {after: 60d}", "reenter: never")
    )
    runtime.rules.load()
    customer = _customer(held_out=False)
    _ingest(runtime, _camera(customer, clock.at, "first-entry"))
    _advance(runtime, clock, 35)
    clock.at += timedelta(days=365)
    _ingest(runtime, _camera(customer, clock.at, "a-year-later"))
    with transaction(database_url) as session:
        said = session.scalars(select(Event.outcome).where(Event.event_id == "a-year-later")).one()
    assert said["post-purchase-journey"] == "already_enrolled"
    enrollment = _enrollment(database_url, customer)
    assert (enrollment.status, enrollment.entry_slot) == ("completed", "once")


def test_a_purchase_after_a_step_is_credited_to_that_step_and_its_sequence(
    tmp_path: Path, database_url: str
) -> None:
    """Attribution covers every step: the conversion points at the step's email (so the
    report credits the step) and counts in the sequence campaign's comparison."""
    from worker.commands.report import build_report
    from worker.core.models import Conversion
    from worker.decide.attribution import AttributionConfig

    runtime, clock = _runtime(tmp_path, database_url)
    customer = _customer(held_out=False)
    _ingest(runtime, _camera(customer, clock.at))
    _pump(runtime)
    _advance(runtime, clock, 8)  # the day-7 bundle goes out too
    bundle_skus = [
        sku
        for sku in _enrollment(database_url, customer).offered_skus
        if sku not in _journey_accessories_offer(database_url, customer)
    ] or _enrollment(database_url, customer).offered_skus
    clock.at += timedelta(days=1)
    _ingest(runtime, purchase(at=clock.at, customer=customer_block(customer), sku=bundle_skus[0]))
    with transaction(database_url) as session:
        (conversion,) = session.scalars(select(Conversion)).all()
        credited = session.get(Send, conversion.send_id)
        assert credited is not None
        assert (conversion.campaign_id, credited.step_id) == ("post-purchase-journey", "bundle")
        assert conversion.kind == "direct"
        report = build_report(
            session,
            runtime.rules.current(),
            AttributionConfig.from_settings(runtime.settings),
            clock.at,
        )
    rows = {row.step_id: row for row in report.steps if row.campaign_id == "post-purchase-journey"}
    assert (rows["accessories"].sent, rows["accessories"].direct) == (1, 0)
    assert (rows["bundle"].sent, rows["bundle"].direct) == (1, 1)
    (journey,) = [c for c in report.comparisons if c.campaign_id == "post-purchase-journey"]
    assert journey.variant.direct == 1


def _journey_accessories_offer(database_url: str, customer_id: str) -> list[str]:
    from worker.core.models import SendOffer

    with transaction(database_url) as session:
        first = session.scalars(
            select(Send).where(Send.customer_id == customer_id, Send.step_id == "accessories")
        ).first()
        if first is None:
            return []
        offer = session.get(SendOffer, first.id)
        return list(offer.skus) if offer else []
