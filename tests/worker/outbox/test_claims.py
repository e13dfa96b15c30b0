"""The claim and hand-over statements, built once and executed with parameters: each
execution writes exactly the columns it is given, whatever the one before it wrote."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from tests.support.factories import TUESDAY_MORNING
from tests.worker.end_to_end.test_pipeline import _dispatch, _planned_send, _runtime
from worker.core.clock import ShiftedClock
from worker.core.db import engine_for, transaction
from worker.core.models import Send
from worker.outbox.claims import (
    CLAIM_SKIP_LOCKED,
    HandOver,
    LostClaim,
    claim,
    hand_over,
    new_token,
)
from worker.outbox.delivery import _owned

DUE = TUESDAY_MORNING + timedelta(hours=3)
LEASE = timedelta(minutes=5)


def _queued(tmp_path: Path, database_url: str, customers: list[str]) -> list[int]:
    runtime = _runtime(tmp_path, database_url)
    ids = [_planned_send(runtime, customer) for customer in customers]
    runtime.clock = ShiftedClock(DUE)
    assert sorted(_dispatch(runtime)) == sorted(ids)
    return ids


def _row(database_url: str, send_id: int) -> Send:
    with transaction(database_url) as session:
        send = session.get(Send, send_id)
        assert send is not None
        session.expunge(send)
        return send


def test_a_hand_over_without_a_coupon_keeps_the_stored_one(
    tmp_path: Path, database_url: str
) -> None:
    (with_coupon, without) = _queued(tmp_path, database_url, ["C-coupon", "C-plain"])
    engine, token = engine_for(database_url), new_token()
    assert {row.send_id for row in claim(engine, [with_coupon, without], token, DUE, LEASE)} == {
        with_coupon,
        without,
    }
    expires = DUE + timedelta(days=7)
    hand_over(engine, token, HandOver(with_coupon, 1, "<a@x>", "KIT-1", expires), DUE, LEASE)
    # The same statement next without coupon columns: they are not part of its SET clause.
    hand_over(engine, token, HandOver(without, 1, "<b@x>"), DUE, LEASE)
    later = DUE + timedelta(minutes=1)
    hand_over(engine, token, HandOver(with_coupon, 2, "<a@x>"), later, LEASE)

    kept, plain = _row(database_url, with_coupon), _row(database_url, without)
    assert (kept.coupon_code, kept.attempts, kept.message_id) == ("KIT-1", 2, "<a@x>")
    assert kept.coupon_expires_at is not None
    assert kept.handed_over_at == later
    assert (plain.coupon_code, plain.coupon_expires_at, plain.message_id) == (None, None, "<b@x>")


def test_a_hand_over_under_another_token_moves_nothing(tmp_path: Path, database_url: str) -> None:
    (send_id,) = _queued(tmp_path, database_url, ["C-other"])
    engine, token = engine_for(database_url), new_token()
    assert [row.send_id for row in claim(engine, [send_id], token, DUE, LEASE)] == [send_id]
    try:
        hand_over(engine, new_token(), HandOver(send_id, 1, "<c@x>"), DUE, LEASE)
    except LostClaim:
        pass
    else:
        raise AssertionError("another token's hand-over must be refused")
    row = _row(database_url, send_id)
    assert (row.status, row.handed_over_at, row.message_id) == ("sending", None, None)


def test_only_a_sent_answer_replaces_what_the_sweeper_called_ambiguous(
    tmp_path: Path, database_url: str
) -> None:
    first, second = _queued(tmp_path, database_url, ["C-late-sent", "C-late-failed"])
    engine, token = engine_for(database_url), new_token()
    claim(engine, [first, second], token, DUE, LEASE)
    with engine.begin() as connection:  # the sweeper's verdict, the token left in place
        for send_id in (first, second):
            connection.execute(
                update(Send).where(Send.id == send_id).values(status="failed", reason="ambiguous")
            )
    with engine.begin() as connection:
        failed = _owned(connection, second, token, status="failed", reason="rejected")
        sent = _owned(connection, first, token, status="sent", sent_at=DUE, reason=None)
        foreign = _owned(connection, first, new_token(), status="sent", sent_at=DUE)
    assert failed is None, "a failure never replaces the sweeper's ambiguous"
    assert sent == "laptop-accessories"
    assert foreign is None, "another token's answer moves nothing"
    assert (_row(database_url, first).status, _row(database_url, first).reason) == ("sent", None)
    assert (_row(database_url, second).reason, _row(database_url, second).claims) == (
        "ambiguous",
        1,
    )


def test_a_claim_never_takes_rows_another_worker_holds_or_claimed(
    tmp_path: Path, database_url: str
) -> None:
    """Two workers, one set of ids: while the first's claim is uncommitted its rows are
    skipped (PostgreSQL, ``SKIP LOCKED``), and once committed they are not claimable under
    another token; a handed-over row is not claimable again, even by its own token."""
    held, free = _queued(tmp_path, database_url, ["C-held", "C-free"])
    engine, first, second = engine_for(database_url), new_token(), new_token()
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection, connection.begin():
            taken = connection.execute(
                CLAIM_SKIP_LOCKED,
                {
                    "b_ids": [held],
                    "b_token": first,
                    "b_lease_expires_at": DUE + LEASE,
                    "b_now": DUE,
                },
            ).all()
            assert [row.id for row in taken] == [held]
            # The first claim is not committed: its row is locked and skipped.
            others = claim(engine, [held, free], second, DUE, LEASE)
            assert [row.send_id for row in others] == [free]
    else:
        assert [row.send_id for row in claim(engine, [held], first, DUE, LEASE)] == [held]
        assert [row.send_id for row in claim(engine, [free], second, DUE, LEASE)] == [free]
    assert claim(engine, [held, free], new_token(), DUE, LEASE) == []
    assert [row.send_id for row in claim(engine, [held], first, DUE, LEASE)] == [held]
    hand_over(engine, first, HandOver(held, 1, "<h@x>"), DUE, LEASE)
    assert claim(engine, [held], first, DUE, LEASE) == []
    row = _row(database_url, held)
    assert (row.status, row.claim_token, row.claims) == ("sending", first, 0)
    assert _row(database_url, free).claim_token == second
