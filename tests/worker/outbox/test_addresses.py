"""Addresses end to end: ingest → plan → deliver to a real aiosmtpd server.

IDN domains reach the SMTP envelope and the headers as A-labels; a UTF-8 local part goes
with SMTPUTF8 or fails as ``unsupported_address``; the suppression list is checked on the
canonical form, so a spelling variant cannot slip past it; nothing but one mailbox is
ever handed to the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes, message_from_string, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from pydantic import ValidationError
from sqlalchemy import select, update

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from tests.support.smtp_sink import free_port
from tests.worker.end_to_end.test_pipeline import _dispatch, _ingest, _runtime
from triggers.addresses import suppression_key
from worker.core.clock import ShiftedClock
from worker.core.db import transaction
from worker.core.models import Customer, Send, Suppression
from worker.outbox.delivery import deliver_send
from worker.process.runtime import Runtime


@dataclass
class Envelopes:
    """An aiosmtpd handler that keeps each transaction's envelope as the server saw it."""

    received: list[tuple[str, list[str], list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = bytes(envelope.original_content or envelope.content)
        self.received.append(
            (envelope.mail_from, list(envelope.rcpt_tos), list(envelope.mail_options), content)
        )
        return "250 OK"


@pytest.fixture(params=[False, True], ids=["plain", "smtputf8"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[Envelopes, int, bool]]:
    handler = Envelopes()
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, enable_SMTPUTF8=bool(request.param)
    )
    controller.start()
    try:
        yield handler, port, bool(request.param)
    finally:
        controller.stop()


def _parse(raw: bytes) -> EmailMessage:
    parsed = (
        message_from_bytes(raw, policy=policy.default)
        if raw.isascii()
        else message_from_string(raw.decode("utf-8"), policy=policy.default)
    )
    assert isinstance(parsed, EmailMessage)
    return parsed


def _due_send(runtime: Runtime, email: str) -> int:
    """A planned send for a customer with this address (outside the holdout), made due."""
    for suffix in range(50):
        event = purchase(customer=customer_block(f"C-addr-{suffix}", email=email))
        _ingest(runtime, event)
        with transaction(runtime.settings.resolved_database_url) as session:
            send = session.scalars(select(Send).where(Send.event_id == event["id"])).one()
        if send.status == "planned":
            runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
            assert send.id in _dispatch(runtime)
            return send.id
    raise AssertionError("no customer outside the holdout in 50 tries")


def _outcome(runtime: Runtime, send_id: int) -> tuple[str, str | None]:
    with transaction(runtime.settings.resolved_database_url) as session:
        send = session.get(Send, send_id)
        assert send is not None
        return send.status, send.reason


def test_idn_customer_is_delivered_to_the_a_label_address(
    tmp_path: Path, database_url: str, server: tuple[Envelopes, int, bool]
) -> None:
    handler, port, _ = server
    runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=port)
    send_id = _due_send(runtime, "ana@exämple.ro")
    assert deliver_send(runtime, send_id) == "sent"
    ((_, recipients, options, content),) = handler.received
    assert recipients == ["ana@xn--exmple-cua.ro"]
    assert "SMTPUTF8" not in options  # an IDN domain alone needs no SMTPUTF8
    assert content.isascii()
    to_line = next(line for line in content.split(b"\r\n") if line.startswith(b"To: "))
    assert to_line.endswith(b" <ana@xn--exmple-cua.ro>")
    (mailbox,) = _parse(content)["To"].addresses
    assert mailbox.addr_spec == "ana@xn--exmple-cua.ro"


def test_utf8_local_part_goes_with_smtputf8_or_fails_as_unsupported_address(
    tmp_path: Path, database_url: str, server: tuple[Envelopes, int, bool]
) -> None:
    handler, port, smtputf8 = server
    runtime = _runtime(tmp_path, database_url, email_provider="smtp", smtp_port=port)
    send_id = _due_send(runtime, "josé@example.com")
    if smtputf8:
        assert deliver_send(runtime, send_id) == "sent"
        ((_, recipients, options, content),) = handler.received
        assert recipients == ["josé@example.com"]
        assert "SMTPUTF8" in options
        (mailbox,) = _parse(content)["To"].addresses
        assert mailbox.addr_spec == "josé@example.com"
    else:
        assert deliver_send(runtime, send_id) == "failed"
        assert _outcome(runtime, send_id) == ("failed", "unsupported_address")
        assert handler.received == []
        with transaction(database_url) as session:  # nothing is wrong with the address
            assert session.get(Suppression, suppression_key("josé@example.com")) is None


@pytest.mark.parametrize(
    ("suppressed", "customer_email"),
    [
        ("victim@example.com", "Victim@EXAMPLE.com"),
        ("VICTIM@example.com", "victim@example.com"),
        ("ana@xn--exmple-cua.ro", "ana@EXÄMPLE.ro"),
        ("ana@exämple.ro", "Ana@xn--exmple-cua.ro"),
    ],
)
def test_suppression_holds_for_every_spelling_of_the_address(
    tmp_path: Path, sqlite_url: str, suppressed: str, customer_email: str
) -> None:
    runtime = _runtime(tmp_path, sqlite_url, email_provider="file")
    send_id = _due_send(runtime, customer_email)
    with transaction(sqlite_url) as session:  # suppressed after planning: the recheck
        session.add(
            Suppression(
                email=suppression_key(suppressed),
                reason="manual",
                source="test",
                created_at=TUESDAY_MORNING,
            )
        )
    assert deliver_send(runtime, send_id) == "skipped"
    assert _outcome(runtime, send_id) == ("skipped", "suppressed")
    assert not list(runtime.settings.resolved_outbox_dir.glob("*.eml"))
    # and at planning: another event for the same customer is not planned at all
    event = purchase(customer=customer_block(_customer_of(runtime, send_id), email=customer_email))
    _ingest(runtime, event)
    with transaction(sqlite_url) as session:
        planned = session.scalars(select(Send).where(Send.event_id == event["id"])).all()
    assert [(send.status, send.reason) for send in planned] in ([], [("skipped", "suppressed")])


def _customer_of(runtime: Runtime, send_id: int) -> str:
    with transaction(runtime.settings.resolved_database_url) as session:
        send = session.get(Send, send_id)
        assert send is not None
        return send.customer_id


@pytest.mark.parametrize(
    "stored", ["victim@example.com>", "a@example.com>,<evil@example.net", "x@y.ro\r\nBcc: z@y.ro"]
)
def test_an_unusable_address_stored_before_validation_is_never_sent(
    tmp_path: Path, sqlite_url: str, stored: str
) -> None:
    runtime = _runtime(tmp_path, sqlite_url, email_provider="file")
    send_id = _due_send(runtime, "placeholder@example.com")
    with transaction(sqlite_url) as session:
        customer_id = session.get(Send, send_id).customer_id  # type: ignore[union-attr]
        session.execute(update(Customer).where(Customer.id == customer_id).values(email=stored))
    assert deliver_send(runtime, send_id) == "skipped"
    assert _outcome(runtime, send_id) == ("skipped", "unsupported_address")
    assert not list(runtime.settings.resolved_outbox_dir.glob("*.eml"))


def test_the_canonical_address_is_what_is_stored(tmp_path: Path, sqlite_url: str) -> None:
    runtime = _runtime(tmp_path, sqlite_url, email_provider="file")
    _ingest(runtime, purchase(customer=customer_block("C-store", email=" Ana@EXÄMPLE.RO ")))
    with transaction(sqlite_url) as session:
        customer = session.get(Customer, "C-store")
        assert customer is not None and customer.email == "Ana@exämple.ro"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("sender_address", "offers@shop.example>"),
        ("sender_address", "Shop <offers@shop.example>"),
        ("sender_address", "offers"),
        ("reply_to", "a@shop.example, b@shop.example"),
        ("reply_to", "help@shop.example\r\nBcc: x@y.ro"),
        ("unsubscribe_mailto", "unsubscribe@"),
    ],
)
def test_a_bad_address_setting_stops_the_process_naming_it(
    tmp_path: Path, variable: str, value: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        make_settings(tmp_path, **{variable: value})
    assert f"CROSSSELL_{variable.upper()}" in str(refused.value)


def test_address_settings_are_normalised(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        sender_address="Offers@SHOP.example",
        reply_to='"Ajutor, magazin" <Help@EXÄMPLE.ro>',
        unsubscribe_mailto="unsubscribe@xn--exmple-cua.ro?x=1",
    )
    assert settings.sender_address == "Offers@shop.example"
    assert settings.reply_to == '"Ajutor, magazin" <Help@exämple.ro>'
    assert settings.unsubscribe_mailto == "unsubscribe@exämple.ro?x=1"  # RFC 6068 hfields kept
