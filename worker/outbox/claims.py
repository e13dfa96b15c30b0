"""Owned claims on sends: one statement claims a batch under a token and a lease.

A worker claims ``queued`` sends for itself (``claim_token``) until ``lease_expires_at``,
commits at once, and renews the lease while it works (:class:`Lease`). Just before each
message's irreversible step it records the hand-over under its token; if that finds the
row no longer its own, the message must not leave. The dispatcher's sweeper
(``worker.outbox.dispatcher``) recovers expired claims. Every statement here is conditional on
the token, so a worker never changes a row it lost. See docs/delivery.md.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    Table,
    bindparam,
    case,
    or_,
    select,
    update,
)
from sqlalchemy.sql.dml import ReturningUpdate

from worker.core.clock import Clock
from worker.core.models import Enrollment, Send

log = logging.getLogger(__name__)

SENDS_TABLE = cast(Table, Send.__table__)
ENROLLMENTS = cast(Table, Enrollment.__table__)


def _claimable(token: BindParameter[str]) -> ColumnElement[bool]:
    """A row this claim may take: ``queued``, or already this token's and not handed over."""
    sends = SENDS_TABLE.c
    return or_(
        sends.status == "queued",
        (sends.status == "sending") & (sends.claim_token == token) & sends.handed_over_at.is_(None),
    )


def _claim_values() -> dict[str, object]:
    sends = SENDS_TABLE.c
    return {
        "status": "sending",
        "claim_token": bindparam("b_token"),
        "lease_expires_at": bindparam("b_lease_expires_at"),
        "handed_over_at": None,
        "updated_at": bindparam("b_now"),
        "claims": sends.claims + case((sends.status == "queued", 1), else_=0),
    }


def _claim_skip_locked() -> ReturningUpdate[int, int]:
    """The PostgreSQL claim: a materialized CTE locks the batch's rows by primary key
    (``FOR UPDATE SKIP LOCKED``) and says which are claimable, then the UPDATE joins it on
    ``id``. Neither part leaves the planner an index but the primary key: written as
    ``id IN (… FOR UPDATE SKIP LOCKED) AND claimable``, a bitmap scan of every ``queued``
    row (``ix_sends_status_send_at``) looked cheaper under the statistics of a growing
    table, and the locking subquery was run again for each of them, 11.7 ms per batch of
    50 in the bench (auto_explain: 99 loops, 5,478 buffers; docs/performance.md,
    "PostgreSQL work per email"). ``claimable`` is evaluated on the locked, latest row
    version, which nothing else can change before this statement's commit."""
    sends = SENDS_TABLE.c
    picked = (
        select(sends.id, _claimable(bindparam("b_token")).label("claimable"))
        .where(sends.id.in_(bindparam("b_ids", expanding=True)))
        .with_for_update(skip_locked=True)
        .cte("picked")
        .prefix_with("MATERIALIZED")
    )
    return (
        update(SENDS_TABLE)
        .where(sends.id == picked.c.id, picked.c.claimable)
        .values(_claim_values())
        .returning(sends.id, sends.attempts)
    )


def _claim_waiting() -> ReturningUpdate[int, int]:
    """The claim elsewhere (SQLite: one writer at a time, nothing to skip)."""
    sends = SENDS_TABLE.c
    claimable = _claimable(bindparam("b_token"))
    picked = select(sends.id).where(sends.id.in_(bindparam("b_ids", expanding=True)), claimable)
    return (
        update(SENDS_TABLE)
        .where(sends.id.in_(picked.scalar_subquery()), claimable)
        .values(_claim_values())
        .returning(sends.id, sends.attempts)
    )


# The hot statements are built once and executed with parameters: SQLAlchemy memoizes a
# statement object's cache key, so each execution skips building the statement, its cache
# key and the ORM's value coercions (the hand-over and the answer took 30 % of the worker's
# CPU in the profile that motivated it, most of it building them: docs/performance.md,
# "Statements built once"). A bound parameter may not be named like a column, hence
# ``b_``; the SET clause of ``HAND_OVER`` and ``STEP_ACTIVE`` is made from the other
# parameters' keys (one compiled form per set of keys).
CLAIM_SKIP_LOCKED, CLAIM_WAITING = _claim_skip_locked(), _claim_waiting()
# The hand-over finds its row by primary key only. Its claim is checked as one
# expression, the token of the row's live claim (NULL unless ``sending``), which no index
# matches: as ``status = 'sending'`` the planner took ``ix_sends_status_send_at`` under the
# statistics of a growing table (a sends table analyzed before any row was ``sending``)
# and read every ``sending`` entry for each row, 72 buffers per hand-over instead of 25
# (docs/performance.md, "PostgreSQL work per email").
HAND_OVER = update(SENDS_TABLE).where(
    SENDS_TABLE.c.id == bindparam("b_id"),
    case((SENDS_TABLE.c.status == "sending", SENDS_TABLE.c.claim_token)) == bindparam("b_token"),
)
STEP_ACTIVE = update(ENROLLMENTS).where(
    ENROLLMENTS.c.id == bindparam("b_id"), ENROLLMENTS.c.status == "active"
)


class LostClaim(Exception):
    """The send is no longer this worker's (the sweeper or an operator took it back):
    its message must not leave."""


class SequenceEnded(Exception):
    """The step's enrollment ended between the recheck and the hand-over: not sent."""


def new_token() -> str:
    """A random claim token, one per deliver task (128 bits, hex)."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Claimed:
    send_id: int
    attempts: int


def claim(
    engine: Engine, ids: Sequence[int], token: str, now: datetime, lease: timedelta
) -> list[Claimed]:
    """``queued`` → ``sending`` for ``ids`` under ``token``, committed at once.

    One statement; on PostgreSQL the rows are picked with ``FOR UPDATE SKIP LOCKED`` so
    two workers never wait for each other. Rows already claimed under ``token`` and not
    handed over are returned again, so repeating a claim whose commit answer was lost
    finds them. Each new claim counts one in ``claims`` (the sweeper's crash-loop cap);
    a repeated one does not.
    """
    if not ids:
        return []
    parameters = {
        "b_ids": list(ids),
        "b_token": token,
        "b_lease_expires_at": now + lease,
        "b_now": now,
    }
    with engine.begin() as connection:
        statement = CLAIM_SKIP_LOCKED if engine.dialect.name == "postgresql" else CLAIM_WAITING
        rows = connection.execute(statement, parameters).all()
    return [Claimed(row.id, row.attempts) for row in rows]


@dataclass(frozen=True, slots=True)
class HandOver:
    """What is written with one message's hand-over, in the same commit."""

    send_id: int
    attempts: int
    message_id: str
    coupon_code: str | None = None
    coupon_expires_at: datetime | None = None
    enrollment_id: int | None = None
    offered_skus: list[str] | None = None


def hand_over(
    bind: Engine | Connection, token: str, item: HandOver, now: datetime, lease: timedelta
) -> None:
    """Record that ``item``'s message is about to leave: committed here when ``bind`` is
    an engine; on a connection, in the caller's transaction, which the caller commits
    before the message leaves (the deliver task writes the previous message's answer in
    the same commit).

    Raises :class:`LostClaim` if the row is no longer this token's ``sending`` one, and
    :class:`SequenceEnded` if a sequence step's enrollment is no longer active; either
    way the transaction must be rolled back and the message must not leave. The lease is
    extended so the answer can be recorded before the sweeper would call the send
    ambiguous.
    """
    if isinstance(bind, Engine):
        with bind.begin() as connection:
            _hand_over(connection, token, item, now, lease)
    else:
        _hand_over(bind, token, item, now, lease)


def _hand_over(
    connection: Connection, token: str, item: HandOver, now: datetime, lease: timedelta
) -> None:
    written: dict[str, object] = {
        "b_id": item.send_id,
        "b_token": token,
        "handed_over_at": now,
        "lease_expires_at": now + lease,
        "attempts": item.attempts,
        "message_id": item.message_id,
        "updated_at": now,
        "claims": 0,  # the attempt is counted now: the worker survived until here
    }
    if item.coupon_code is not None:
        written |= {"coupon_code": item.coupon_code, "coupon_expires_at": item.coupon_expires_at}
    moved = connection.execute(HAND_OVER, written).rowcount
    if moved != 1:
        raise LostClaim(f"send {item.send_id} is no longer claimed by this worker")
    if item.enrollment_id is not None:
        # The enrollment row stays locked until this commit: an exit either waits
        # for the step to be handed over or wins and the step does not leave.
        values: dict[str, object] = {"b_id": item.enrollment_id, "status": "active"}
        if item.offered_skus is not None:
            values |= {"offered_skus": item.offered_skus, "updated_at": now}
        active = connection.execute(STEP_ACTIVE, values).rowcount
        if active != 1:
            raise SequenceEnded(f"enrollment {item.enrollment_id} ended")


def release(
    engine: Engine,
    token: str,
    send_ids: Sequence[int],
    now: datetime,
    detail: str,
    reason: str = "retry",
    send_at: datetime | None = None,
) -> list[int]:
    """Give this token's ``sending`` rows whose messages did not leave back to the outbox
    (``planned`` at ``send_at``, default now, with ``reason``), even if their hand-over
    commit landed: the caller knows the provider never got them. Returns the ids
    released."""
    if not send_ids:
        return []
    with engine.begin() as connection:
        rows = connection.execute(
            update(Send)
            .where(Send.id.in_(list(send_ids)), Send.claim_token == token, Send.status == "sending")
            .values(
                status="planned",
                send_at=send_at or now,
                # A hand-over commit that landed counted an attempt that never happened.
                attempts=Send.attempts - case((Send.handed_over_at.is_not(None), 1), else_=0),
                reason=reason,
                detail=detail[:1000],
                claim_token=None,
                lease_expires_at=None,
                handed_over_at=None,
                claims=0,
                updated_at=now,
            )
            .returning(Send.id)
        ).all()
    return [row.id for row in rows]


def renew(engine: Engine, token: str, now: datetime, lease: timedelta) -> int:
    """Extend the lease of every row this token still holds; returns how many. The rows
    are found among the ``sending`` ones (``ix_sends_status_send_at``): ``claim_token``
    has no index of its own (migration 0016)."""
    with engine.begin() as connection:
        result = connection.execute(
            update(Send)
            .where(Send.claim_token == token, Send.status == "sending")
            .values(lease_expires_at=now + lease)
        )
    return int(result.rowcount or 0)


class Lease:
    """Renews a token's lease every third of its length while a batch is worked through.

    A renewal that fails (database unreachable) is logged and tried again at the next
    beat; if the lease runs out meanwhile, the sweeper recovers the rows and every later
    statement of this worker, being conditional on the token, finds them gone.
    """

    def __init__(self, engine: Engine, token: str, clock: Clock, length: timedelta) -> None:
        self.engine, self.token, self.clock, self.length = engine, token, clock, length
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{token[:8]}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        interval = self.length.total_seconds() / 3
        while not self._stop.wait(interval):
            try:
                renew(self.engine, self.token, self.clock.now(), self.length)
            except Exception as exc:
                log.warning("could not renew the delivery lease: %s", exc.__class__.__name__)


@dataclass(frozen=True, slots=True)
class Released:
    """``crosssell sends release``'s answer per id: what it was, and whether it moved."""

    send_id: int
    found: str | None  # "failed/ambiguous", "sending", another status, or None: no such send
    released: bool


def release_by_operator(engine: Engine, send_ids: Sequence[int], now: datetime) -> list[Released]:
    """Give ambiguous (``failed``/``ambiguous``) or stuck ``sending`` sends back to the
    outbox, due now, for an operator who checked the provider's log: the message never
    arrived. Any other status is refused. The Message-ID is kept, so a copy that did
    arrive after all is recognisable. A ``sending`` row's owner loses its claim: its
    hand-over will find the row gone and not send."""
    answers: list[Released] = []
    releasable = or_(
        (Send.status == "failed") & (Send.reason == "ambiguous"), Send.status == "sending"
    )
    with engine.begin() as connection:
        for send_id in dict.fromkeys(send_ids):
            row = connection.execute(
                select(Send.status, Send.reason).where(Send.id == send_id)
            ).first()
            if row is None:
                answers.append(Released(send_id, None, False))
                continue
            found = f"{row.status}/{row.reason}" if row.status == "failed" else row.status
            moved = connection.execute(
                update(Send)
                .where(Send.id == send_id, releasable)
                .values(
                    status="planned",
                    send_at=now,
                    reason=None,
                    detail=f"released by an operator (was {found})",
                    claim_token=None,
                    lease_expires_at=None,
                    handed_over_at=None,
                    claims=0,
                    updated_at=now,
                )
            ).rowcount
            answers.append(Released(send_id, found, moved == 1))
    return answers
