"""The dispatcher is woken by ingest's commit of a due send, not by its next poll.

The poll is set to 30 s, so a send enqueued within a few seconds of its commit can only
have been picked up by the wake-up: PostgreSQL's LISTEN/NOTIFY between connections, the
in-process event on SQLite (``crosssell run``). Times are the ones recorded at the
commit and at the enqueue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import select

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from tests.support.fleet import CAMPAIGN
from triggers.events import validate_event
from worker.commands.demo import seed_catalog
from worker.core.clock import ShiftedClock
from worker.core.db import transaction
from worker.core.models import Send
from worker.core.wakeup import NOTHING, SENDS, STEPS, Waiter, wake_kinds
from worker.intake.ingest import ingest_event
from worker.outbox import dispatcher
from worker.outbox.dispatcher import WAKE_COALESCE_SECONDS, DispatchReport, run_dispatcher
from worker.process.runtime import Runtime

POLL_SECONDS = 30.0
# Far below the poll, far above a pass on a loaded 2-core machine.
WAKE_WITHIN_SECONDS = 5.0


class Dispatching:
    """``run_dispatcher`` in a thread, recording when each id was enqueued."""

    def __init__(self, runtime: Runtime) -> None:
        self.enqueued: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=run_dispatcher, args=(runtime, self.stop, self.enqueue), daemon=True
        )

    def enqueue(self, ids: Sequence[int]) -> None:
        at = time.monotonic()
        for send_id in ids:
            self.enqueued.setdefault(send_id, at)

    def wait_for(self, send_id: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if send_id in self.enqueued:
                return self.enqueued[send_id]
            time.sleep(0.02)
        return self.enqueued.get(send_id)


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    runtime = _runtime(tmp_path, database_url, CAMPAIGN)
    yield runtime
    runtime.close()


def _runtime(tmp_path: Path, database_url: str, campaign: str, **settings: object) -> Runtime:
    """A runtime on ``campaign`` alone, polling every POLL_SECONDS, its rules loaded."""
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "campaign.yaml").write_text(campaign)
    configured = make_settings(
        tmp_path,
        database_url=database_url,
        campaigns_dir=campaigns,
        quiet_hours="off",
        dispatch_interval=POLL_SECONDS,
        **settings,
    )
    runtime = Runtime(configured, clock=ShiftedClock(TUESDAY_MORNING))
    seed_catalog(configured, TUESDAY_MORNING)
    runtime.rules  # noqa: B018 - loaded before the dispatcher thread reads it
    return runtime


def _ingest_purchase(runtime: Runtime) -> tuple[int, float]:
    """A laptop purchase whose cross-sell is due at once: its send id and the time its
    transaction committed."""
    event = validate_event(purchase(customer=customer_block("C-wake-1")))
    with transaction(runtime.settings.resolved_database_url) as session:
        ingest_event(session, event, runtime.rules.current(), runtime.policy, runtime.clock.now())
    committed = time.monotonic()
    with transaction(runtime.settings.resolved_database_url) as session:
        send_id = session.scalars(
            select(Send.id).where(Send.event_id == event.id, Send.status.in_(["planned", "queued"]))
        ).one()
    return send_id, committed


def _started(dispatching: Dispatching) -> None:
    """Start the dispatcher and let its first pass (with the poll's housekeeping) end:
    from then on only the wake-up can make it look again within POLL_SECONDS."""
    dispatching.thread.start()
    time.sleep(2.0)


def test_ingest_wakes_the_dispatcher_long_before_its_poll(runtime: Runtime) -> None:
    dispatching = Dispatching(runtime)
    _started(dispatching)
    try:
        send_id, committed = _ingest_purchase(runtime)
        enqueued = dispatching.wait_for(send_id, WAKE_WITHIN_SECONDS + 5)
    finally:
        dispatching.stop.set()
        dispatching.thread.join(10)
    assert not dispatching.thread.is_alive(), "the dispatcher did not stop within 10 s"
    assert enqueued is not None, f"send {send_id} not enqueued within 10 s (poll: 30 s)"
    assert enqueued - committed < WAKE_WITHIN_SECONDS
    with transaction(runtime.settings.resolved_database_url) as session:
        assert session.get(Send, send_id).status == "queued"  # type: ignore[union-attr]


SEQUENCE = """\
id: camera-journey
name: A first step at once after a camera purchase
kind: cross_sell
trigger:
  event: purchase
  where: {field: event.categories, op: contains, value: cameras}
offer: {type: complementary, max_items: 2}
steps:
  - {id: first, after_entry: 0m, template: accessories}
  - {id: later, after_entry: 7d, template: accessories}
experiment:
  variants:
    - {id: A, template: accessories}
"""


def test_a_sequence_entry_due_at_once_wakes_the_dispatcher_to_plan_its_step(
    tmp_path: Path, database_url: str
) -> None:
    """An entry makes no send at ingest: its first step is planned by the dispatcher.
    Ingest wakes it when that step is due at once, and the woken pass (not only the poll's
    housekeeping) plans and enqueues the step."""
    runtime = _runtime(tmp_path, database_url, SEQUENCE)
    settings = runtime.settings
    dispatching = Dispatching(runtime)
    _started(dispatching)
    event = validate_event(
        purchase(
            customer=customer_block("C-wake-journey"),
            sku="CAM-MIRRORLESS",
            category="cameras",
            price="1200.00",
        )
    )
    try:
        with transaction(settings.resolved_database_url) as session:
            ingest_event(
                session, event, runtime.rules.current(), runtime.policy, runtime.clock.now()
            )
            assert session.scalars(select(Send.id).where(Send.event_id == event.id)).all() == []
        committed = time.monotonic()
        deadline = committed + WAKE_WITHIN_SECONDS + 5
        step: int | None = None
        while step is None and time.monotonic() < deadline:
            with transaction(settings.resolved_database_url) as session:
                step = session.scalars(
                    select(Send.id).where(Send.campaign_id == "camera-journey")
                ).first()
            time.sleep(0.05)
        assert step is not None, "the first step was not planned within 10 s (poll: 30 s)"
        enqueued = dispatching.wait_for(step, WAKE_WITHIN_SECONDS)
    finally:
        dispatching.stop.set()
        dispatching.thread.join(10)
        runtime.close()
    assert enqueued is not None and enqueued - committed < WAKE_WITHIN_SECONDS
    with transaction(settings.resolved_database_url) as session:
        planned = session.get(Send, step)
        assert planned is not None and planned.step_id == "first" and planned.status == "queued"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_without_the_wakeup_the_send_waits_for_the_poll(tmp_path: Path, database_url: str) -> None:
    """The same scenario with ``dispatch_wakeup`` off: what the test above measures is the
    wake-up, not a dispatcher that happens to look again."""
    runtime = _runtime(tmp_path, database_url, CAMPAIGN, dispatch_wakeup=False)
    dispatching = Dispatching(runtime)
    _started(dispatching)
    try:
        send_id, _ = _ingest_purchase(runtime)
        enqueued = dispatching.wait_for(send_id, 3.0)
    finally:
        dispatching.stop.set()
        dispatching.thread.join(10)
        runtime.close()
    assert enqueued is None


def test_a_lost_listen_connection_is_said_and_so_is_its_return(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The dispatcher's LISTEN connection breaks (a PostgreSQL restart, a proxy's idle
    cut): the waiter says it polls meanwhile, listens again as soon as it can connect,
    says so, and hears the next commit's NOTIFY."""
    from sqlalchemy import text

    from worker.core.db import engine_for
    from worker.core.wakeup import CHANNEL, Waiter

    waiter = Waiter(postgres_url)
    stop = threading.Event()
    try:
        assert waiter.wait(0.05, stop) == NOTHING and waiter.listening
        connection = waiter._connection
        assert connection is not None
        connection.pgconn.finish()  # the socket goes away under the waiter
        with caplog.at_level("INFO", logger="worker.core.wakeup"):
            assert waiter.wait(0.2, stop) == NOTHING
        assert waiter.listening and waiter._connection is not connection
        messages = [record.getMessage() for record in caplog.records]
        assert any("lost the LISTEN connection" in m for m in messages), messages
        assert any(f"listening for due sends again (LISTEN {CHANNEL})" in m for m in messages)
        with engine_for(postgres_url).begin() as notifier:
            notifier.execute(text(f"NOTIFY {CHANNEL}"))
        # A NOTIFY without a payload (an earlier version's) asks for everything.
        assert waiter.wait(10, stop) == {SENDS, STEPS}
    finally:
        waiter.close()


class _RecordingStop(threading.Event):
    """The dispatcher's stop event, noting every wait the loop makes on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return super().wait(timeout)


class _Waker:
    """A wake-up source that wakes the dispatcher after ``quiet`` seconds, every time, for
    ``kinds`` (in turn; for emails due now when not given)."""

    def __init__(self, quiet: float, kinds: Sequence[frozenset[str]] = ()) -> None:
        self.quiet = quiet
        self.kinds = list(kinds)

    def wait(self, timeout: float, stop: threading.Event) -> frozenset[str]:
        time.sleep(self.quiet)
        return self.kinds.pop(0) if self.kinds else frozenset({SENDS})

    def close(self) -> None:
        pass


def _passes(
    monkeypatch: pytest.MonkeyPatch,
    quiet: float,
    kinds: Sequence[frozenset[str]] = (),
    planned: list[bool] | None = None,
) -> tuple[list[float], _RecordingStop]:
    """Five woken passes of the dispatcher loop, each waking ``quiet`` seconds after the
    last pass ended, for ``kinds`` in turn: when each pass started, and the loop's waits on
    its stop event; ``planned`` gets whether each pass planned the sequences' steps."""
    starts: list[float] = []
    stop = _RecordingStop()

    def one_pass(
        runtime: object, enqueue: object, housekeeping: bool, steps: bool
    ) -> DispatchReport:
        starts.append(time.monotonic())
        if planned is not None:
            planned.append(steps)
        if len(starts) == 5:
            stop.set()
        return DispatchReport(1, 0, 0, 0)

    monkeypatch.setattr(dispatcher, "dispatch_once", one_pass)
    settings = SimpleNamespace(dispatch_interval=POLL_SECONDS, dispatch_batch=500)
    runtime = cast(Runtime, SimpleNamespace(settings=settings))
    waker = cast(Waiter, _Waker(quiet, kinds))
    dispatcher._dispatch_until_stopped(runtime, stop, lambda ids: None, waker)
    return starts, stop


def test_woken_passes_start_at_least_the_coalescing_interval_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Commits that keep waking the dispatcher share passes: woken passes start at least
    ``WAKE_COALESCE_SECONDS`` apart, however often it is woken."""
    starts, stop = _passes(monkeypatch, quiet=0.0)
    gaps = [later - earlier for earlier, later in pairwise(starts)]
    assert len(gaps) == 4
    assert min(gaps) >= WAKE_COALESCE_SECONDS - 0.002, gaps
    # one coalescing wait after each pass (after the last one, the stop ends it at once)
    assert len(stop.waits) == len(starts)
    assert all(0 < wait <= WAKE_COALESCE_SECONDS for wait in stop.waits if wait is not None)


def test_a_wake_up_after_a_quiet_moment_runs_its_pass_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first commit after a quiet moment (the start of a burst) is not held back by
    the coalescing interval: the loop makes no wait between the wake-up and the pass."""
    starts, stop = _passes(monkeypatch, quiet=WAKE_COALESCE_SECONDS * 1.5)
    assert len(starts) == 5
    assert stop.waits == []


def test_woken_passes_plan_sequence_steps_only_when_a_wake_up_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first pass (housekeeping) plans steps; after it, a pass woken for emails due now
    only claims sends, one woken for a step (or for both) plans the steps first."""
    planned: list[bool] = []
    kinds = [frozenset({SENDS}), frozenset({STEPS}), frozenset({SENDS}), frozenset({SENDS, STEPS})]
    _passes(monkeypatch, quiet=0.0, kinds=kinds, planned=planned)
    assert planned == [True, False, True, False, True]


@pytest.mark.parametrize(
    ("payloads", "kinds"),
    [
        ([], set()),
        (["sends"], {SENDS}),
        (["steps"], {STEPS}),
        (["sends", "sends", "steps"], {SENDS, STEPS}),
        ([""], {SENDS, STEPS}),
        (["Steps"], {SENDS, STEPS}),
        (["sends", "anything else"], {SENDS, STEPS}),
    ],
)
def test_a_wake_up_asks_for_what_its_payload_names_and_an_unknown_one_for_everything(
    payloads: list[str], kinds: set[str]
) -> None:
    assert wake_kinds(payloads) == kinds


@pytest.mark.parametrize("steps", [False, True], ids=["sends", "steps"])
def test_a_commit_wakes_the_waiter_for_what_it_planned(database_url: str, steps: bool) -> None:
    """ingest's wake-up, over PostgreSQL's NOTIFY or the in-process event (SQLite), says
    whether a step is due; a rolled-back one wakes nothing."""
    from worker.core.wakeup import wake_dispatcher

    waiter = Waiter(database_url)
    stop = threading.Event()
    try:
        waiter.wait(0.05, stop)  # listening (PostgreSQL) before the commits
        with pytest.raises(RuntimeError), transaction(database_url) as session:
            wake_dispatcher(session, steps=True)
            raise RuntimeError("rolled back")
        assert waiter.wait(0.3, stop) == NOTHING
        with transaction(database_url) as session:
            wake_dispatcher(session, steps=steps)
        woken = waiter.wait(10, stop)
    finally:
        waiter.close()
    assert STEPS in woken if steps else woken == {SENDS}


def test_a_full_batch_of_steps_is_followed_at_once_by_another_pass_that_plans_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backlog of due steps (a blast's step delay elapsing, a dispatcher back after
    downtime) is planned a full batch per pass, pass after pass, without waiting for a
    wake-up or the poll; the pass after the last full one waits again."""
    backlog = {"steps": 5 * 500 + 20}
    planned: list[bool] = []
    waits: list[float] = []
    stop = threading.Event()

    def one_pass(
        runtime: object, enqueue: object, housekeeping: bool, steps: bool
    ) -> DispatchReport:
        planned.append(steps)
        taken = min(500, backlog["steps"]) if steps else 0
        backlog["steps"] -= taken
        return DispatchReport(0, 0, 0, 0, steps_left=taken == 500)

    class Quiet:
        def wait(self, timeout: float, stop_event: threading.Event) -> frozenset[str]:
            waits.append(timeout)
            stop.set()
            return NOTHING

        def close(self) -> None:
            pass

    monkeypatch.setattr(dispatcher, "dispatch_once", one_pass)
    settings = SimpleNamespace(dispatch_interval=POLL_SECONDS, dispatch_batch=500)
    runtime = cast(Runtime, SimpleNamespace(settings=settings))
    dispatcher._dispatch_until_stopped(runtime, stop, lambda ids: None, cast(Waiter, Quiet()))
    assert backlog["steps"] == 0
    assert planned == [True] * 6
    assert len(waits) == 1  # only after the last, partial batch


def test_a_steps_commit_landing_while_the_waiter_reads_the_flags_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The in-process wake-up (``crosssell run``): a sequence entry's commit that lands
    between the waiter's look at the steps flag and its clearing still asks the next
    pass to plan steps."""
    from worker.core import wakeup

    landing: list[Callable[[], None]] = []

    class Racing(threading.Event):
        def is_set(self) -> bool:
            seen = super().is_set()
            while landing:
                landing.pop()()
            return seen

    monkeypatch.setattr(wakeup, "_steps_committed", Racing())
    monkeypatch.setattr(wakeup, "_committed", threading.Event())
    waiter = Waiter("sqlite:///unused.db")  # no LISTEN: the in-process events
    stop = threading.Event()
    wakeup._set_committed(cast(Any, None))  # an email due now is committed
    landing.append(lambda: wakeup._set_steps_committed(cast(Any, None)))  # then an entry
    kinds = set(waiter.wait(0.5, stop)) | set(waiter.wait(0.5, stop))
    assert kinds == {SENDS, STEPS}
