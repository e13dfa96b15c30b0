"""Counts taken when a transaction commits (``worker.core.commit_counts``): a rolled-back
transaction, or savepoint, counts nothing of what it held; a flush in between changes
nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from worker.core.commit_counts import count_on_commit, held_counts


class _Base(DeclarativeBase):
    pass


class Row(_Base):
    __tablename__ = "rows"
    n: Mapped[int] = mapped_column(primary_key=True)


class Abort(Exception):
    """Raised inside a block to roll it back."""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'counts.db'}")
    event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA foreign_keys = ON"))
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (n INTEGER)"))
        # A foreign key checked at COMMIT: a commit the database refuses.
        connection.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        connection.execute(
            text(
                "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id)"
                " DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    _Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _counted(counter: Counter) -> dict[str, float]:
    """The counter's non-zero values by label (a label set is bound when counted, so it
    shows as 0 until its transaction commits)."""
    return {
        sample.labels["what"]: sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value
    }


def _commit_all(session: Session, counter: Counter) -> None:
    with session.begin():
        count_on_commit(session, counter, "a")
        session.execute(text("INSERT INTO t VALUES (1)"))
        count_on_commit(session, counter, "b", amount=2)


def _roll_back_all(session: Session, counter: Counter) -> None:
    with pytest.raises(Abort), session.begin():
        count_on_commit(session, counter, "a")
        raise Abort


def _savepoint_rolled_back(session: Session, counter: Counter) -> None:
    with session.begin():
        count_on_commit(session, counter, "a")
        with pytest.raises(Abort), session.begin_nested():
            count_on_commit(session, counter, "b")
            raise Abort
        count_on_commit(session, counter, "c")


def _savepoint_kept_then_all_rolled_back(session: Session, counter: Counter) -> None:
    with pytest.raises(Abort), session.begin():
        with session.begin_nested():
            count_on_commit(session, counter, "a")
        raise Abort


def _savepoints_nested(session: Session, counter: Counter) -> None:
    with session.begin():
        count_on_commit(session, counter, "a")
        with session.begin_nested():
            count_on_commit(session, counter, "b")
            with pytest.raises(Abort), session.begin_nested():
                count_on_commit(session, counter, "c")
                raise Abort
            count_on_commit(session, counter, "d")


def _flushes_in_between(session: Session, counter: Counter) -> None:
    """An ORM flush runs in an inner transaction of its own that ends with no commit
    event; it must not be taken for a rollback."""
    with session.begin():
        count_on_commit(session, counter, "a")
        session.add(Row(n=1))
        session.flush()
        with session.begin_nested():
            session.add(Row(n=2))
            session.flush()
            count_on_commit(session, counter, "b")
        session.add(Row(n=3))
        session.flush()


def _closed_without_commit(session: Session, counter: Counter) -> None:
    session.execute(text("INSERT INTO t VALUES (1)"))
    count_on_commit(session, counter, "a")
    session.close()


def _commit_refused(session: Session, counter: Counter) -> None:
    """The COMMIT itself fails (a deferred constraint): nothing was written, nothing counts."""
    with pytest.raises(IntegrityError), session.begin():
        session.execute(text("INSERT INTO child VALUES (42)"))
        count_on_commit(session, counter, "a")


def _outside_a_transaction(session: Session, counter: Counter) -> None:
    """Nothing to wait for: taken at once, and a later rollback does not take it back."""
    count_on_commit(session, counter, "a")
    _roll_back_all(session, counter)


def _two_transactions(session: Session, counter: Counter) -> None:
    _roll_back_all(session, counter)
    _commit_all(session, counter)


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        (_commit_all, {"a": 1, "b": 2}),
        (_roll_back_all, {}),
        (_savepoint_rolled_back, {"a": 1, "c": 1}),
        (_savepoint_kept_then_all_rolled_back, {}),
        (_savepoints_nested, {"a": 1, "b": 1, "d": 1}),
        (_flushes_in_between, {"a": 1, "b": 1}),
        (_closed_without_commit, {}),
        (_two_transactions, {"a": 1, "b": 2}),
        (_commit_refused, {}),
        (_outside_a_transaction, {"a": 1}),
    ],
)
def test_counts_are_taken_only_for_what_committed(
    engine: Engine, scenario: Callable[[Session, Counter], None], expected: dict[str, float]
) -> None:
    counter = Counter(
        "crosssell_test", "a counter of this test", ["what"], registry=CollectorRegistry()
    )
    session = Session(engine)
    try:
        scenario(session, counter)
        assert held_counts(session) == 0  # nothing left over for a later transaction
    finally:
        session.close()
    assert _counted(counter) == expected


@pytest.mark.parametrize(
    ("labels", "amount"), [(("a", "b"), 1.0), ((), 1.0), (("a",), -1.0)], ids=str
)
def test_a_wrong_count_is_refused_where_it_is_made_not_at_the_commit(
    engine: Engine, labels: tuple[str, ...], amount: float
) -> None:
    """A wrong label set or a negative amount raised from the commit, after the data was
    written, would fail a committed transaction in its caller's eyes."""
    counter = Counter(
        "crosssell_test", "a counter of this test", ["what"], registry=CollectorRegistry()
    )
    with Session(engine) as session, session.begin():
        session.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(ValueError):
            count_on_commit(session, counter, *labels, amount=amount)
        count_on_commit(session, counter, "kept")
    assert _counted(counter) == {"kept": 1}
