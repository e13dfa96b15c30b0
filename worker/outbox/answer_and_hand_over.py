"""One message's hand-over and the answer of the message before it, in one statement.

The deliver task commits each message's hand-over before the message leaves and writes
the previous message's answer in the same commit (one commit per email). The commonest
answer, ``sent``, is two statements of its own (the ``sends`` row and its
``email_sent`` activity row); with the hand-over that made three statements, five round
trips with ``BEGIN`` and ``COMMIT`` — and a sequence step's hand-over adds a fourth, the
check that its enrollment is still active. On PostgreSQL they are one statement of
data-modifying ``WITH`` queries, which PostgreSQL runs once each, to completion, on one
snapshot (PostgreSQL manual, "Data-Modifying Statements in WITH"): three round trips
per email instead of five or six, in the same transaction as before, so a refusal or a
failure still commits nothing. SQLite, and a hand-over with anything else to record
(other answers), keep the separate statements.

The two ``UPDATE``s of ``sends`` touch two different rows (a batch's sends are
distinct), so neither sees the other's change. The hand-over's conditions and values
are those of ``worker.outbox.claims.HAND_OVER``, and the step's those of
``worker.outbox.claims.STEP_ACTIVE`` (the enrollment stays locked until the commit, so
an exit waits for it or wins); the answer is :func:`sent_update`, as on its own; the
activity row is ``worker.records.activity.add_send_activity``'s.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Select, Table, bindparam, case, func, literal, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.dml import Update

from triggers.outcomes import SkipReason
from worker.core.models import ActivityOutbox, Enrollment, Send
from worker.outbox.claims import HandOver
from worker.providers.base import DeliveryResult
from worker.records.activity import SendFacts, send_activity_data

SENDS = cast(Table, Send.__table__)
ACTIVITY = cast(Table, ActivityOutbox.__table__)
ENROLLMENTS = cast(Table, Enrollment.__table__)


def sent_update(prefix: str) -> Update:
    """The ``sent`` answer: this token's row (``sending``, or the ``failed``/``ambiguous``
    the sweeper wrote while the answer was on its way) becomes ``sent`` and its claim
    ends. Bound parameters, each name after ``prefix``: ``id``, ``token``, ``done`` (the
    time: ``sent_at`` and ``updated_at``), ``provider``, ``provider_message_id``,
    ``message_id``, ``attempts``."""
    sends = SENDS.c
    return (
        update(SENDS)
        .where(
            sends.id == bindparam(f"{prefix}id"),
            sends.claim_token == bindparam(f"{prefix}token"),
            (sends.status == "sending")
            | ((sends.status == "failed") & (sends.reason == SkipReason.AMBIGUOUS.value)),
        )
        .values(
            status="sent",
            sent_at=bindparam(f"{prefix}done"),
            provider=bindparam(f"{prefix}provider"),
            provider_message_id=bindparam(f"{prefix}provider_message_id"),
            message_id=bindparam(f"{prefix}message_id"),
            attempts=bindparam(f"{prefix}attempts"),
            reason=None,
            detail=None,
            lease_expires_at=None,
            claims=0,
            updated_at=bindparam(f"{prefix}done"),
        )
    )


def _statement(step: str | None) -> Select[Any]:
    """The statement for a hand-over with no enrollment (``step`` None), a step's that
    checks its enrollment (``"check"``) or also records the SKUs it offers
    (``"offers"``)."""
    sends = SENDS.c
    handed = (
        update(SENDS)
        .where(
            sends.id == bindparam("h_id"),
            case((sends.status == "sending", sends.claim_token)) == bindparam("h_token"),
        )
        .values(
            handed_over_at=bindparam("h_now"),
            lease_expires_at=bindparam("h_lease_expires_at"),
            attempts=bindparam("h_attempts"),
            message_id=bindparam("h_message_id"),
            updated_at=bindparam("h_now"),
            claims=0,
            coupon_code=func.coalesce(
                bindparam("h_coupon_code", type_=sends.coupon_code.type), sends.coupon_code
            ),
            coupon_expires_at=func.coalesce(
                bindparam("h_coupon_expires_at", type_=sends.coupon_expires_at.type),
                sends.coupon_expires_at,
            ),
        )
        .returning(sends.id)
        .cte("handed")
    )
    sent = sent_update("s_").returning(sends.id).cte("sent")
    activity = ACTIVITY.c
    recorded = (
        postgresql.insert(ACTIVITY)
        .from_select(
            ["activity_id", "type", "customer_id", "occurred_at", "data", "created_at"],
            select(
                bindparam("a_activity_id", type_=activity.activity_id.type),
                literal("email_sent", activity.type.type),
                bindparam("a_customer_id", type_=activity.customer_id.type),
                bindparam("s_done", type_=activity.occurred_at.type),
                bindparam("a_data", type_=activity.data.type),
                bindparam("a_created_at", type_=activity.created_at.type),
            ).select_from(sent),
        )
        .on_conflict_do_nothing(index_elements=["activity_id"])
        .cte("recorded")
    )
    counts = [select(func.count()).select_from(handed).scalar_subquery().label("handed")]
    if step is not None:
        enrollments = ENROLLMENTS.c
        skus = bindparam("e_offered_skus", type_=enrollments.offered_skus.type)
        stepped = (
            update(ENROLLMENTS)
            .where(enrollments.id == bindparam("e_id"), enrollments.status == "active")
            .values(
                {"offered_skus": skus, "updated_at": bindparam("h_now")}
                if step == "offers"
                else {"status": "active"}
            )
            .returning(enrollments.id)
            .cte("stepped")
        )
        counts.append(select(func.count()).select_from(stepped).scalar_subquery().label("stepped"))
    counts.append(select(func.count()).select_from(sent).scalar_subquery().label("sent"))
    # PostgreSQL promises no order among the CTEs; none is needed: each touches its own
    # row, and any refusal rolls the whole statement back.
    return select(*counts).add_cte(recorded)


# Built once and executed with parameters (docs/performance.md, "Statements built once").
ANSWER_AND_HAND_OVER = _statement(None)
ANSWER_AND_STEP_CHECK = _statement("check")
ANSWER_AND_STEP_OFFERS = _statement("offers")


class Written(NamedTuple):
    """What the statement found: the hand-over's row still this token's ``sending`` one,
    the step's enrollment still active (true without a step), the answer's row still
    this token's."""

    handed: bool
    step_active: bool
    sent: bool


def answer_and_hand_over(
    connection: Connection,
    *,
    token: str,
    item: HandOver,
    answer: tuple[SendFacts, int, str, DeliveryResult],
    now: datetime,
    lease: timedelta,
) -> Written:
    """Hand over ``item`` (and, for a sequence step, check its enrollment and record the
    SKUs it offers) and record the previous message as ``sent`` at ``now``, in the
    caller's transaction (PostgreSQL only).

    ``answer`` is ``(the sent one's facts, its attempts, its Message-ID, the provider's
    answer)``. ``sent`` may also replace a ``failed``/``ambiguous`` the sweeper wrote
    meanwhile. The caller rolls back when ``handed`` or ``step_active`` is false, as
    after a refused hand-over on its own."""
    facts, sent_attempts, sent_message_id, result = answer
    parameters: dict[str, object] = {
        "h_id": item.send_id,
        "h_token": token,
        "h_now": now,
        "h_lease_expires_at": now + lease,
        "h_attempts": item.attempts,
        "h_message_id": item.message_id,
        "h_coupon_code": item.coupon_code,
        "h_coupon_expires_at": item.coupon_expires_at,
        "s_id": facts.send_id,
        "s_token": token,
        "s_done": now,
        "s_provider": result.provider,
        "s_provider_message_id": result.provider_message_id,
        "s_message_id": sent_message_id,
        "s_attempts": sent_attempts,
        "a_activity_id": f"email_sent:send-{facts.send_id}",
        "a_customer_id": facts.customer_id,
        "a_data": send_activity_data(facts, result.provider, sent_message_id),
        "a_created_at": datetime.now(UTC),
    }
    statement = ANSWER_AND_HAND_OVER
    if item.enrollment_id is not None:
        parameters["e_id"] = item.enrollment_id
        statement = ANSWER_AND_STEP_CHECK
        if item.offered_skus is not None:
            parameters["e_offered_skus"] = item.offered_skus
            statement = ANSWER_AND_STEP_OFFERS
    row = connection.execute(statement, parameters).one()
    step_active = item.enrollment_id is None or row.stepped == 1
    return Written(row.handed == 1, step_active, row.sent == 1)
