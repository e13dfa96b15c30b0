"""worker.intake.ingest._insert_events: each event's row is stored with its own outcome,
whatever the strings hold, on PostgreSQL (one statement, the JSON column as one array) and
SQLite; an id another transaction stored meanwhile is refused, not silently dropped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.support.factories import customer_block, insert_customers, purchase
from triggers.events import AnyEvent, validate_event
from worker.core.db import engine_for
from worker.core.dialect_insert import insert_rows
from worker.core.models import Event
from worker.decide import sequences
from worker.intake.ingest import EventRaced, _insert_events, event_payload

NOW = datetime(2026, 11, 24, 8, 30, tzinfo=UTC)
AWKWARD = ['quote " and \\ backslash', "comma, {brace} NULL", "ț ș ă — 漢字 😀", "", " "]


def _event(index: int) -> AnyEvent:
    return validate_event(
        {**purchase(customer=customer_block("C-1"), at=NOW), "id": f"evt-{index}"}
    )


def test_each_event_is_stored_with_its_own_outcome(database_url: str) -> None:
    events = [_event(index) for index in range(len(AWKWARD) + 1)]
    wanted: list[dict[str, object]] = [
        {"laptop-accessories": text, f"campaign {text}": "planned"} for text in AWKWARD
    ] + [{}]
    with Session(engine_for(database_url)) as session, session.begin():
        insert_customers(session, ["C-1"], NOW)
        _insert_events(session, events, wanted, NOW)
        stored = {
            row.event_id: (row.outcome, row.payload)
            for row in session.execute(select(Event.event_id, Event.outcome, Event.payload))
        }
    assert stored == {
        event.id: (outcome, event_payload(event))
        for event, outcome in zip(events, wanted, strict=True)
    }


def test_an_event_stored_meanwhile_is_refused_and_the_others_roll_back(database_url: str) -> None:
    """The batch decided an event as new; by the insert another transaction has stored
    it (the same id for another customer). Dropping it quietly would keep what was
    planned for it: the caller must roll back and store the batch again."""
    first, second = _event(1), _event(2)
    engine = engine_for(database_url)
    with Session(engine) as session, session.begin():
        insert_customers(session, ["C-1"], NOW)
        _insert_events(session, [first], [{}], NOW)
    with Session(engine) as session:
        with pytest.raises(EventRaced, match="evt-1"), session.begin():
            _insert_events(session, [second, first], [{}, {}], NOW)
        assert session.scalar(select(func.count()).select_from(Event)) == 1


def test_a_taken_dedupe_key_records_the_send_that_holds_it(database_url: str) -> None:
    """A send whose dedupe key another row already holds (a concurrent consumer, a
    cooldown period used) is not inserted; the event's outcome names the holder."""
    from worker.core.models import Send
    from worker.decide.decision_inputs import decision_inputs_many
    from worker.intake.ingest import _Batch, _NewSend

    def send(event_id: str) -> dict[str, object]:
        return {
            "campaign_id": "laptop-accessories",
            "kind": "cross_sell",
            "variant": None,
            "template": "laptop-accessories",
            "customer_id": "C-1",
            "event_id": event_id,
            "status": "planned",
            "reason": None,
            "dedupe_key": "laptop-accessories:C-1:once",
            "send_at": NOW,
            "expires_at": None,
            "attempts": 0,
            "created_at": NOW,
            "updated_at": NOW,
        }

    with Session(engine_for(database_url)) as session, session.begin():
        insert_customers(session, ["C-1"], NOW)
        [holder] = insert_rows(session, Send, [send("evt-1")], returning=("id",))
        batch = _Batch(
            session,
            NOW,
            decision_inputs_many(session, [], [], lock=False),
            sequences.Entries(session, []),
        )
        batch.outcomes[0] = {}
        batch.pending.append(_NewSend(0, send("evt-2"), "planned", None))
        batch.write_sends()
        assert batch.outcomes[0] == {"laptop-accessories": f"already_planned:{holder.id}"}
        assert session.scalar(select(func.count()).select_from(Send)) == 1
