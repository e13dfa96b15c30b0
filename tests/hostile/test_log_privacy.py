"""No customer address or name in any log line, at any level.

The suite-wide watch lives in ``tests/conftest.py`` (see :mod:`tests.hostile.personal_data`);
these tests check the watch itself and the leaks it was written for: SMTP replies that
quote the address (logged at INFO on a transient failure, at ERROR on a policy refusal),
the webhook policy alert, and SQLAlchemy errors carrying bound parameters.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tests.hostile.personal_data import PROBE, LeakRecorder, customers_data, pattern
from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from tests.support.smtp_sink import SmtpSink
from triggers.events import validate_event
from worker.commands import demo_data
from worker.commands.demo import seed_catalog
from worker.core.clock import ShiftedClock
from worker.core.db import transaction
from worker.core.models import Customer, Send, Suppression
from worker.core.redaction import address_ref, redact
from worker.intake.ingest import ingest_event
from worker.outbox.delivery import deliver_send
from worker.outbox.dispatcher import dispatch_once
from worker.process.runtime import Runtime
from worker.webhooks.events import TrackingEvent

# --- the watch ------------------------------------------------------------------------


def test_the_watch_list_covers_every_test_customer_and_nothing_else() -> None:
    """Every demo customer's address and names and the factories' customer are caught;
    ids, address references and the shop's own addresses are not."""
    watch = pattern()
    people = demo_data.customers(220, random.Random(demo_data.SEED))
    block = customer_block("C-7")
    for person in people:
        for text in (person.email, person.email.upper(), person.first_name, person.last_name):
            assert watch.search(f"to <{text}>: mailbox full"), text
    for text in (str(block["email"]), str(block["first_name"]), str(block["last_name"])):
        assert watch.search(f"send 7 for {text}."), text
    for harmless in (
        "send 12 for customer C-1042",
        f"refused {address_ref(people[0].email)}",
        "From: offers@shop.example",
        "<send-7.0123456789ab@crosssell.local>",
        "campaign laptop-accessories reloaded",
    ):
        assert not watch.search(harmless), harmless
    assert len(customers_data().names) >= len({p.first_name for p in people})


def test_the_recorder_names_the_logger_and_the_test_and_restores_the_root_logger() -> None:
    recorder = LeakRecorder(probes=True)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    person = demo_data.customers(1, random.Random(demo_data.SEED))[0]
    probe = {PROBE: True}
    example = logging.getLogger("worker.example")
    with recorder.watching("tests/x.py::test_y"):
        example.debug("mail for %s", person.email, extra=probe)
        example.debug("send %s", 7, extra=probe)
        logging.getLogger("mail.log").info("recip: %s", person.email, extra=probe)
        example.error("failed", exc_info=ValueError(person.last_name), extra=probe)
    example.warning("after: %s", person.email, extra=probe)
    assert [(leak.test, leak.logger, leak.level) for leak in recorder.leaks] == [
        ("tests/x.py::test_y", "worker.example", "DEBUG"),
        ("tests/x.py::test_y", "worker.example", "ERROR"),
    ]
    assert (root.level, root.handlers) == (level, handlers)


# --- redaction ------------------------------------------------------------------------


@given(address=st.emails(), before=st.sampled_from(["452 4.2.2 <", "to ", "recipient="]))
def test_redact_removes_any_address_and_keeps_a_stable_reference(address: str, before: str) -> None:
    reply = f"{before}{address}>: mailbox full"
    redacted = redact(reply)
    assert address.lower() not in redacted.lower()
    assert "mailbox full" in redacted
    assert redact(reply) == redacted  # stable: the same address, the same reference


def test_the_reference_is_case_insensitive_and_short() -> None:
    assert address_ref("Ana@Example.RO") == address_ref("ana@example.ro")
    assert re.fullmatch(r"addr:[0-9a-f]{10}", address_ref("ana@example.ro"))
    assert address_ref(None) == "-"


# --- the known leaks --------------------------------------------------------------------

_opened: list[Runtime] = []


@pytest.fixture(autouse=True)
def _close_runtimes() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def _planned_send(tmp_path: Path, database_url: str, smtp_port: int) -> tuple[Runtime, int, str]:
    settings = make_settings(
        tmp_path, database_url=database_url, email_provider="smtp", smtp_port=smtp_port
    )
    runtime = Runtime(settings, clock=ShiftedClock(TUESDAY_MORNING))
    _opened.append(runtime)
    seed_catalog(settings, TUESDAY_MORNING)
    for suffix in range(50):  # some customers are held out by their hash
        event = purchase(customer=customer_block(f"C-logs-{suffix}"))
        with transaction(database_url) as session:
            ingest_event(
                session,
                validate_event(event),
                runtime.rules.current(),
                runtime.policy,
                runtime.clock.now(),
            )
            send = session.scalars(select(Send).where(Send.event_id == event["id"])).one()
            if send.status == "planned":
                customer = session.get(Customer, send.customer_id)
                assert customer is not None and customer.email
                return runtime, send.id, customer.email
    raise AssertionError("no customer outside the holdout in 50 tries")


@pytest.mark.parametrize(
    ("reply", "outcome", "level"),
    [
        ("452 4.2.2 <{address}>: mailbox full", "retry", logging.INFO),
        ("451 4.3.0 {address} ({name}) deferred", "retry", logging.INFO),
        ("550 5.7.26 <{address}>: unauthenticated mail refused", "failed", logging.ERROR),
    ],
    ids=["4xx-quoting-address", "4xx-quoting-name", "policy-5.7.x"],
)
def test_smtp_replies_quoting_the_recipient_are_logged_without_it(
    tmp_path: Path,
    database_url: str,
    smtp_sink: SmtpSink,
    caplog: pytest.LogCaptureFixture,
    reply: str,
    outcome: str,
    level: int,
) -> None:
    """Before: "send 7: transient failure …: 452 4.2.2 <c-logs-0@example.ro> …" at INFO."""
    runtime, send_id, address = _planned_send(tmp_path, database_url, smtp_sink.port)
    name = str(customer_block()["first_name"])
    smtp_sink.handler.data_faults[address] = [reply.format(address=address, name=name)]
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    dispatch_once(runtime, lambda ids: None)
    with caplog.at_level(logging.DEBUG):
        assert deliver_send(runtime, send_id) == outcome
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("worker.")]
    assert any(
        r.levelno == level and f"send {send_id}" in r.getMessage()
        for r in caplog.records
        if r.name.startswith("worker.")
    )
    assert not [line for line in ours if address.lower() in line.lower() or name in line]
    # What the operator needs is still there: the reply's codes.
    code, enhanced = reply.split(" ")[:2]
    assert any(code in line and enhanced in line for line in ours)


def test_the_webhook_policy_alert_names_no_address(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from worker.webhooks.apply import apply_events

    recipient = str(customer_block("C-alert")["email"])
    event = TrackingEvent(
        provider="mailgun",
        event_id="policy-1",
        kind="bounced",
        recipient=recipient,
        timestamp=datetime.now(UTC),
        bounce_type="hard",
        description=f"550 5.7.26 <{recipient}> DMARC policy",
        policy=True,
    )
    with caplog.at_level(logging.DEBUG), transaction(sqlite_url) as session:
        apply_events(session, [event], datetime.now(UTC))
    assert "OPERATOR" in caplog.text
    assert recipient not in caplog.text
    assert address_ref(recipient) in caplog.text


def test_database_errors_do_not_carry_bound_parameters(database_url: str) -> None:
    """``hide_parameters``: a failed INSERT's message no longer lists the row's values."""
    address = str(customer_block("C-dup")["email"])
    now = datetime.now(UTC)
    with transaction(database_url) as session:
        session.add(Suppression(email=address, reason="unsubscribe", source="t", created_at=now))
    with pytest.raises(IntegrityError) as raised, transaction(database_url) as session:
        rows: Sequence[Suppression] = [
            Suppression(email=address, reason="complaint", source="t2", created_at=now)
        ]
        session.add_all(rows)
        session.flush()
    statement_and_parameters = str(raised.value).split("\n", 1)[-1]
    assert "complaint" not in statement_and_parameters
    assert "hidden due to hide_parameters" in str(raised.value)
