"""Batched delivery with owned claims: a lost hand-over answer, recovery with the default
settings, ``crosssell sends release``, and batches holding a bad message, two sends of
one customer, or more sends than the rate allows. Real databases, a real SMTP sink."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import event, insert, select, update
from sqlalchemy.engine import make_url

from tests.support.email_api import EmailApiServer
from tests.support.factories import TUESDAY_MORNING
from tests.support.private_services import PrivatePostgres
from tests.support.services import fresh_postgres_database
from tests.support.smtp_sink import SmtpSink
from tests.worker.end_to_end.test_pipeline import _dispatch, _planned_send, _runtime
from triggers.durations import parse_duration
from worker.commands.cli import main
from worker.commands.migrate import upgrade
from worker.core.clock import ShiftedClock
from worker.core.db import dispose_engines, engine_for, transaction
from worker.core.models import ActivityOutbox, Customer, Send
from worker.core.settings import Settings, get_settings
from worker.outbox import delivery
from worker.outbox.claims import HandOver, claim, hand_over, new_token, renew
from worker.outbox.delivery import deliver_batch, deliver_send
from worker.process.runtime import Runtime

DUE = TUESDAY_MORNING + timedelta(hours=3)


def _row(url: str, send_id: int) -> Send:
    with transaction(url) as session:
        send = session.get(Send, send_id)
        assert send is not None
        session.expunge(send)
        return send


def _due(runtime: Runtime, count: int, prefix: str) -> list[int]:
    """``count`` sends of as many customers, queued (dispatched, not yet delivered)."""
    ids = [_planned_send(runtime, f"{prefix}-{number}") for number in range(count)]
    runtime.clock = ShiftedClock(DUE)
    assert sorted(_dispatch(runtime)) == sorted(ids)
    return ids


# --- fault (a): the hand-over commit landed, its answer was lost ---------------------------


@pytest.fixture
def private_database(private_postgres: PrivatePostgres) -> Iterator[str]:
    with fresh_postgres_database(admin_url=private_postgres.admin_url) as url:
        upgrade(url)
        yield url
        dispose_engines()


def test_a_connection_lost_between_two_messages_is_replaced_before_the_hand_over(
    tmp_path: Path, private_database: str, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch keeps one connection for its hand-overs and answers (pinged once per
    batch): when its backend dies between two messages (a PostgreSQL restart), the next
    hand-over fails before its COMMIT, so nothing was committed and it is tried again on
    a new connection. Both messages go out once and both answers are recorded."""
    runtime = _runtime(tmp_path, private_database, email_provider="smtp", smtp_port=smtp_sink.port)
    (first, second) = _due(runtime, 2, "C-restart")
    libpq = make_url(private_database).set(drivername="postgresql")
    conninfo = libpq.render_as_string(hide_password=False)
    real_hand_over = delivery._Batch._hand_over
    killed: list[int] = []

    def kill_the_connection_first(batch: Any, item: HandOver) -> None:
        if item.send_id == second and batch.link.connection is not None:
            pid = batch.link.connection.connection.driver_connection.info.backend_pid
            with psycopg.connect(conninfo, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            killed.append(pid)
        real_hand_over(batch, item)

    monkeypatch.setattr(delivery._Batch, "_hand_over", kill_the_connection_first)
    assert deliver_batch(runtime, [first, second]) == {first: "sent", second: "sent"}
    assert len(killed) == 1, "the connection of the first hand-over was terminated"
    assert len(smtp_sink.handler.messages) == 2
    for send_id in (first, second):
        row = _row(private_database, send_id)
        assert (row.status, row.attempts) == ("sent", 1)


def test_a_hand_over_whose_answer_is_lost_is_sent_once_later_never_ambiguous(
    tmp_path: Path,
    private_database: str,
    smtp_sink: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL stores the hand-over's COMMIT, then the connection dies before the
    worker hears back: the message must not leave, and the worker gives its own row back
    to the outbox instead of leaving it to be called ambiguous."""
    runtime = _runtime(tmp_path, private_database, email_provider="smtp", smtp_port=smtp_sink.port)
    (first, second) = _due(runtime, 2, "C-lost")
    engine = engine_for(private_database)
    libpq = make_url(private_database).set(drivername="postgresql")
    conninfo = libpq.render_as_string(hide_password=False)
    real_commit = engine.dialect.do_commit
    armed: list[int] = []
    lost: list[int] = []

    def commit_then_lose_the_answer(dbapi_connection: Any) -> None:
        real_commit(dbapi_connection)
        if armed:
            lost.append(armed.pop())
            driver = dbapi_connection.driver_connection
            with psycopg.connect(conninfo, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (driver.info.backend_pid,))
            driver.execute("SELECT 1")  # the reply that never comes: raises

    def arm_for_first(engine_: Any, token: str, item: HandOver, *rest: Any) -> None:
        if item.send_id == first and not lost:
            armed.append(item.send_id)
        hand_over(engine_, token, item, *rest)

    monkeypatch.setattr(engine.dialect, "do_commit", commit_then_lose_the_answer)
    monkeypatch.setattr(delivery, "hand_over", arm_for_first)
    with caplog.at_level(logging.WARNING, logger="worker.outbox.delivery"):
        outcomes = deliver_batch(runtime, [first, second])
    assert lost == [first], "the hand-over commit of the first send was made to fail"
    assert outcomes == {first: "released", second: "sent"}
    assert "could not be committed (OperationalError)" in caplog.text
    assert len(smtp_sink.handler.messages) == 1, "the first message did not leave"
    released = _row(private_database, first)
    assert (released.status, released.reason, released.attempts) == ("planned", "retry", 0)
    assert released.handed_over_at is None and released.claim_token is None
    monkeypatch.undo()

    assert _dispatch(runtime) == [first], "due again at once"
    assert deliver_send(runtime, first) == "sent"
    sent = _row(private_database, first)
    assert (sent.status, sent.attempts) == ("sent", 1)
    received = [str(message["Message-ID"]) for message in smtp_sink.handler.parsed()]
    expected = [str(sent.message_id), str(_row(private_database, second).message_id)]
    assert sorted(received) == sorted(expected), "each message exactly once"


# --- fault (b): every affected send delivered or reported within 2 minutes ------------------


def test_the_default_settings_recover_everything_within_two_minutes() -> None:
    """The worst case of each fault, with the defaults: a worker killed just after its
    claim is recovered when the lease ends and the next sweep runs; a task lost by the
    broker or a killed dispatcher after ``requeue_after`` and the next sweep."""
    fields = Settings.model_fields
    lease = parse_duration(str(fields["delivery_lease"].default))
    requeue = parse_duration(str(fields["requeue_after"].default))
    poll = timedelta(seconds=float(fields["dispatch_interval"].default))
    assert lease + poll <= timedelta(minutes=2)
    assert requeue + poll <= timedelta(minutes=2)


def test_a_worker_killed_mid_batch_is_recovered_when_its_lease_ends(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker claimed three sends, handed one over, then died (SIGKILL: it simply
    never comes back). With the default lease, the next sweep after it ends queues the
    two untouched sends again and reports the handed-over one ambiguous."""
    runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=smtp_sink.port)
    ids = _due(runtime, 3, "C-killed")
    lease = parse_duration(runtime.settings.delivery_lease)
    engine = engine_for(database_url)
    token = new_token()
    assert len(claim(engine, ids, token, DUE, lease)) == 3
    hand_over(engine, token, HandOver(ids[0], 1, "<killed@test>"), DUE, lease)
    runtime.clock = ShiftedClock(DUE + lease - timedelta(seconds=5))
    assert _dispatch(runtime) == [], "the lease still runs: the worker may be alive"
    runtime.clock = ShiftedClock(DUE + lease + timedelta(seconds=1))
    with caplog.at_level(logging.ERROR, logger="worker.outbox.dispatcher"):
        assert sorted(_dispatch(runtime)) == sorted(ids[1:])
    assert f"send {ids[0]} (Message-ID <killed@test>) is ambiguous" in caplog.text
    assert (_row(database_url, ids[0]).status, _row(database_url, ids[0]).reason) == (
        "failed",
        "ambiguous",
    )
    assert deliver_batch(runtime, ids) == {ids[0]: "not_claimed", ids[1]: "sent", ids[2]: "sent"}
    assert len(smtp_sink.handler.messages) == 2


def test_a_lease_renewed_by_a_working_worker_is_not_taken(
    tmp_path: Path, database_url: str
) -> None:
    runtime = _runtime(tmp_path, database_url)
    ids = _due(runtime, 1, "C-renewed")
    engine = engine_for(database_url)
    lease = parse_duration(runtime.settings.delivery_lease)
    token = new_token()
    claim(engine, ids, token, DUE, lease)
    later = DUE + lease - timedelta(seconds=1)
    assert renew(engine, token, later, lease) == 1  # the heartbeat
    runtime.clock = ShiftedClock(DUE + lease + timedelta(seconds=1))
    assert _dispatch(runtime) == []
    assert _row(database_url, ids[0]).status == "sending"
    # The sweeper took nothing; a claim taken back by it is refused at the hand-over.
    other = new_token()
    assert claim(engine, ids, other, later, lease) == [], "not queued: not claimable"


def test_a_dispatcher_killed_after_queueing_is_made_good_after_requeue_after(
    tmp_path: Path, database_url: str
) -> None:
    """The dispatcher committed ``queued`` and died before publishing (or the broker lost
    the tasks): the next dispatcher publishes them again after ``requeue_after``."""
    runtime = _runtime(tmp_path, database_url)
    ids = _due(runtime, 2, "C-unpublished")  # published to a list nobody reads
    requeue = parse_duration(runtime.settings.requeue_after)
    runtime.clock = ShiftedClock(DUE + requeue - timedelta(seconds=5))
    assert _dispatch(runtime) == []
    runtime.clock = ShiftedClock(DUE + requeue + timedelta(seconds=1))
    assert sorted(_dispatch(runtime)) == sorted(ids)
    assert set(deliver_batch(runtime, ids).values()) == {"sent"}


# --- the crash-loop cap (CROSSSELL_MAX_CLAIMS) ----------------------------------------------


class _WorkerKilled(BaseException):
    """Stands for the process dying while it renders (OOM): not an ``Exception``, so no
    handler of the worker catches it, and nothing after it runs, as after a SIGKILL."""


def _render_kills_the_worker(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> None:
    def killed(*_: Any, **__: Any) -> Any:
        raise _WorkerKilled

    monkeypatch.setattr(type(runtime.renderer), "render", killed)


def test_a_send_that_kills_its_worker_before_the_hand_over_fails_after_max_claims(
    tmp_path: Path,
    database_url: str,
    smtp_sink: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Attempts are counted at the hand-over, so a message that kills its worker while it
    renders would be queued again at every lease expiry forever. Through the real task
    and the real sweep: it comes back ``max_claims - 1`` times, then fails with the
    reason; nothing ever reaches the provider."""
    runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=smtp_sink.port)
    max_claims = runtime.settings.max_claims
    assert max_claims == 5, "the documented default"
    (send_id,) = _due(runtime, 1, "C-oom")
    lease = parse_duration(runtime.settings.delivery_lease)
    _render_kills_the_worker(monkeypatch, runtime)
    now = DUE
    for claims in range(1, max_claims + 1):
        runtime.clock = ShiftedClock(now)
        with pytest.raises(_WorkerKilled):
            deliver_batch(runtime, [send_id])
        row = _row(database_url, send_id)
        assert (row.status, row.claims, row.handed_over_at) == ("sending", claims, None)
        now += lease + timedelta(seconds=1)
        runtime.clock = ShiftedClock(now)
        with caplog.at_level(logging.ERROR, logger="worker.outbox.dispatcher"):
            requeued = _dispatch(runtime)
        if claims < max_claims:
            assert requeued == [send_id], f"claim {claims} of {max_claims}: queued again"
            assert _row(database_url, send_id).status == "queued"
    assert requeued == []
    failed = _row(database_url, send_id)
    assert (failed.status, failed.reason, failed.attempts) == ("failed", "claims_exhausted", 0)
    assert failed.claim_token is None and failed.detail is not None
    assert f"send {send_id} failed/claims_exhausted" in caplog.text
    assert smtp_sink.handler.messages == []
    assert deliver_send(runtime, send_id) == "not_claimed", "failed for good"


def test_the_claim_count_starts_again_once_a_worker_survives_to_the_hand_over(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims count the deaths *in a row*: a send that killed a worker (or several, fewer
    than the cap) and then goes out is ``sent`` with its count back at 0."""
    runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=smtp_sink.port)
    (send_id,) = _due(runtime, 1, "C-flaky")
    lease = parse_duration(runtime.settings.delivery_lease)
    now = DUE
    with monkeypatch.context() as patched:
        _render_kills_the_worker(patched, runtime)
        for _ in range(runtime.settings.max_claims - 1):
            runtime.clock = ShiftedClock(now)
            with pytest.raises(_WorkerKilled):
                deliver_batch(runtime, [send_id])
            now += lease + timedelta(seconds=1)
            runtime.clock = ShiftedClock(now)
            assert _dispatch(runtime) == [send_id]
    assert _row(database_url, send_id).claims == runtime.settings.max_claims - 1
    assert deliver_send(runtime, send_id) == "sent"
    sent = _row(database_url, send_id)
    assert (sent.status, sent.claims, sent.attempts) == ("sent", 0, 1)
    assert len(smtp_sink.handler.messages) == 1


# --- crosssell sends release --------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("CROSSSELL_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    upgrade(get_settings().resolved_database_url)
    yield CliRunner()
    get_settings.cache_clear()
    dispose_engines()


def _stored_send(url: str, number: int, **values: Any) -> int:
    now = TUESDAY_MORNING
    row = {
        "campaign_id": "c",
        "kind": "cross_sell",
        "customer_id": f"C-release-{number}",
        "event_id": f"E-release-{number}",
        "dedupe_key": f"release-{number}",
        "attempts": 1,
        "created_at": now,
        "updated_at": now,
    } | values
    with transaction(url) as session:
        session.add(Customer(id=row["customer_id"], created_at=now, updated_at=now))
        session.flush()
        return int(session.execute(insert(Send).values(**row).returning(Send.id)).scalar_one())


def test_sends_release_gives_ambiguous_and_stuck_sends_back_and_refuses_others(
    cli: CliRunner,
) -> None:
    url = get_settings().resolved_database_url
    ambiguous = _stored_send(url, 1, status="failed", reason="ambiguous", message_id="<a@t>")
    stuck = _stored_send(url, 2, status="sending", claim_token="t" * 32)
    sent = _stored_send(url, 3, status="sent")
    result = cli.invoke(main, ["sends", "release", str(ambiguous), str(stuck)])
    assert result.exit_code == 0, result.output
    assert f"send {ambiguous}: failed/ambiguous → planned, due now" in result.output
    assert f"send {stuck}: sending → planned, due now" in result.output
    for send_id in (ambiguous, stuck):
        row = _row(url, send_id)
        assert (row.status, row.reason, row.claim_token) == ("planned", None, None)
        assert row.detail is not None and "released by an operator" in row.detail
    assert _row(url, ambiguous).message_id == "<a@t>", "the same Message-ID is sent again"
    refused = cli.invoke(main, ["sends", "release", str(sent), "999999"])
    assert refused.exit_code == 1
    assert f"send {sent}: is sent; only failed/ambiguous or sending" in refused.output
    assert "send 999999: no such send" in refused.output
    assert _row(url, sent).status == "sent"


@pytest.mark.parametrize(
    "send_id", ["99999999999999999999999999", "9223372036854775808", "0", "-1"]
)
def test_sends_release_refuses_an_id_no_send_can_have_as_a_usage_error(
    cli: CliRunner, send_id: str
) -> None:
    """Past a 64-bit integer the database raises (SQLite ``OverflowError``, PostgreSQL
    ``NumericValueOutOfRange``): refused before any query, exit 2, no traceback."""
    result = cli.invoke(main, ["sends", "release", "--", send_id])
    assert result.exit_code == 2, result.output
    assert "is not in the range 1<=x<=9223372036854775807" in result.output
    assert "Traceback" not in result.output


# --- what a batch holds -------------------------------------------------------------------


def test_a_bad_message_in_the_middle_of_a_batch_stops_only_itself(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=smtp_sink.port)
    ids = _due(runtime, 5, "C-bad")
    with transaction(database_url) as session:  # a template that does not render
        session.execute(update(Send).where(Send.id == ids[1]).values(template="no-such"))
    real_prepare = delivery.prepare

    def broken_for_one(*arguments: Any) -> object:
        if arguments[2].id == ids[3]:
            raise KeyError("a field no recheck expected")
        return real_prepare(*arguments)

    monkeypatch.setattr(delivery, "prepare", broken_for_one)
    outcomes = deliver_batch(runtime, ids)
    assert outcomes == {
        ids[0]: "sent",
        ids[1]: "skipped",
        ids[2]: "sent",
        ids[3]: "failed",
        ids[4]: "sent",
    }
    assert _row(database_url, ids[1]).reason == "render_error"
    assert _row(database_url, ids[3]).reason == "internal_error"
    assert len(smtp_sink.handler.messages) == 3


def _second_send_of(database_url: str, send_id: int) -> int:
    """Another queued send of the same customer and campaign, due with the first."""
    first = _row(database_url, send_id)
    columns = {
        column.key: getattr(first, column.key)
        for column in Send.__table__.columns
        if column.key not in ("id", "dedupe_key", "coupon_code", "message_id")
    }
    with transaction(database_url) as session:
        return int(
            session.execute(
                insert(Send)
                .values(**columns, dedupe_key=f"{first.dedupe_key}-again")
                .returning(Send.id)
            ).scalar_one()
        )


def test_two_sends_of_one_customer_in_one_batch_end_as_one_at_a_time(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    """The second is rechecked against the first as sent, exactly as when each had its
    own task (here the campaign's 1-day cooldown skips it); neither sees the other as
    already going out while both are merely claimed."""
    runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=smtp_sink.port)
    one, other = _due(runtime, 2, "C-twice")
    one_again, other_again = (
        _second_send_of(database_url, one),
        _second_send_of(database_url, other),
    )
    # One at a time, the way separate tasks would go:
    assert [deliver_send(runtime, one), deliver_send(runtime, one_again)] == ["sent", "skipped"]
    # All four in one batch, the customer's second send first in the list:
    assert deliver_batch(runtime, [other_again, other]) == {
        other_again: "sent",
        other: "skipped",
    }
    assert _row(database_url, one_again).reason == _row(database_url, other).reason
    assert len(smtp_sink.handler.messages) == 2


def test_a_batch_spanning_a_rate_limit_boundary_gives_the_rest_back(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    runtime = _runtime(
        tmp_path,
        database_url,
        email_provider="smtp",
        smtp_port=smtp_sink.port,
        rate_limit_per_second=0.5,
        rate_limit_burst=2,
        rate_limit_max_wait=0.5,
    )
    ids = _due(runtime, 4, "C-rate")
    before = runtime.clock.now()
    outcomes = deliver_batch(runtime, ids)
    after = runtime.clock.now()
    assert outcomes == {ids[0]: "sent", ids[1]: "sent", ids[2]: "throttled", ids[3]: "throttled"}
    for send_id in ids[2:]:
        row = _row(database_url, send_id)
        assert (row.status, row.reason, row.attempts) == ("planned", "rate_limited", 0)
        # Two slots at once (the burst), the next one 2 s after the first was taken.
        assert row.send_at is not None
        assert before + timedelta(seconds=1.9) <= row.send_at <= after + timedelta(seconds=2)
    assert len(smtp_sink.handler.messages) == 2


def test_a_lost_claim_keeps_the_message_from_leaving(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper (or an operator) took the send back between the recheck and the
    hand-over: the hand-over finds the row is not this worker's and nothing leaves."""
    runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=smtp_sink.port)
    (send_id,) = _due(runtime, 1, "C-taken")

    real_hand_over = delivery._Batch._hand_over

    def taken_back(batch: Any, item: HandOver) -> None:
        # Committed before the hand-over's transaction begins (on SQLite a write inside
        # it would wait for the worker's own write lock).
        with transaction(database_url) as session:
            session.execute(update(Send).where(Send.id == item.send_id).values(claim_token=None))
        real_hand_over(batch, item)

    monkeypatch.setattr(delivery._Batch, "_hand_over", taken_back)
    assert deliver_send(runtime, send_id) == "not_claimed"
    assert smtp_sink.handler.messages == []
    with transaction(database_url) as session:
        assert session.scalar(select(Send.handed_over_at).where(Send.id == send_id)) is None


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
def test_smtp_answers_ride_on_the_next_hand_over_so_a_kill_leaves_one_ambiguous(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, pipelining: bool
) -> None:
    """SMTP answers each final dot on its own; the answer is committed with the next
    message's hand-over, the last one's at the end: one commit per email. When message
    *i* is about to be handed over, every message before *i - 1* is recorded ``sent`` and
    only *i - 1* waits (``sending``, handed over), so a worker killed mid-batch leaves at
    most one message ambiguous, not every message of the batch sent so far."""
    with SmtpSink(pipelining=pipelining) as sink:
        runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=sink.port)
        ids = _due(runtime, 4, f"C-each-{pipelining}")
        seen: list[tuple[int, list[str]]] = []
        commits: list[int] = []
        reading: list[bool] = []

        real_hand_over = delivery._Batch._hand_over

        def note_earlier_statuses(batch: Any, item: HandOver) -> None:
            # Read before the hand-over's transaction begins (on SQLite a read inside it
            # would wait for the worker's own write lock).
            earlier = ids[: ids.index(item.send_id)]
            reading.append(True)
            seen.append((item.send_id, [_row(database_url, send_id).status for send_id in earlier]))
            reading.clear()
            real_hand_over(batch, item)

        def count_commit(*_: Any) -> None:
            if seen and not reading:  # the worker's, from the first hand-over on
                commits.append(1)

        engine = engine_for(database_url)
        event.listen(engine, "commit", count_commit)
        monkeypatch.setattr(delivery._Batch, "_hand_over", note_earlier_statuses)
        try:
            outcomes = deliver_batch(runtime, ids)
        finally:
            event.remove(engine, "commit", count_commit)
    assert outcomes == dict.fromkeys(ids, "sent")
    assert seen == [
        (send_id, ["sent"] * (position - 1) + ["sending"] * min(position, 1))
        for position, send_id in enumerate(ids)
    ]
    assert len(commits) == len(ids) + 1, "one commit per hand-over, one for the last answer"
    assert [_row(database_url, send_id).status for send_id in ids] == ["sent"] * len(ids)
    assert len(sink.handler.messages) == 4
    assert sink.handler.connections == 1, "one connection carried the whole batch"


def test_a_claim_lost_mid_batch_keeps_the_earlier_answer_and_its_activity(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the previous message's ``sent`` answer and its ``email_sent`` activity
    row ride in the next hand-over's statement (``worker.outbox.answer_and_hand_over``).
    When that hand-over is refused, nothing of the statement is kept: the answer is
    written afterwards, once, and the refused message never leaves. Both dialects end
    with the same rows."""
    runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=smtp_sink.port)
    ids = _due(runtime, 3, "C-mid")
    real_hand_over = delivery._Batch._hand_over

    def take_back_the_second(batch: Any, item: HandOver) -> None:
        if item.send_id == ids[1]:
            with transaction(database_url) as session:
                session.execute(update(Send).where(Send.id == ids[1]).values(claim_token=None))
        real_hand_over(batch, item)

    monkeypatch.setattr(delivery._Batch, "_hand_over", take_back_the_second)
    outcomes = deliver_batch(runtime, ids)
    assert outcomes == {ids[0]: "sent", ids[1]: "not_claimed", ids[2]: "sent"}
    rows = {send_id: _row(database_url, send_id) for send_id in ids}
    assert [rows[send_id].status for send_id in ids] == ["sent", "sending", "sent"]
    assert rows[ids[1]].handed_over_at is None
    received = sorted(smtp_sink.handler.message_ids())
    assert received == sorted(str(rows[send_id].message_id) for send_id in (ids[0], ids[2]))
    with transaction(database_url) as session:
        activity = {
            row.activity_id: row
            for row in session.scalars(
                select(ActivityOutbox).where(ActivityOutbox.type == "email_sent")
            )
        }
    assert sorted(activity) == sorted(f"email_sent:send-{send_id}" for send_id in (ids[0], ids[2]))
    for send_id in (ids[0], ids[2]):
        row = activity[f"email_sent:send-{send_id}"]
        send = rows[send_id]
        assert row.customer_id == send.customer_id
        assert row.occurred_at == send.sent_at
        assert row.published_at is None
        assert row.data == {
            "send_id": send_id,
            "campaign_id": send.campaign_id,
            "kind": send.kind,
            "variant": send.variant,
            "event_id": send.event_id,
            "provider": "smtp",
            "message_id": send.message_id,
        }


def test_a_batch_endpoint_request_carries_only_the_messages_that_were_built(
    tmp_path: Path, database_url: str
) -> None:
    """Messages are built right before they are handed over; with a provider's batch
    endpoint (Postmark's, one request for the batch) every message is built first, and
    one whose template does not render is skipped with the reason, without a place in
    the request: the others go out together, once, each handed over before it."""
    with EmailApiServer() as api:
        runtime = _runtime(
            tmp_path,
            database_url,
            email_provider="postmark",
            postmark_server_token=api.postmark_token,
            postmark_base_url=api.url,
        )
        ids = _due(runtime, 4, "C-api")
        with transaction(database_url) as session:
            session.execute(update(Send).where(Send.id == ids[2]).values(template="no-such"))
        outcomes = deliver_batch(runtime, ids)
        requests = {(attempt.arrived, attempt.peer) for attempt in api.attempts}
        accepted = sorted(attempt.message_id for attempt in api.accepted)
    assert outcomes == {ids[0]: "sent", ids[1]: "sent", ids[2]: "skipped", ids[3]: "sent"}
    rows = {send_id: _row(database_url, send_id) for send_id in ids}
    assert (rows[ids[2]].status, rows[ids[2]].reason) == ("skipped", "render_error")
    assert rows[ids[2]].handed_over_at is None
    assert len(requests) == 1, "one request to the batch endpoint"
    assert accepted == sorted(str(rows[send_id].message_id) for send_id in (ids[0], ids[1], ids[3]))
