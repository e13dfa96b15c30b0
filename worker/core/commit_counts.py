"""Prometheus counts of what a database transaction wrote, taken only once it commits.

A count made when a row is written is wrong when the transaction rolls back: the
consumer stores a batch whose transaction failed (a value the database refused, an
event another consumer stored meanwhile) again one event at a time, and a batch whose
database went away is delivered again by the broker, so every send it planned was
counted twice. :func:`count_on_commit` holds the increment on the session instead:
the outermost commit adds it to the counter, a rollback of the transaction — or of the
savepoint (``Session.begin_nested``) it was made in — drops it.

The session events below (SQLAlchemy's ``after_commit``/``after_rollback``, each fired
for a savepoint too, then ``after_transaction_end`` for the transaction that ended) are
registered for every ``Session`` on import: a few listener calls per transaction, which
return at once for a session that holds no count. A flush's inner transaction
(``SUBTRANSACTION``) ends without a commit event of its own and is left out.

Two limits, both documented in docs/operations.md: a session joined to a transaction the
caller began on its ``Connection`` "commits" without committing to the database, so its
counts are taken then (no crosssell path counts in such a session); and when the
database commits but its answer is lost, the counts are dropped, and the redelivered
events are duplicates, so those sends are not counted at all.
"""

from __future__ import annotations

from typing import TypeAlias

from prometheus_client import Counter
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, SessionTransactionOrigin

_HELD = "crosssell.counts_held"  # [(counter child, amount)], oldest first
_MARKS = "crosssell.counts_marks"  # savepoint → how many were held when it began
_ENDED = "crosssell.counts_ended"  # True: committed, False: rolled back (the last one)

Held: TypeAlias = list[tuple[Counter, float]]


def count_on_commit(session: Session, counter: Counter, *labels: str, amount: float = 1) -> None:
    """Add ``amount`` to ``counter`` (with ``labels``) when ``session``'s transaction
    commits; nothing when it, or the savepoint this call was made in, rolls back. Outside
    a transaction (what was counted wrote nothing: a read served from memory) the count
    is taken at once.

    Raises what ``counter.labels`` raises for a wrong label set (ValueError), and
    ValueError for a negative ``amount``: here, where the mistake is, not at the commit,
    after the data is written."""
    child = counter.labels(*labels)
    if amount < 0:
        raise ValueError(f"a counter only grows: {amount}")
    if not session.in_transaction():
        child.inc(amount)
        return
    held: Held = session.info.setdefault(_HELD, [])
    held.append((child, amount))


def held_counts(session: Session) -> int:
    """How many increments ``session`` holds until its commit (for tests)."""
    return len(session.info.get(_HELD, ()))


@event.listens_for(Session, "after_transaction_create")
def _mark(session: Session, transaction: SessionTransaction) -> None:
    held = session.info.get(_HELD)
    if held and transaction.nested:
        marks: dict[SessionTransaction, int] = session.info.setdefault(_MARKS, {})
        marks[transaction] = len(held)


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    session.info[_ENDED] = True


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    session.info[_ENDED] = False


@event.listens_for(Session, "after_transaction_end")
def _settle(session: Session, transaction: SessionTransaction) -> None:
    if transaction.origin is SessionTransactionOrigin.SUBTRANSACTION:
        return  # a flush's own inner transaction: its end settles nothing
    committed = session.info.pop(_ENDED, False)
    marks: dict[SessionTransaction, int] = session.info.get(_MARKS, {})
    mark = marks.pop(transaction, 0)
    held: Held | None = session.info.get(_HELD)
    if not held:
        return
    if not committed:
        del held[mark:]  # a session closed without a commit counts nothing either
    elif transaction.parent is None:
        for child, amount in held:
            child.inc(amount)  # bound and checked when counted: cannot raise here
        held.clear()
