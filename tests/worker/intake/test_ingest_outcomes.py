"""worker.intake.ingest._write_outcomes: each event's row gets its own outcome, whatever
the strings hold, on PostgreSQL (one statement) and SQLite (one per event)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.support.factories import insert_customers
from worker.core.db import engine_for
from worker.core.dialect_insert import insert_rows
from worker.core.models import Event
from worker.decide import sequences
from worker.intake.ingest import _write_outcomes

NOW = datetime(2026, 11, 24, 8, 30, tzinfo=UTC)
AWKWARD = ['quote " and \\ backslash', "comma, {brace} NULL", "ț ș ă — 漢字 😀", "", " "]


def test_each_event_gets_its_own_outcome(database_url: str) -> None:
    with Session(engine_for(database_url)) as session, session.begin():
        insert_customers(session, ["C-1"], NOW)
        rows = insert_rows(
            session,
            Event,
            [
                {
                    "event_id": f"evt-{index}",
                    "type": "purchase",
                    "customer_id": "C-1",
                    "occurred_at": NOW,
                    "received_at": NOW,
                    "payload": {},
                    "outcome": {},
                }
                for index in range(len(AWKWARD) + 1)
            ],
            returning=("id", "event_id"),
        )
        ids = {row.event_id: row.id for row in rows}
        wanted: dict[str, dict[str, object]] = {
            f"evt-{index}": {"laptop-accessories": text, f"campaign {text}": "planned"}
            for index, text in enumerate(AWKWARD)
        }
        _write_outcomes(session, [(ids[event_id], outcome) for event_id, outcome in wanted.items()])
        stored: dict[str, dict[str, object]] = {
            event_id: outcome
            for event_id, outcome in session.execute(select(Event.event_id, Event.outcome))
        }
    assert stored == {**wanted, f"evt-{len(AWKWARD)}": {}}


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
