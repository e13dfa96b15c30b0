"""Unsubscribe pages: one-click POST works, GET alone never unsubscribes, tokens hold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from tests.support.factories import customer_block, make_settings, purchase
from triggers.events import validate_event
from worker.db import transaction
from worker.ingest import ingest_event
from worker.models import Customer, Send, Suppression
from worker.runtime import Runtime
from worker.tokens import sign
from worker.web import create_app


@pytest.fixture
def web(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, Runtime]]:
    settings = make_settings(
        tmp_path, database_url=database_url, unsubscribe_keys="new:s3cret-new,old:s3cret-old"
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
    old_link = sign({"old": b"s3cret-old"}, "C-web", "all")  # made before the rotation
    assert client.post(f"/u/{old_link}").status_code == 200
    assert _suppressed(runtime)


def test_preferences_opt_out_of_a_kind_blocks_that_kind(
    web: tuple[TestClient, Runtime],
) -> None:
    client, runtime = web
    token = sign(runtime.unsubscribe_keys, "C-web", "all")
    page = client.post(f"/preferences/{token}", data={"kinds": ["loyalty", "upsell"]})
    assert page.status_code == 200 and "Saved" in page.text
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


def test_health_and_metrics(web: tuple[TestClient, Runtime]) -> None:
    client, _ = web
    assert client.get("/healthz").json() == {"status": "ok"}
    assert "crosssell_events_total" in client.get("/metrics").text
