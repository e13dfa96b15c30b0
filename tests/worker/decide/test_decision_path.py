"""One decision path: ingest, the delivery recheck, explain and simulate judge alike.

Each builds the engine's inputs with ``worker.decide.decision_inputs`` and asks the pure
``triggers.decide`` functions, so the same customer state gives the same reason whoever
asks. And the spacing rule holds end to end: the demo sends no customer two emails
within ``CROSSSELL_MIN_GAP``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, update

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from triggers.events import AnyEvent, validate_event
from worker.commands.cli import main
from worker.commands.demo import seed_catalog
from worker.commands.explain import explain
from worker.commands.preview import preview
from worker.commands.simulation import run_simulation
from worker.core.db import dispose_engines, transaction
from worker.core.models import Customer, Send, Suppression
from worker.intake.ingest import event_payload, ingest_event
from worker.outbox.delivery import Reschedule, Skip, prepare
from worker.process.runtime import Runtime
from worker.records.privacy import forget_now

ROOT = Path(__file__).resolve().parents[3]
CROSSSELL = str(Path(sys.executable).parent / "crosssell")
CAMPAIGN = "laptop-accessories"  # purchase of a laptop >= 300, delay 2h, window 09-19
NOW = TUESDAY_MORNING


@pytest.fixture
def runtime(tmp_path: Path, sqlite_url: str) -> Iterator[Runtime]:
    settings = make_settings(tmp_path, database_url=sqlite_url)
    seed_catalog(settings, NOW)
    yield Runtime(settings)
    dispose_engines()


def _ingest(runtime: Runtime, event: AnyEvent, now: datetime = NOW) -> None:
    with transaction(runtime.settings.resolved_database_url) as session:
        ingest_event(session, event, runtime.rules.current(), runtime.policy, now)


def _known_customer(runtime: Runtime, customer_id: str, **block: object) -> AnyEvent:
    """Store the customer through ingest with an order too small for any campaign."""
    small = validate_event(
        purchase(
            customer=customer_block(customer_id, **block),
            price="20.00",
            at=NOW - timedelta(days=30),
        )
    )
    _ingest(runtime, small, NOW - timedelta(days=30))
    return small


def _email_sent(runtime: Runtime, customer_id: str, at: datetime, status: str = "sent") -> int:
    """Another campaign's email that went out at ``at`` (``sending``: claimed at ``at``,
    not handed over yet); its send id."""
    with transaction(runtime.settings.resolved_database_url) as session:
        send = Send(
            campaign_id="usage-drop-bundle",
            kind="reengagement",
            variant="A",
            template="usage_bundle",
            customer_id=customer_id,
            event_id=f"evt-elsewhere-{customer_id}",
            status=status,
            dedupe_key=f"elsewhere|{customer_id}",
            send_at=at,
            sent_at=at if status == "sent" else None,
            attempts=1,
            created_at=at,
            updated_at=at,
        )
        session.add(send)
        session.flush()
        return send.id


def _opt_out(runtime: Runtime, customer_id: str) -> None:
    with transaction(runtime.settings.resolved_database_url) as session:
        session.execute(
            update(Customer)
            .where(Customer.id == customer_id)
            .values(opted_out_kinds=["cross_sell"])
        )


def _suppress(runtime: Runtime, customer_id: str) -> None:
    with transaction(runtime.settings.resolved_database_url) as session:
        session.add(
            Suppression(
                email=f"{customer_id.lower()}@example.ro",
                reason="unsubscribe",
                source="test",
                created_at=NOW,
            )
        )


def _explained(runtime: Runtime, event: AnyEvent) -> str:
    return "\n".join(explain(runtime, event, CAMPAIGN, NOW))


def test_explain_on_an_opted_out_customer_says_opted_out(runtime: Runtime) -> None:
    _known_customer(runtime, "C-pref")
    _opt_out(runtime, "C-pref")
    event = validate_event(purchase(customer=customer_block("C-pref")))
    text = _explained(runtime, event)
    assert "preferences: NO  opted_out (campaign kind cross_sell" in text
    assert text.splitlines()[-1] == "decision: skipped, reason opted_out"


Setup = Callable[[Runtime, str], None]
SCENARIOS: dict[str, tuple[Setup, str | None, str]] = {
    # name: (what is true of the customer, the reason expected, the explain line proving it)
    "nothing in the way": (lambda r, c: None, None, "spacing: yes"),
    "opted out of cross-sell": (lambda r, c: _opt_out(r, c), "opted_out", "preferences: NO"),
    "address suppressed": (lambda r, c: _suppress(r, c), "suppressed", "suppression: NO"),
    "email 2 h ago": (
        lambda r, c: _email_sent(r, c, NOW - timedelta(hours=2)),
        "min_gap",
        "spacing: NO",
    ),
    "email 21 h ago": (
        lambda r, c: _email_sent(r, c, NOW - timedelta(hours=21)),
        None,
        "spacing: yes",
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_explain_predicts_what_ingest_then_records(runtime: Runtime, name: str) -> None:
    setup, expected, line = SCENARIOS[name]
    # Stable across runs (``hash`` of a str is salted per process): the holdout bucket
    # depends on the id, and a held-out customer never reaches the spacing check.
    customer_id = f"C-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    _known_customer(runtime, customer_id)
    setup(runtime, customer_id)
    event = validate_event(purchase(customer=customer_block(customer_id), at=NOW))
    text = _explained(runtime, event)
    assert line in text
    decision = text.splitlines()[-1]
    _ingest(runtime, event)
    with transaction(runtime.settings.resolved_database_url) as session:
        send = session.scalars(select(Send).where(Send.event_id == event.id)).one()
    held_out = send.status == "held_out"
    if expected is None:
        assert send.status in ("planned", "held_out") and send.reason in (None, "holdout")
        assert decision.startswith("decision: held out" if held_out else "decision: planned")
    else:
        assert (send.status, send.reason) == ("skipped", expected)
        assert decision == f"decision: skipped, reason {expected}"


@pytest.mark.parametrize("asked_after", [timedelta(minutes=1), timedelta(0), -timedelta(minutes=1)])
def test_explain_and_simulate_leave_out_an_event_from_before_an_erasure_request(
    runtime: Runtime, asked_after: timedelta
) -> None:
    """An event that occurred before its customer asked to be forgotten, arriving after
    the request, is stored erased and plans nothing (worker.intake.ingest); explain and
    simulate said what the campaign would do with it. One that occurred after the
    request is decided as usual by all three."""
    customer_id = f"C-erased-{asked_after.total_seconds():+.0f}"
    _known_customer(runtime, customer_id)
    event = validate_event(purchase(customer=customer_block(customer_id), at=NOW))
    forget_now(runtime.settings, customer_id, NOW, requested_at=NOW + asked_after)
    predates = asked_after >= timedelta(0)  # "at or before" the request, as ingest has it

    lines = list(explain(runtime, event, CAMPAIGN, NOW))
    report, source = run_simulation(runtime, [event], at=NOW)
    _ingest(runtime, event)
    with transaction(runtime.settings.resolved_database_url) as session:
        sends = session.scalars(select(Send).where(Send.event_id == event.id)).all()
    simulated = sum(count for key, count in report.outcomes.items() if key[0] == CAMPAIGN)
    if predates:
        assert sends == []
        assert lines[2].startswith("erasure: NO  the customer asked to be forgotten at ")
        assert lines[-1] == (
            "decision: none (an event from before the customer's erasure request plans nothing)"
        )
        assert simulated == 0
        assert "1 event(s) decided nothing: they occurred before their customer asked" in source
    else:
        assert len(sends) == 1
        assert not any(line.startswith("erasure:") for line in lines)
        assert lines[-1].startswith(("decision: planned", "decision: held out"))
        assert simulated == 1
        assert "decided nothing" not in source


@pytest.mark.parametrize(
    ("setup", "expected"),
    [(_opt_out, "opted_out"), (_suppress, "suppressed"), (lambda r, c: None, None)],
)
def test_simulate_reads_suppressions_and_preferences_like_ingest(
    runtime: Runtime, setup: Setup, expected: str | None
) -> None:
    # Before, simulate built its subject without opted-out kinds and --since never
    # looked at suppressions: it said "planned" where the worker skipped.
    _known_customer(runtime, "C-sim")
    setup(runtime, "C-sim")
    event = validate_event(purchase(customer=customer_block("C-sim"), at=NOW))
    report, source = run_simulation(runtime, [event], at=NOW)
    assert "from the database" in source
    ((_, outcome, reason),) = [key for key in report.outcomes if key[0] == CAMPAIGN]
    assert reason == expected if expected else outcome in ("planned", "held_out")


def test_preview_says_when_the_customer_would_not_get_the_email(
    runtime: Runtime, tmp_path: Path
) -> None:
    _known_customer(runtime, "C-look")
    _opt_out(runtime, "C-look")
    (first, *_) = preview(runtime, CAMPAIGN, "C-look", None, tmp_path / "preview")
    assert "a send now would be skipped: opted_out" in first.notes


def _usage_drop(customer_id: str, at: datetime) -> AnyEvent:
    return validate_event(
        {
            "id": f"evt-usage-{customer_id}",
            "type": "usage_change",
            "occurred_at": at.isoformat(),
            "customer": {"id": customer_id},
            "data": {"metric": "logins_per_week", "previous": 10, "current": 2, "window_days": 14},
        }
    )


@pytest.mark.parametrize(
    ("over_cap", "expected"),
    [("drop", ("skipped", "min_gap")), ("defer", ("planned", "deferred_by_gap"))],
)
def test_a_later_higher_priority_email_takes_the_place_of_a_waiting_lower_one(
    tmp_path: Path, sqlite_url: str, over_cap: str, expected: tuple[str, str]
) -> None:
    """usage-drop-bundle (priority 70, delay 1 d) is planned first; 4 h later a laptop
    purchase fires laptop-accessories (priority 80, delay 2 h) 18 h before it: priority decides."""
    settings = make_settings(tmp_path, database_url=sqlite_url, over_cap_policy=over_cap)
    runtime = Runtime(settings)
    url = settings.resolved_database_url
    try:
        for suffix in range(50):  # customers outside both campaigns' holdouts
            customer_id = f"C-race-{suffix}"
            known = _known_customer(runtime, customer_id)
            usage = _usage_drop(customer_id, NOW)
            _ingest(runtime, usage, NOW)
            with transaction(url) as session:
                first = session.scalars(select(Send).where(Send.event_id == usage.id)).one()
            if first.status != "planned":
                continue
            bought = validate_event(
                purchase(customer=customer_block(customer_id), at=NOW + timedelta(hours=4))
            )
            _ingest(runtime, bought, NOW + timedelta(hours=4))
            with transaction(url) as session:
                second = session.scalars(select(Send).where(Send.event_id == bought.id)).one()
                first = session.scalars(select(Send).where(Send.event_id == usage.id)).one()
            if second.status == "held_out":
                continue
            break
        else:
            raise AssertionError("no customer outside the holdouts in 50 tries")
        assert (second.status, second.reason) == ("planned", None)
        assert (first.status, first.reason) == expected
        if over_cap == "defer":
            assert first.send_at is not None and second.send_at is not None
            assert first.send_at - second.send_at >= timedelta(hours=20)
        # simulate, at each event's own time, predicts the same two rows.
        report, _ = run_simulation(runtime, [known, usage, bought])
        assert +report.outcomes == {
            ("usage-drop-bundle", *expected): 1,
            ("laptop-accessories", "planned", None): 1,
        }
    finally:
        dispose_engines()


# --- the delivery recheck ---------------------------------------------------------------------


def _planned(runtime: Runtime) -> tuple[int, str]:
    """A planned send of CAMPAIGN (customers in its holdout are passed over)."""
    for suffix in range(50):
        customer_id = f"C-go-{suffix}"
        event = validate_event(purchase(customer=customer_block(customer_id), at=NOW))
        _ingest(runtime, event)
        with transaction(runtime.settings.resolved_database_url) as session:
            send = session.scalars(select(Send).where(Send.event_id == event.id)).one()
            if send.status == "planned":
                return send.id, customer_id
    raise AssertionError("no customer outside the holdout in 50 tries")


def _prepare(runtime: Runtime, send_id: int, now: datetime) -> object:
    with transaction(runtime.settings.resolved_database_url) as session:
        send = session.get(Send, send_id)
        assert send is not None
        return prepare(session, runtime, send, now)


def test_the_recheck_at_sending_spaces_emails_that_went_out_since_planning(
    runtime: Runtime,
) -> None:
    send_id, customer_id = _planned(runtime)
    due = NOW + timedelta(hours=2)  # the campaign's delay
    assert not isinstance(_prepare(runtime, send_id, due), Skip | Reschedule)
    went = due - timedelta(hours=1)
    _email_sent(runtime, customer_id, went)
    assert _prepare(runtime, send_id, due) == Skip("min_gap")
    assert _prepare(runtime, send_id, went + timedelta(hours=19, minutes=59)) == Skip("min_gap")
    assert not isinstance(_prepare(runtime, send_id, went + timedelta(hours=20)), Skip)


def test_preview_counts_a_claimed_email_as_gone_only_once_handed_over(
    runtime: Runtime, tmp_path: Path
) -> None:
    """Preview reads its customer as the delivery recheck does (one loader): a claimed
    send not yet handed over may still be released, so it is not an email that went out;
    once handed over it is, and spaces this campaign's email."""
    _, customer_id = _planned(runtime)
    now = datetime.now(UTC)  # preview judges a send made now
    claimed_id = _email_sent(runtime, customer_id, now - timedelta(minutes=5), "sending")
    (first, *_) = preview(runtime, CAMPAIGN, customer_id, None, tmp_path / "claimed")
    assert not [note for note in first.notes if "min_gap" in note], first.notes
    with transaction(runtime.settings.resolved_database_url) as session:
        session.execute(update(Send).where(Send.id == claimed_id).values(handed_over_at=now))
    (again, *_) = preview(runtime, CAMPAIGN, customer_id, None, tmp_path / "handed-over")
    assert "a send now would be skipped: min_gap" in again.notes, again.notes


def test_under_defer_the_recheck_moves_the_send_past_the_gap_and_into_the_window(
    tmp_path: Path, sqlite_url: str
) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, over_cap_policy="defer")
    seed_catalog(settings, NOW)
    runtime = Runtime(settings)
    try:
        send_id, customer_id = _planned(runtime)
        due = NOW + timedelta(hours=2)
        _email_sent(runtime, customer_id, due - timedelta(hours=1))
        later = _prepare(runtime, send_id, due)
        # 11:30 UTC + 20 h = Wednesday 07:30 UTC = 09:30 in Bucharest: inside 09-19 and
        # outside the quiet hours, so exactly the end of the gap.
        assert later == Reschedule(
            datetime(2026, 11, 18, 7, 30, tzinfo=UTC), reason="deferred_by_gap"
        )
    finally:
        dispose_engines()


def test_the_recheck_skips_a_customer_who_opted_out_after_planning(runtime: Runtime) -> None:
    send_id, customer_id = _planned(runtime)
    _opt_out(runtime, customer_id)
    assert _prepare(runtime, send_id, NOW + timedelta(hours=2)) == Skip("opted_out")


# The demo's spacing is checked on the demo run of tests/worker/commands/test_demo.py (one run).


# --- simulate's output ------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from worker.core.settings import get_settings
    from worker.process import runtime as runtime_module

    monkeypatch.setenv("CROSSSELL_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CROSSSELL_UNSUBSCRIBE_KEYS", "k:decision-path-secret")
    get_settings.cache_clear()
    runtime_module.set_runtime(None)
    yield
    get_settings.cache_clear()
    runtime_module.set_runtime(None)
    dispose_engines()


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize(
    ("options", "clock"),
    [
        ([], "decided at: each event's own time"),
        (["--at", "2026-11-17T10:30Z"], "decided at: 2026-11-17T10:30:00+00:00 for every event"),
    ],
)
def test_simulate_states_its_clock_and_summarises_before_the_daily_table(
    tmp_path: Path, options: list[str], clock: str
) -> None:
    events = tmp_path / "events.jsonl"
    lines = [
        json.dumps(
            purchase(f"evt-out-{n}", at=NOW - timedelta(days=n), customer=customer_block(f"C-o{n}"))
        )
        for n in range(4)
    ]
    events.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["simulate", "--events", str(events), *options])
    assert result.exit_code == 0, result.output
    output = result.output.splitlines()
    assert output[0].startswith(clock), output[0]
    summary = next(
        i for i, line in enumerate(output) if line.startswith("campaign ") and "not matched" in line
    )
    daily = next(
        i for i, line in enumerate(output) if line.startswith("campaign ") and " day " in line
    )
    assert summary < daily


def test_simulate_rejects_an_at_without_a_time_zone(tmp_path: Path, cli_env: None) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(purchase("evt-tz")) + "\n")
    result = CliRunner().invoke(
        main, ["simulate", "--events", str(events), "--at", "2026-11-17T10:30"]
    )
    assert result.exit_code != 0 and "--at" in result.output


@given(
    st.sets(
        st.sampled_from(
            ["email", "first_name", "last_name", "locale", "timezone", "consent", "attributes"]
        )
    )
)
def test_a_stored_event_replays_as_the_same_upsert(given_fields: set[str]) -> None:
    """The inbox keeps what the CRM said, not the model's defaults: replayed by
    ``simulate --since`` (or rechecked at delivery), an event without ``email`` must not
    turn into one that sets it to null and wipes the address another event stored."""
    full = customer_block("C-replay")
    customer = {"id": "C-replay", **{k: v for k, v in full.items() if k in given_fields}}
    event = validate_event(purchase(customer=customer, at=NOW))
    replayed = validate_event(event_payload(event))
    assert replayed.customer.model_fields_set == event.customer.model_fields_set
    assert replayed.customer == event.customer
