"""The mailto: unsubscribe: a signed token in the subject, a real SMTP/LMTP receiver.

The mailto URI is taken from the List-Unsubscribe header of a message that was really
delivered (to the SMTP sink) and read back with the stdlib parsers; the request goes to
the receiver on loopback through smtplib, as a mail client's MTA would send it.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import select

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from tests.support.smtp_sink import SmtpSink
from tests.worker.records.test_consent import free_port, running_receiver
from triggers.events import validate_event
from worker.commands.demo import seed_catalog
from worker.core.clock import ShiftedClock
from worker.core.db import transaction
from worker.core.models import ConsentRecord, Customer, Send, Suppression
from worker.email.email_context import mailto_uri_body
from worker.email.tokens import sign, verify
from worker.intake.ingest import ingest_event
from worker.outbox.delivery import deliver_send
from worker.outbox.dispatcher import dispatch_once
from worker.process.runtime import Runtime
from worker.web.unsubscribe_mail import customer_in, parse_listen

KEYS = {"k2": b"mail-secret-2-abcdef", "k1": b"mail-secret-1-abcdef"}
KEY_SPEC = "k2:mail-secret-2-abcdef,k1:mail-secret-1-abcdef"
ADDRESS = "unsubscribe@shop.example"


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        unsubscribe_keys=KEY_SPEC,
        unsubscribe_mailto=ADDRESS,
    )
    runtime = Runtime(settings, clock=ShiftedClock(TUESDAY_MORNING))
    with transaction(database_url) as session:
        for customer_id in ("C-mail", "C-other"):
            event = validate_event(purchase(customer=customer_block(customer_id)))
            ingest_event(session, event, runtime.rules.current(), runtime.policy, TUESDAY_MORNING)
    yield runtime
    runtime.close()


def request(subject: str | None, to: str = ADDRESS) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Someone <someone@example.net>"
    message["To"] = to
    if subject is not None:
        message["Subject"] = subject
    message.set_content("unsubscribe")
    return message


def data_reply(host: str, port: int, message: EmailMessage) -> tuple[int, bytes]:
    """The server's answer to DATA (the envelope steps must succeed)."""
    with smtplib.SMTP(host, port) as client:
        client.ehlo()
        assert client.mail("someone@example.net")[0] == 250
        assert client.rcpt(ADDRESS)[0] == 250
        return client.data(message.as_bytes())


def state(runtime: Runtime) -> tuple[bool | None, list[tuple[str, str]], list[str]]:
    """What an unsubscribe could change: C-mail's consent, all consent records, all
    suppressed addresses."""
    with transaction(runtime.settings.resolved_database_url) as session:
        customer = session.get(Customer, "C-mail")
        assert customer is not None
        records = [(r.customer_id, r.source) for r in session.scalars(select(ConsentRecord))]
        suppressed = [s.email for s in session.scalars(select(Suppression))]
        return customer.email_marketing, records, suppressed


def test_the_mailto_of_a_delivered_email_unsubscribes_its_recipient(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        unsubscribe_keys=KEY_SPEC,
        unsubscribe_mailto=ADDRESS,
        email_provider="smtp",
        smtp_port=smtp_sink.port,
    )
    seed_catalog(settings, TUESDAY_MORNING)
    runtime = Runtime(settings, clock=ShiftedClock(TUESDAY_MORNING))
    for suffix in range(50):  # a customer outside the campaign's holdout
        customer_id = f"C-mailto-{suffix}"
        event = validate_event(purchase(customer=customer_block(customer_id)))
        with transaction(database_url) as session:
            ingest_event(
                session, event, runtime.rules.current(), runtime.policy, runtime.clock.now()
            )
            send = session.scalars(select(Send).where(Send.event_id == event.id)).one()
        if send.status == "planned":
            break
    runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
    queued: list[int] = []
    dispatch_once(runtime, queued.extend)
    assert deliver_send(runtime, send.id) == "sent"
    (message,) = smtp_sink.handler.parsed()

    header = str(message["List-Unsubscribe"])
    (mailto,) = re.findall(r"<(mailto:[^>]+)>", header)
    uri = urlsplit(mailto)
    local_part = uri.path.rpartition("@")[0]
    assert uri.path == ADDRESS and len(local_part.encode()) <= 64  # RFC 5321 §4.5.3.1.1
    (subject,) = parse_qs(uri.query)["subject"]

    with running_receiver(runtime) as (host, port):
        assert data_reply(host, port, request(subject))[0] == 250
    runtime.close()
    with transaction(database_url) as session:
        customer = session.get(Customer, customer_id)
        records = session.scalars(select(ConsentRecord)).all()
        suppressed = session.get(Suppression, f"{customer_id.lower()}@example.ro")
    assert customer is not None and customer.email_marketing is False
    assert [(r.customer_id, r.source, r.granted) for r in records] == [
        (customer_id, "mailto", False)
    ]
    assert suppressed is not None and suppressed.source == "mailto"


def _forgeries() -> dict[str, str | None]:
    genuine = sign(KEYS, "C-mail", "all")
    kid, payload, mac = genuine.split(".")
    other_payload = sign(KEYS, "C-other", "all").split(".")[1]
    unsigned = base64.urlsafe_b64encode(b"C-mail\x1fall").rstrip(b"=").decode()
    return {
        "another customer's payload under this MAC": f"unsubscribe {kid}.{other_payload}.{mac}",
        "a damaged MAC": f"unsubscribe {kid}.{payload}.{'A' * len(mac)}",
        "a key this shop does not have": "unsubscribe " + sign({"k9": b"x"}, "C-mail", "all"),
        "a known key id, another secret": "unsubscribe " + sign({"k1": b"guess"}, "C-mail", "all"),
        "no signature at all": f"unsubscribe {kid}.{unsigned}",
        "the customer id in clear": "unsubscribe C-mail",
        "an empty subject": "",
        "no subject header": None,
        "garbage": "unsubscribe ....--__",
    }


FORGERIES = _forgeries()


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_a_forged_request_changes_nothing_and_is_answered_like_a_genuine_one(
    runtime: Runtime, case: str
) -> None:
    unchanged = state(runtime)
    with running_receiver(runtime) as (host, port):
        forged = data_reply(host, port, request(FORGERIES[case]))
        assert state(runtime) == unchanged
        genuine = data_reply(host, port, request("unsubscribe " + sign(KEYS, "C-mail", "all")))
    assert forged == genuine  # same code, same text: nothing tells which tokens exist
    email_marketing, records, suppressed = state(runtime)
    assert email_marketing is False and records == [("C-mail", "mailto")]
    assert suppressed == ["c-mail@example.ro"]


def test_a_token_signed_with_a_rotated_out_key_still_works(runtime: Runtime) -> None:
    old = sign({"k1": KEYS["k1"]}, "C-mail", "all")  # sent before k2 became the first key
    with running_receiver(runtime) as (host, port):
        assert data_reply(host, port, request(f"Re: unsubscribe {old}"))[0] == 250
    assert state(runtime)[0] is False


def test_the_receiver_logs_no_sender_address(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """aiosmtpd logs each SMTP command with the sender's address at INFO; the receiver
    keeps that out of the logs at every level crosssell's processes run at."""
    old = sign({"k1": KEYS["k1"]}, "C-mail", "all")
    with caplog.at_level(logging.DEBUG), running_receiver(runtime) as (host, port):
        assert data_reply(host, port, request(f"unsubscribe {old}"))[0] == 250
    assert state(runtime)[0] is False
    assert not [r.getMessage() for r in caplog.records if "someone@example.net" in r.getMessage()]
    # What it did is logged, by customer id: a failed attempt was, a successful one not.
    done = [r for r in caplog.records if r.getMessage().startswith("mailto unsubscribe of")]
    assert [r.getMessage() for r in done] == [
        "mailto unsubscribe of customer C-mail: consent withdrawn, address suppressed"
    ]
    assert done[0].levelname == "INFO" and getattr(done[0], "customer_id", None) == "C-mail"


def test_only_the_unsubscribe_address_is_accepted(runtime: Runtime) -> None:
    with running_receiver(runtime) as (host, port), smtplib.SMTP(host, port) as client:
        client.ehlo()
        client.mail("someone@example.net")
        code, _ = client.rcpt("postmaster@shop.example")
        assert code == 550
        assert client.rcpt(ADDRESS.upper())[0] == 250  # addresses compare case-insensitively


def test_lmtp_mode_and_the_size_limit(runtime: Runtime) -> None:
    token = sign(KEYS, "C-mail", "all")
    port = free_port()
    from worker.web.unsubscribe_mail import MAX_MESSAGE_BYTES, receiver

    controller = receiver(runtime, "127.0.0.1", port, lmtp=True)
    controller.start()
    try:
        with smtplib.LMTP("127.0.0.1", port) as client:
            big = request(f"unsubscribe {token}")
            big.set_content("x" * (MAX_MESSAGE_BYTES + 1))
            refused = client.sendmail("someone@example.net", [ADDRESS], big.as_bytes())
        pytest.fail(f"an oversized message was taken: {refused}")
    except smtplib.SMTPException as too_big:
        assert "552" in str(too_big) or getattr(too_big, "smtp_code", 0) == 552
    assert state(runtime)[0] is True
    try:
        with smtplib.LMTP("127.0.0.1", port) as client:
            assert client.send_message(request(f"unsubscribe {token}")) == {}
    finally:
        controller.stop()
    assert state(runtime)[0] is False


@pytest.mark.parametrize("recipients", [1, 2, 3])
def test_lmtp_answers_the_final_dot_once_per_recipient(runtime: Runtime, recipients: int) -> None:
    """RFC 2033 section 4.2: after the final dot, one reply per accepted RCPT, in order.
    With one reply for two recipients an MTA waits for the second until it times out,
    and delivers the message again."""
    import socket

    token = sign(KEYS, "C-mail", "all")
    port = free_port()
    from worker.web.unsubscribe_mail import receiver

    controller = receiver(runtime, "127.0.0.1", port, lmtp=True)
    controller.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            stream = connection.makefile("rwb")

            def send(line: bytes) -> None:
                stream.write(line + b"\r\n")
                stream.flush()

            def reply() -> bytes:
                lines = [stream.readline()]
                while lines[-1][3:4] == b"-":
                    lines.append(stream.readline())
                return lines[-1]

            assert reply().startswith(b"220")
            send(b"LHLO mta.example")
            assert reply().startswith(b"250")
            send(b"MAIL FROM:<someone@example.net>")
            assert reply().startswith(b"250")
            for number in range(recipients):
                address = ADDRESS.upper() if number % 2 else ADDRESS
                send(f"RCPT TO:<{address}>".encode())
                assert reply().startswith(b"250")
            send(b"DATA")
            assert reply().startswith(b"354")
            stream.write(request(f"unsubscribe {token}").as_bytes().replace(b"\n", b"\r\n"))
            send(b".")
            answers = [reply() for _ in range(recipients)]
            assert all(answer.startswith(b"250") for answer in answers), answers
            send(b"QUIT")
            assert reply().startswith(b"221"), "no reply left over before QUIT's"
    finally:
        controller.stop()
    assert state(runtime)[0] is False


# --- tokens and URIs, as properties -------------------------------------------------------


customer_ids = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x1f"), min_size=1, max_size=128
)


@given(
    customer_id=customer_ids,
    position=st.integers(0, 10_000),
    replacement=st.sampled_from(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    ),
)
# The payload's last character respelled with other unused low bits: same bytes, other text.
@example(customer_id="\x1e\x07", position=95, replacement="1")
# The MAC's last character respelled with other unused low bits: it verified before.
@example(customer_id="L*$vc1Utg", position=1449, replacement="V")
def test_any_change_to_what_a_token_signs_is_refused(
    customer_id: str, position: int, replacement: str
) -> None:
    token = sign(KEYS, customer_id, "all")
    index = position % len(token)
    mutated = token[:index] + replacement + token[index + 1 :]
    subject = f"unsubscribe {mutated}"
    found = customer_in(KEYS, request(subject).as_bytes())
    if mutated == token:
        assert found == customer_id
    else:
        # Every other text is refused: also a MAC respelled with other unused low bits,
        # which decodes to the same bytes (tokens verify only as they were written).
        assert found is None


@given(customer_id=customer_ids)
def test_the_mailto_value_round_trips_through_the_stdlib_parsers(customer_id: str) -> None:
    token = sign(KEYS, customer_id, "all")
    uri = urlsplit("mailto:" + mailto_uri_body(ADDRESS, token))
    assert uri.path == ADDRESS  # the address never grows, however long the token
    (subject,) = parse_qs(uri.query)["subject"]
    assert subject == f"unsubscribe {token}"
    assert unquote(uri.query) == f"subject=unsubscribe {token}"
    assert not re.search(r"[\s<>\"]", uri.query)  # RFC 6068 §2: nothing left unencoded
    assert verify(KEYS, token) == (customer_id, "all")
    assert customer_in(KEYS, request(subject).as_bytes()) == customer_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("0.0.0.0:25", ("0.0.0.0", 25)),
        ("[::1]:2525", ("::1", 2525)),
        ("localhost:65535", ("localhost", 65535)),
        ("127.0.0.1", None),
        (":2525", None),
        ("host:0", None),
        ("host:65536", None),
        ("host:port", None),
    ],
)
def test_listen_addresses(value: str, expected: tuple[str, int] | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            parse_listen(value)
    else:
        assert parse_listen(value) == expected


# --- the documented command ---------------------------------------------------------------


def test_the_command_serves_until_terminated(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, database_url=sqlite_url, unsubscribe_keys=KEY_SPEC)
    runtime = Runtime(settings)
    event = validate_event(purchase(customer=customer_block("C-mail")))
    with transaction(sqlite_url) as session:
        ingest_event(session, event, runtime.rules.current(), runtime.policy, TUESDAY_MORNING)
    port = free_port()
    environment = {
        **os.environ,
        "CROSSSELL_DATABASE_URL": sqlite_url,
        "CROSSSELL_VAR_DIR": str(tmp_path / "var"),
        "CROSSSELL_UNSUBSCRIBE_KEYS": KEY_SPEC,
        "CROSSSELL_UNSUBSCRIBE_MAILTO": ADDRESS,
    }
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "crosssell"),
            "unsubscribe-mail",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=5)
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "the receiver did not start"
                time.sleep(0.1)
        with client:
            assert client.send_message(request("unsubscribe " + sign(KEYS, "C-mail", "all"))) == {}
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr.decode()
    with transaction(sqlite_url) as session:
        customer = session.get(Customer, "C-mail")
        assert customer is not None and customer.email_marketing is False
