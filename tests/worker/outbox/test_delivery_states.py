"""The outbox's less travelled transitions, on SQLite and PostgreSQL: a worker that died
after the hand-over, a send that cannot be prepared, a send that waits for its rate."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.support.factories import TUESDAY_MORNING
from tests.worker.end_to_end.test_pipeline import _dispatch, _planned_send, _runtime
from worker.core.clock import ShiftedClock
from worker.core.db import transaction
from worker.core.models import Send
from worker.outbox.delivery import deliver_send


def _status(database_url: str, send_id: int) -> tuple[str, str | None]:
    with transaction(database_url) as session:
        send = session.get(Send, send_id)
        assert send is not None
        return send.status, send.reason


def test_a_send_left_sending_by_a_dead_worker_is_reported_ambiguous_not_resent(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = _runtime(tmp_path, database_url, sending_timeout="5m")
    send_id = _planned_send(runtime, "C-dead")
    later = TUESDAY_MORNING + timedelta(hours=3)
    runtime.clock = ShiftedClock(later)
    assert _dispatch(runtime) == [send_id]
    with transaction(database_url) as session:  # the worker's claim, then SIGKILL
        session.execute(
            update(Send)
            .where(Send.id == send_id)
            .values(status="sending", message_id="<dead@test>", updated_at=later)
        )
    runtime.clock = ShiftedClock(later + timedelta(minutes=4))
    assert _dispatch(runtime) == []
    assert _status(database_url, send_id) == ("sending", None)  # may still be working
    runtime.clock = ShiftedClock(later + timedelta(minutes=6))
    with caplog.at_level(logging.ERROR, logger="worker.outbox.dispatcher"):
        assert _dispatch(runtime) == []
    assert _status(database_url, send_id) == ("failed", "ambiguous")
    assert f"send {send_id} (Message-ID <dead@test>) is ambiguous" in caplog.text
    assert deliver_send(runtime, send_id) == "not_claimed"


def test_a_send_that_cannot_be_prepared_fails_with_the_reason_instead_of_looping(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = _runtime(tmp_path, database_url)
    send_id = _planned_send(runtime, "C-bug")
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    assert _dispatch(runtime) == [send_id]

    def broken(*_: object) -> None:
        raise KeyError("a field no recheck expected")

    monkeypatch.setattr("worker.outbox.delivery.prepare", broken)
    assert deliver_send(runtime, send_id) == "failed"
    with transaction(database_url) as session:
        send = session.get(Send, send_id)
    assert send is not None and (send.status, send.reason) == ("failed", "internal_error")
    assert send.detail is not None and "a field no recheck expected" in send.detail
    assert send.attempts == 0, "the claim was rolled back: nothing was handed over"


def test_a_slot_too_far_away_gives_the_send_back_to_the_outbox(
    tmp_path: Path, database_url: str
) -> None:
    runtime = _runtime(
        tmp_path,
        database_url,
        rate_limit_per_second=0.5,
        rate_limit_burst=1,
        rate_limit_max_wait=0.5,
    )
    first = _planned_send(runtime, "C-rate-a")
    second = _planned_send(runtime, "C-rate-b")
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    assert sorted(_dispatch(runtime)) == sorted([first, second])
    assert deliver_send(runtime, first) == "sent"
    assert deliver_send(runtime, second) == "throttled"  # next slot is 2 s away
    with transaction(database_url) as session:
        send = session.get(Send, second)
    assert send is not None and (send.status, send.reason) == ("planned", "rate_limited")
    assert send.send_at is not None
    # Due at the next slot: beyond max_wait (else the worker would have waited for it)
    # and no further than one slot (2 s at 0.5/s) after the throttling decision, however
    # slowly the machine ran between the first send and the second.
    wait = (send.send_at - send.updated_at).total_seconds()
    assert 0.5 < wait <= 2.0 + 0.05
    assert send.attempts == 0


def test_the_dispatcher_keeps_no_more_than_max_queued_in_the_broker(
    tmp_path: Path, database_url: str
) -> None:
    runtime = _runtime(tmp_path, database_url, dispatch_max_queued=2)
    sends = [_planned_send(runtime, f"C-pressure-{n}") for n in range(3)]
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    first = _dispatch(runtime)
    assert len(first) == 2 and set(first) < set(sends)
    assert _dispatch(runtime) == [], "the broker already holds two"
    assert deliver_send(runtime, first[0]) == "sent"
    assert _dispatch(runtime) == sorted(set(sends) - set(first))
    rest = sorted(set(sends) - set(first))
    assert _status(database_url, rest[0]) == ("queued", None)
