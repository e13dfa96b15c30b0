"""Unsubscribe pages: one-click POST works, GET alone never unsubscribes, tokens hold."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from tests.support.factories import customer_block, make_settings, purchase
from tests.worker.records.test_consent import free_port
from triggers.events import validate_event
from worker.core.db import transaction
from worker.core.models import Customer, Send, Suppression
from worker.email.tokens import sign
from worker.intake.ingest import ingest_event
from worker.process.runtime import Runtime
from worker.web.web import create_app


@pytest.fixture
def web(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, Runtime]]:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        unsubscribe_keys="new:s3cret-new-0123456,old:s3cret-old-0123456",
    )
    runtime = Runtime(settings)
    event = validate_event(purchase(customer=customer_block("C-web")))
    with transaction(database_url) as session:
        ingest_event(session, event, runtime.rules.current(), runtime.policy, event.occurred_at)
    with TestClient(create_app(runtime)) as client:
        yield client, runtime


def _suppressed(runtime: Runtime) -> bool:
    with transaction(runtime.settings.resolved_database_url) as session:
        return session.get(Suppression, "c-web@example.ro") is not None


def test_get_shows_a_confirmation_and_changes_nothing(web: tuple[TestClient, Runtime]) -> None:
    client, runtime = web
    token = sign(runtime.unsubscribe_keys, "C-web", "all")
    page = client.get(f"/u/{token}")
    assert page.status_code == 200 and '<form method="post"' in page.text
    assert not _suppressed(runtime)


def test_one_click_post_unsubscribes_idempotently(web: tuple[TestClient, Runtime]) -> None:
    client, runtime = web
    token = sign(runtime.unsubscribe_keys, "C-web", "all")
    for _ in range(2):
        response = client.post(
            f"/u/{token}", data={"List-Unsubscribe": "One-Click"}, follow_redirects=False
        )
        assert response.status_code == 200  # RFC 8058: no redirect
    assert _suppressed(runtime)
    with transaction(runtime.settings.resolved_database_url) as session:
        customer = session.get(Customer, "C-web")
        assert customer is not None and customer.email_marketing is False
        assert len(session.scalars(select(Suppression)).all()) == 1


def test_a_trailing_slash_is_not_redirected_anywhere(web: tuple[TestClient, Runtime]) -> None:
    """RFC 8058's one-click POST is answered where it lands; Starlette's slash redirect
    was a 307 to an address built from the request's Host header."""
    client, runtime = web
    token = sign(runtime.unsubscribe_keys, "C-web", "all")
    for method, path in (("POST", f"/u/{token}/"), ("GET", f"/preferences/{token}/")):
        answer = client.request(
            method, path, headers={"Host": "evil.example"}, follow_redirects=False
        )
        assert answer.status_code == 404 and "location" not in answer.headers
    assert not _suppressed(runtime)


def test_tampered_and_foreign_tokens_are_rejected(web: tuple[TestClient, Runtime]) -> None:
    client, runtime = web
    token = sign(runtime.unsubscribe_keys, "C-web", "all")
    kid, payload, mac = token.split(".")
    other = sign(runtime.unsubscribe_keys, "C-other", "all").split(".")[1]
    for bad in (
        f"{kid}.{other}.{mac}",
        f"{kid}.{payload}.{mac[:-2]}AA",
        sign({"x": b"someone-elses-key"}, "C-web", "all"),
        "garbage",
    ):
        assert client.post(f"/u/{bad}").status_code == 400
    assert not _suppressed(runtime)


def test_a_rotated_out_key_still_verifies_while_configured(
    web: tuple[TestClient, Runtime],
) -> None:
    client, runtime = web
    old_link = sign({"old": b"s3cret-old-0123456"}, "C-web", "all")  # made before the rotation
    assert client.post(f"/u/{old_link}").status_code == 200
    assert _suppressed(runtime)


def test_preferences_opt_out_of_a_kind_blocks_that_kind(
    web: tuple[TestClient, Runtime],
) -> None:
    client, runtime = web
    token = sign(runtime.unsubscribe_keys, "C-web", "all")
    page = client.post(f"/preferences/{token}", data={"kinds": ["loyalty", "upsell"]})
    # C-web is ro-RO: the page is the Romanian one, saying it saved.
    assert page.status_code == 200 and "Am salvat." in page.text
    with transaction(runtime.settings.resolved_database_url) as session:
        customer = session.get(Customer, "C-web")
        assert customer is not None
        assert customer.opted_out_kinds == ["cross_sell", "reengagement"]
    event = validate_event(purchase(customer={"id": "C-web"}))
    url = runtime.settings.resolved_database_url
    with transaction(url) as session:
        ingest_event(session, event, runtime.rules.current(), runtime.policy, event.occurred_at)
        send = session.scalars(select(Send).where(Send.event_id == event.id)).one()
    assert (send.status, send.reason) == ("skipped", "opted_out")
    assert not _suppressed(runtime)


def test_the_preferences_page_of_a_customer_unsubscribed_from_everything_says_so(
    web: tuple[TestClient, Runtime],
) -> None:
    """After an unsubscribe from all email, the page showed every kind ticked and saving
    said "Saved." while nothing would be sent: it now says the customer gets none of
    them, that the choices apply on subscribing again, and offers no second unsubscribe.
    Saving records the kinds and leaves consent off."""
    client, runtime = web
    token = sign(runtime.unsubscribe_keys, "C-web", "all")
    before = client.get(f"/preferences/{token}")
    assert "V-ați dezabonat de la toate" not in before.text
    assert 'name="all" value="unsubscribe"' in before.text
    assert client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    page = client.get(f"/preferences/{token}")
    assert "V-ați dezabonat de la toate e-mailurile de marketing" in page.text
    assert 'name="all" value="unsubscribe"' not in page.text
    saved = client.post(f"/preferences/{token}", data={"kinds": ["loyalty"]})
    assert "Am salvat.</strong> Tot nu primiți e-mailuri de marketing" in saved.text
    with transaction(runtime.settings.resolved_database_url) as session:
        customer = session.get(Customer, "C-web")
        assert customer is not None and customer.email_marketing is False
        assert customer.opted_out_kinds == ["cross_sell", "reengagement", "upsell"]


def test_health_and_metrics(web: tuple[TestClient, Runtime]) -> None:
    client, _ = web
    health = client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "healthy"})
    assert "crosssell_events_total" in client.get("/metrics").text


def test_health_of_an_unreachable_database_reveals_nothing_about_it(tmp_path: Path) -> None:
    """Before: 503 with the driver's message, naming the database host, port and role."""
    user, host, port = "crosssell_secret_role", "127.0.0.1", "1"  # nothing listens on port 1
    settings = make_settings(tmp_path, database_url=f"postgresql+psycopg://{user}@{host}:{port}/db")
    with TestClient(create_app(Runtime(settings))) as client:
        health = client.get("/healthz")
    assert (health.status_code, health.json()) == (503, {"status": "unhealthy"})
    for internal in (user, host, f":{port}", "psycopg", "connection"):
        assert internal not in health.text


# --- provider webhooks through the HTTP endpoints -----------------------------------------

POSTMARK_AUTH = {"Authorization": "Basic " + base64.b64encode(b"hooks:pw").decode()}


@pytest.fixture
def hooks(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, Runtime]]:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        postmark_webhook_username="hooks",
        postmark_webhook_password="pw",
        mailgun_webhook_signing_key="mg-key",
    )
    runtime = Runtime(settings)
    with TestClient(create_app(runtime)) as client:
        yield client, runtime


def _postmark_bounce(kind: str, event_id: int) -> dict[str, object]:
    return {
        "RecordType": "Bounce",
        "ID": event_id,
        "Type": kind,
        "TypeCode": 1,
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Email": "Gone@Example.com",
        "BouncedAt": "2026-11-17T10:29:54Z",
        "Description": "unknown user",
        "Details": "smtp;550 5.1.1 no such user",
    }


def test_postmark_hard_bounce_suppresses_once_soft_does_not(
    hooks: tuple[TestClient, Runtime],
) -> None:
    client, runtime = hooks
    soft = client.post(
        "/webhooks/postmark", json=_postmark_bounce("SoftBounce", 1), headers=POSTMARK_AUTH
    )
    assert soft.status_code == 200
    url = runtime.settings.resolved_database_url
    with transaction(url) as session:
        assert session.get(Suppression, "gone@example.com") is None
    for _ in range(2):  # the provider retries: applied once
        hard = client.post(
            "/webhooks/postmark", json=_postmark_bounce("HardBounce", 2), headers=POSTMARK_AUTH
        )
        assert hard.status_code == 200
    assert hard.json()["applied"] == 0
    with transaction(url) as session:
        row = session.get(Suppression, "gone@example.com")
        assert row is not None and row.reason == "hard_bounce"


def test_webhooks_with_bad_credentials_or_unconfigured_providers_are_refused(
    hooks: tuple[TestClient, Runtime],
) -> None:
    client, runtime = hooks
    wrong = {"Authorization": "Basic " + base64.b64encode(b"hooks:no").decode()}
    assert (
        client.post(
            "/webhooks/postmark", json=_postmark_bounce("HardBounce", 3), headers=wrong
        ).status_code
        == 401
    )
    forged = {
        "signature": {"timestamp": "1", "token": "t", "signature": "00"},
        "event-data": {"event": "complained", "id": "x", "recipient": "a@b.c"},
    }
    assert client.post("/webhooks/mailgun", json=forged).status_code == 401
    assert client.post("/webhooks/sendgrid", content=b"[]").status_code == 404
    with transaction(runtime.settings.resolved_database_url) as session:
        assert session.get(Suppression, "gone@example.com") is None


def _mailgun_request(signed_at: datetime, event_id: str) -> bytes:
    """A Mailgun permanent failure for c-web, signed with the ``hooks`` key at ``signed_at``."""
    timestamp, token = str(int(signed_at.timestamp())), secrets.token_hex(25)
    signature = hmac.new(b"mg-key", (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {
            "signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": {
                "event": "failed",
                "id": event_id,
                "timestamp": signed_at.timestamp(),
                "severity": "permanent",
                "reason": "bounce",
                "recipient": "c-web@example.ro",
                "delivery-status": {"code": 550, "message": "5.1.1 no such user"},
            },
        }
    ).encode()


@pytest.mark.parametrize("age", [timedelta(minutes=10), timedelta(hours=1)], ids=["10min", "1h"])
def test_a_mailgun_retry_with_an_old_signature_is_applied_once(
    hooks: tuple[TestClient, Runtime], age: timedelta
) -> None:
    """Mailgun retries with the signature of its first attempt; before, anything signed
    more than 5 minutes ago was refused with 401 and the bounce was lost."""
    client, runtime = hooks
    body = _mailgun_request(datetime.now(UTC) - age, f"evt-{age.total_seconds():g}")
    answers = [client.post("/webhooks/mailgun", content=body) for _ in range(2)]
    assert [(a.status_code, a.json()["applied"]) for a in answers] == [(200, 1), (200, 0)]
    with transaction(runtime.settings.resolved_database_url) as session:
        row = session.get(Suppression, "c-web@example.ro")
        assert row is not None and row.reason == "hard_bounce"


def test_a_mailgun_retry_signed_anew_is_still_applied_once(
    hooks: tuple[TestClient, Runtime],
) -> None:
    """Whether Mailgun signs a retry anew or reuses its first signature, the event's
    own id (with its timestamp) is recorded too: the same event under a new token is a
    duplicate."""
    client, _ = hooks
    first = _mailgun_request(datetime.now(UTC) - timedelta(minutes=20), "evt-resigned")
    again = json.loads(_mailgun_request(datetime.now(UTC), "evt-resigned"))
    again["event-data"] = json.loads(first)["event-data"]
    assert client.post("/webhooks/mailgun", content=first).json()["applied"] == 1
    assert client.post("/webhooks/mailgun", json=again).json()["applied"] == 0


def test_a_captured_mailgun_signature_cannot_carry_other_event_data(
    hooks: tuple[TestClient, Runtime],
) -> None:
    """Mailgun signs the timestamp and token, not the event: a signature block sniffed
    from one request verifies with any event data for eight hours. Its token is the
    de-duplication id, so a second request with it changes nothing, whatever it says;
    a request with a fresh token (Mailgun's next webhook) is applied."""
    client, runtime = hooks
    url = runtime.settings.resolved_database_url
    delivered = json.loads(_mailgun_request(datetime.now(UTC) - timedelta(hours=3), "evt-ok"))
    delivered["event-data"] |= {"event": "delivered", "recipient": "someone@example.ro"}
    assert client.post("/webhooks/mailgun", json=delivered).json()["applied"] == 1
    for forged_event in (
        {"event": "complained", "id": "evil-1", "recipient": "victim@example.ro"},
        {
            "event": "failed",
            "severity": "permanent",
            "reason": "bounce",
            "id": "evil-2",
            "recipient": "victim@example.ro",
        },
        {"event": "unsubscribed", "id": "evil-3", "recipient": "victim@example.ro"},
    ):
        forged = {"signature": delivered["signature"], "event-data": forged_event}
        answer = client.post("/webhooks/mailgun", json=forged)
        assert answer.status_code == 200 and answer.json()["applied"] == 0, answer.text
    with transaction(url) as session:
        assert session.get(Suppression, "victim@example.ro") is None
    fresh = _mailgun_request(datetime.now(UTC), "evt-fresh")
    assert client.post("/webhooks/mailgun", content=fresh).json()["applied"] == 1


def test_the_web_command_starts_announces_itself_and_serves_healthz(
    tmp_path: Path, sqlite_url: str
) -> None:
    """``crosssell web`` as an operator starts it: a process that logs its startup line,
    binds its port and answers ``/healthz`` until SIGTERM ends it cleanly (the app is
    tested in-process above; this is the command around it, which once failed at start on
    a missing startup entry)."""
    port = free_port()
    environment = {
        **os.environ,
        "CROSSSELL_DATABASE_URL": sqlite_url,
        "CROSSSELL_VAR_DIR": str(tmp_path / "var"),
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "crosssell"), "web", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True)
    reader.start()
    bound = f"Uvicorn running on http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        # Our process bound the port (another one may have taken a port free_port gave).
        while not any(bound in line for line in lines):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "crosssell web did not start:\n" + "".join(lines)
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        reader.join(timeout=10)
        process.stderr.close()
    output = "".join(lines)
    # uvicorn shuts down cleanly, then re-raises the signal it caught so that the exit
    # status says why the process ended (uvicorn >= 0.29): -SIGTERM, not a crash.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "web: database sqlite:///" in output
