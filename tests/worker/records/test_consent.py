"""An opt-out sticks: through every channel, across address changes, against CRM upserts.

Each channel is driven through its real entry point (the web app, the mail receiver on
loopback, the provider webhook endpoint, the command line); the CRM side goes through
``ingest_event``. Expected outcomes come from the documented rule (docs/events.md): a
crosssell opt-out stands until an opt-in strictly newer than it.
"""

from __future__ import annotations

import itertools
import json
import smtplib
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from starlette.testclient import TestClient

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from triggers.events import validate_event
from worker.commands.cli import main
from worker.commands.demo import seed_catalog
from worker.core.clock import ShiftedClock
from worker.core.db import transaction
from worker.core.models import ConsentRecord, Customer, Send, Suppression
from worker.core.settings import get_settings
from worker.email.email_context import mailto_for
from worker.email.tokens import sign
from worker.intake.ingest import ingest_event
from worker.process.runtime import Runtime
from worker.records.customers import EMAIL_MARKETING, upsert_customer, withdraw_consent
from worker.web.unsubscribe_mail import receiver
from worker.web.web import create_app

T0 = TUESDAY_MORNING - timedelta(minutes=30)
NEW_ADDRESS = "new.address@example.it"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_receiver(runtime: Runtime, *, lmtp: bool = False) -> Iterator[tuple[str, int]]:
    """The real mailto receiver, listening on loopback for the test's duration."""
    port = free_port()
    controller = receiver(runtime, "127.0.0.1", port, lmtp=lmtp)
    controller.start()
    try:
        yield "127.0.0.1", port
    finally:
        controller.stop()


@dataclass
class Shop:
    runtime: Runtime
    client: TestClient
    customer_id: str
    address: str

    @property
    def url(self) -> str:
        return self.runtime.settings.resolved_database_url

    @property
    def token(self) -> str:
        return sign(self.runtime.unsubscribe_keys, self.customer_id, "all")

    def ingest(self, at: datetime, **customer: Any) -> Send:
        """A purchase from the CRM at ``at``; the laptop-accessories send it produced."""
        document = purchase(at=at, customer={"id": self.customer_id, **customer})
        event = validate_event(document)
        with transaction(self.url) as session:
            ingest_event(
                session,
                event,
                self.runtime.rules.current(),
                self.runtime.policy,
                at + timedelta(minutes=30),
            )
            send = session.scalars(select(Send).where(Send.event_id == event.id)).one()
            session.expunge(send)
        return send

    def customer(self) -> Customer:
        with transaction(self.url) as session:
            customer = session.get(Customer, self.customer_id)
            assert customer is not None
            session.expunge(customer)
            return customer

    def records(self) -> list[ConsentRecord]:
        with transaction(self.url) as session:
            rows = list(
                session.scalars(
                    select(ConsentRecord)
                    .where(ConsentRecord.customer_id == self.customer_id)
                    .order_by(ConsentRecord.id)
                )
            )
            session.expunge_all()
            return rows


@pytest.fixture
def shop(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shop]:
    keys = "k2:consent-secret-2,k1:consent-secret-1"
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        unsubscribe_keys=keys,
        postmark_webhook_username="hooks",
        postmark_webhook_password="pw",
    )
    # The command line reads the same configuration from the environment.
    monkeypatch.setenv("CROSSSELL_DATABASE_URL", database_url)
    monkeypatch.setenv("CROSSSELL_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CROSSSELL_UNSUBSCRIBE_KEYS", keys)
    get_settings.cache_clear()
    runtime = Runtime(settings, clock=ShiftedClock(TUESDAY_MORNING))
    seed_catalog(settings, TUESDAY_MORNING)
    with TestClient(create_app(runtime)) as client:
        # A customer with consent whose first purchase is planned (outside the holdout).
        for suffix in range(50):
            customer_id = f"C-consent-{suffix}"
            candidate = Shop(runtime, client, customer_id, f"{customer_id.lower()}@example.ro")
            block = customer_block(customer_id)
            document = purchase(at=T0, customer=block)
            with transaction(database_url) as session:
                ingest_event(
                    session,
                    validate_event(document),
                    runtime.rules.current(),
                    runtime.policy,
                    T0 + timedelta(minutes=30),
                )
                status = session.scalars(
                    select(Send.status).where(Send.event_id == document["id"])
                ).one()
            if status == "planned":
                break
        else:
            raise AssertionError("no customer outside the holdout in 50 tries")
        yield candidate
    runtime.close()
    get_settings.cache_clear()


class _Forms(HTMLParser):
    """The forms of a page: (action, method, {name: value} of its hidden inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append((values.get("action", ""), values.get("method", "get"), {}))
        elif tag == "input" and values.get("type") == "hidden" and self.forms:
            self.forms[-1][2][values["name"]] = values.get("value", "")


# --- the channels --------------------------------------------------------------------------


def one_click(shop: Shop) -> None:
    # RFC 8058 §3.2: the mailbox provider POSTs exactly this body to the https URI.
    response = shop.client.post(
        f"/u/{shop.token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 200


def confirmation_page(shop: Shop) -> None:
    page = shop.client.get(f"/u/{shop.token}")
    parser = _Forms()
    parser.feed(page.text)
    action, method, fields = parser.forms[0]
    assert method == "post"
    assert shop.client.post(action, data=fields).status_code == 200


def preference_page(shop: Shop) -> None:
    page = shop.client.get(f"/preferences/{shop.token}")
    parser = _Forms()
    parser.feed(page.text)
    everything = next(fields for _, _, fields in parser.forms if fields.get("all"))
    response = shop.client.post(f"/preferences/{shop.token}", data=everything)
    assert response.status_code == 200 and 'data-page="unsubscribed"' in response.text


def mailto(shop: Shop) -> None:
    runtime = shop.runtime
    body = mailto_for(runtime.settings, runtime.unsubscribe_keys, shop.customer_id)
    uri = urlsplit("mailto:" + body)
    message = EmailMessage()
    message["From"] = shop.address
    message["To"] = uri.path
    message["Subject"] = parse_qs(uri.query)["subject"][0]
    message.set_content("Please unsubscribe me.")
    with running_receiver(shop.runtime) as (host, port), smtplib.SMTP(host, port) as client:
        assert client.send_message(message) == {}


def complaint_webhook(shop: Shop) -> None:
    record = {
        "RecordType": "SpamComplaint",
        "ID": 4242,
        "Type": "SpamComplaint",
        "TypeCode": 512,
        "MessageID": "00000000-0000-0000-0000-000000000000",
        "Email": shop.address.upper(),
        "BouncedAt": datetime.now(UTC).isoformat(),
        "Description": "The subscriber explicitly marked this message as spam.",
    }
    response = shop.client.post("/webhooks/postmark", json=record, auth=("hooks", "pw"))
    assert response.status_code == 200 and response.json()["applied"] == 1


def provider_unsubscribe_webhook(shop: Shop) -> None:
    # The provider handled an unsubscribe itself (its own link or List-Unsubscribe).
    record = {
        "RecordType": "SubscriptionChange",
        "MessageStream": "outbound",
        "Recipient": shop.address,
        "SuppressSending": True,
        "SuppressionReason": "ManualSuppression",
        "ChangedAt": datetime.now(UTC).isoformat(),
    }
    response = shop.client.post("/webhooks/postmark", json=record, auth=("hooks", "pw"))
    assert response.status_code == 200 and response.json()["applied"] == 1


def suppressions_add(shop: Shop) -> None:
    result = CliRunner().invoke(main, ["suppressions", "add", shop.address.title()])
    assert result.exit_code == 0, result.output


CHANNELS: dict[str, tuple[Callable[[Shop], None], str]] = {
    "one-click": (one_click, "one-click"),
    "confirmation-page": (confirmation_page, "confirmation-page"),
    "preference-page": (preference_page, "preference-page"),
    "mailto": (mailto, "mailto"),
    "complaint-webhook": (complaint_webhook, "webhook:postmark"),
    "provider-unsubscribe-webhook": (provider_unsubscribe_webhook, "webhook:postmark"),
    "suppressions-add": (suppressions_add, "cli"),
}


@pytest.mark.parametrize(
    ("reason", "withdraws"),
    [("manual", True), ("unsubscribe", True), ("complaint", True), ("hard_bounce", False)],
)
def test_suppressions_add_withdraws_consent_unless_the_address_bounced(
    shop: Shop, reason: str, withdraws: bool
) -> None:
    result = CliRunner().invoke(main, ["suppressions", "add", shop.address, "--reason", reason])
    assert result.exit_code == 0, result.output
    assert [(r.source, r.granted) for r in shop.records()] == (
        [("cli", False)] if withdraws else []
    )
    assert shop.customer().email_marketing is (not withdraws)


@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_an_opt_out_outlives_address_changes_and_stale_crm_opt_ins(
    shop: Shop, channel: str
) -> None:
    opt_out, source = CHANNELS[channel]
    before = datetime.now(UTC)
    opt_out(shop)
    after = datetime.now(UTC)

    (record,) = shop.records()
    assert (record.scope, record.granted, record.source) == (EMAIL_MARKETING, False, source)
    assert before - timedelta(seconds=1) <= record.decided_at <= after
    assert record.email == shop.address

    # The CRM's ordinary upsert: a new address and its usual consent flag. Before the
    # consent record this re-subscribed the person at the new, unsuppressed address.
    day = timedelta(days=1)
    moved = shop.ingest(T0 + 15 * day, email=NEW_ADDRESS, consent={"email_marketing": True})
    assert (moved.status, moved.reason) == ("skipped", "no_consent")
    assert shop.customer().email == NEW_ADDRESS
    # An opt-in the customer gave the CRM before opting out here is stale.
    stale = shop.ingest(
        T0 + 16 * day,
        consent={"email_marketing": True, "updated_at": (before - timedelta(hours=1)).isoformat()},
    )
    assert (stale.status, stale.reason) == ("skipped", "no_consent")
    assert shop.customer().email_marketing is False

    # A re-subscription at the CRM after the opt-out wins: email again.
    fresh = shop.ingest(
        T0 + 30 * day,
        consent={"email_marketing": True, "updated_at": (after + timedelta(seconds=1)).isoformat()},
    )
    assert (fresh.status, fresh.reason) == ("planned", None)
    assert shop.records()[-1].source == "crm" and shop.records()[-1].granted is True


def test_a_per_kind_opt_out_outlives_an_address_change(shop: Shop) -> None:
    page = shop.client.post(
        f"/preferences/{shop.token}", data={"kinds": ["upsell", "loyalty", "reengagement"]}
    )
    assert page.status_code == 200
    (record,) = shop.records()
    assert (record.scope, record.granted, record.source) == ("cross_sell", False, "preference-page")
    moved = shop.ingest(
        T0 + timedelta(days=15), email=NEW_ADDRESS, consent={"email_marketing": True}
    )
    assert (moved.status, moved.reason) == ("skipped", "opted_out")
    # Ticking the kind again is the customer's own opt-in, recorded as such.
    shop.client.post(f"/preferences/{shop.token}", data={"kinds": ["cross_sell"]})
    kinds = {(r.scope, r.granted) for r in shop.records()[1:]}
    assert kinds == {
        ("cross_sell", True),
        ("upsell", False),
        ("loyalty", False),
        ("reengagement", False),
    }
    back = shop.ingest(T0 + timedelta(days=30))
    assert (back.status, back.reason) == ("planned", None)


@pytest.mark.parametrize(
    ("offset", "updated_at_given", "cross_sell_back"),
    [
        (None, False, False),  # no updated_at: never overrides
        (timedelta(hours=-1), True, False),  # older than the opt-out
        (timedelta(seconds=1), True, True),  # newer: the customer said yes again
    ],
)
def test_a_crm_per_kind_opt_in_follows_the_same_rule(
    shop: Shop, offset: timedelta | None, updated_at_given: bool, cross_sell_back: bool
) -> None:
    before = datetime.now(UTC)
    shop.client.post(f"/preferences/{shop.token}", data={"kinds": ["upsell", "loyalty"]})
    after = datetime.now(UTC)
    consent: dict[str, object] = {"kinds": {"cross_sell": True, "reengagement": True}}
    if updated_at_given:
        assert offset is not None
        moment = (after if offset > timedelta(0) else before) + offset
        consent["updated_at"] = moment.isoformat()
    send = shop.ingest(T0 + timedelta(days=30), email=NEW_ADDRESS, consent=consent)
    if cross_sell_back:
        assert (send.status, send.reason) == ("planned", None)
        assert shop.customer().opted_out_kinds == []
    else:
        assert (send.status, send.reason) == ("skipped", "opted_out")
        assert shop.customer().opted_out_kinds == ["cross_sell", "reengagement"]
    # Opting out of a kind at the CRM always applies, with or without a time.
    shop.ingest(T0 + timedelta(days=45), consent={"kinds": {"loyalty": False}})
    assert "loyalty" in shop.customer().opted_out_kinds


def test_the_crm_kinds_are_the_campaign_kinds_and_the_pages_kinds() -> None:
    from typing import get_args

    from triggers.campaigns import Campaign
    from triggers.events import CampaignKind
    from worker.web.web import KINDS

    campaign_kinds = set(get_args(Campaign.model_fields["kind"].annotation))
    assert set(get_args(CampaignKind)) == campaign_kinds == set(KINDS)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click"),
        (
            "multipart/form-data; boundary=b0undary",
            b'--b0undary\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
            b"One-Click\r\n--b0undary--\r\n",
        ),
        ("multipart/form-data; boundary=b0undary", b"--b0undary\r\nbroken"),
        (None, b""),
    ],
)
def test_every_one_click_request_unsubscribes_as_one_click(
    shop: Shop, content_type: str | None, body: bytes
) -> None:
    """RFC 8058 §3.1 allows urlencoded or multipart bodies; whatever a mailbox provider
    sends, the request unsubscribes and is recorded as one-click."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = shop.client.post(f"/u/{shop.token}", content=body, headers=headers)
    assert response.status_code == 200
    assert [(r.source, r.granted) for r in shop.records()] == [("one-click", False)]
    assert shop.customer().email_marketing is False


def test_a_repeated_opt_out_changes_nothing_but_is_the_one_that_counts(shop: Shop) -> None:
    one_click(shop)
    first = datetime.now(UTC)
    one_click(shop)
    confirmation_page(shop)
    assert [r.source for r in shop.records()] == ["one-click", "one-click", "confirmation-page"]
    with transaction(shop.url) as session:
        assert len(session.scalars(select(Suppression)).all()) == 1
    # Newer than the first opt-out, older than the repeats: not a re-subscription.
    between = shop.ingest(
        T0 + timedelta(days=30),
        consent={"email_marketing": True, "updated_at": first.isoformat()},
    )
    assert (between.status, between.reason) == ("skipped", "no_consent")


@pytest.mark.parametrize(
    "ahead", [timedelta(minutes=6), timedelta(days=1), timedelta(days=365 * 70)]
)
def test_a_consent_time_in_the_future_never_lifts_an_opt_out(shop: Shop, ahead: timedelta) -> None:
    """A CRM whose clock (or time zone) is off must not undo an unsubscribe: an
    ``updated_at`` beyond the allowed skew is no proof, before or after the opt-out."""
    at = T0 + timedelta(days=30)
    received = at + timedelta(minutes=30)  # Shop.ingest decides half an hour after `at`
    future = {"email_marketing": True, "updated_at": (received + ahead).isoformat()}
    shop.ingest(T0 + timedelta(days=20), consent=future)  # recorded before the opt-out
    one_click(shop)
    again = shop.ingest(at, consent=future)
    assert (again.status, again.reason) == ("skipped", "no_consent")
    assert shop.customer().email_marketing is False


def test_a_crm_opt_out_always_applies_and_its_own_opt_in_undoes_it(shop: Shop) -> None:
    off = shop.ingest(T0 + timedelta(days=15), consent={"email_marketing": False})
    assert (off.status, off.reason) == ("skipped", "no_consent")
    # No crosssell opt-out stands: the CRM may turn its own flag back on.
    on = shop.ingest(T0 + timedelta(days=30), consent={"email_marketing": True})
    assert (on.status, on.reason) == ("planned", None)
    assert [(r.source, r.granted) for r in shop.records()] == [("crm", False), ("crm", True)]


def test_a_newer_re_subscription_lifts_the_unsubscribe_suppression_only(shop: Shop) -> None:
    one_click(shop)
    after = datetime.now(UTC)
    fresh = shop.ingest(
        T0 + timedelta(days=30),
        consent={"email_marketing": True, "updated_at": (after + timedelta(minutes=1)).isoformat()},
    )
    # Same address: its unsubscribe suppression went with the opt-out it recorded.
    assert (fresh.status, fresh.reason) == ("planned", None)
    with transaction(shop.url) as session:
        session.add(
            Suppression(email=shop.address, reason="complaint", source="test", created_at=after)
        )
    withdraw = shop.client.post(f"/u/{shop.token}", data={"List-Unsubscribe": "One-Click"})
    assert withdraw.status_code == 200
    later = datetime.now(UTC) + timedelta(minutes=5)
    again = shop.ingest(
        T0 + timedelta(days=45),
        consent={"email_marketing": True, "updated_at": later.isoformat()},
    )
    assert (again.status, again.reason) == ("skipped", "suppressed")


# --- the rule as a property --------------------------------------------------------------

# One step of a history: a crosssell opt-out, or a CRM upsert with its consent flag and
# an optional updated_at, at minutes from a fixed origin.
Step = tuple[str, bool, int | None]
ORIGIN = datetime(2026, 6, 1, tzinfo=UTC)
_customer_numbers = itertools.count()
SKEW_MINUTES = 5  # docs/events.md: "up to 5 minutes later than the moment crosssell receives"

steps = st.lists(
    st.one_of(
        st.tuples(st.just("optout"), st.just(False), st.none()),
        st.tuples(st.just("crm"), st.booleans(), st.one_of(st.none(), st.integers(0, 40))),
    ),
    min_size=1,
    max_size=8,
)


def reference(history: list[Step], clock: list[int]) -> bool | None:
    """The documented rule, read literally: walk the history keeping the time of the
    opt-out that stands (crosssell opt-outs only) and the effective value."""
    effective: bool | None = True
    standing: int | None = None
    for (kind, value, updated), now in zip(history, clock, strict=True):
        if kind == "optout":
            standing = now
            effective = False
        elif not value:
            effective = False
        elif standing is None:
            effective = True
        elif updated is not None and updated <= now + SKEW_MINUTES and updated > standing:
            # a time more than the allowed skew ahead of the clock is no proof
            standing = None
            effective = True
    return effective


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(history=steps, data=st.data())
def test_effective_consent_follows_the_documented_rule(
    sqlite_url: str, history: list[Step], data: st.DataObject
) -> None:
    # Each step happens at a later minute than the one before (a strictly rising clock).
    gaps = data.draw(st.lists(st.integers(1, 10), min_size=len(history), max_size=len(history)))
    clock = [sum(gaps[: i + 1]) for i in range(len(history))]
    customer_id = f"C-prop-{next(_customer_numbers)}"  # a fresh customer per example
    minutes = timedelta(minutes=1)
    with transaction(sqlite_url) as session:
        upsert_customer(
            session,
            validate_event(purchase(customer=customer_block(customer_id))).customer,
            ORIGIN,
        )
    for (kind, value, updated), now in zip(history, clock, strict=True):
        at = ORIGIN + now * minutes
        with transaction(sqlite_url) as session:
            if kind == "optout":
                customer = session.get(Customer, customer_id)
                assert customer is not None
                withdraw_consent(session, customer, "one-click", at)
            else:
                consent: dict[str, object] = {"email_marketing": value}
                if updated is not None:
                    consent["updated_at"] = (ORIGIN + updated * minutes).isoformat()
                block = {"id": customer_id, "consent": consent}
                upsert_customer(session, validate_event(purchase(customer=block)).customer, at)
    with transaction(sqlite_url) as session:
        customer = session.get(Customer, customer_id)
        assert customer is not None
        assert customer.email_marketing is reference(history, clock)


# --- the migration -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own (this test moves the schema down and up)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    from tests.support.services import fresh_postgres_database

    with fresh_postgres_database() as url:
        yield url


def test_migration_0006_backfills_standing_opt_outs_only_and_runs_down_and_up(
    empty_database: str,
) -> None:
    from alembic import command
    from sqlalchemy import inspect, text

    from worker.commands.migrate import alembic_config
    from worker.core.db import dispose_engines, engine_for

    config = alembic_config(empty_database)
    command.upgrade(config, "0005")
    unsubscribed_at = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    kinds_at = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    customers = [
        # id, email, email_marketing, opted_out_kinds, updated_at
        ("C-unsub", "Unsub@Example.ro", False, "[]", unsubscribed_at),
        ("C-resub", "resub@example.ro", True, "[]", unsubscribed_at),  # CRM turned it back on
        ("C-bounce", "bounce@example.ro", False, "[]", unsubscribed_at),
        ("C-kinds", "kinds@example.ro", True, '["loyalty", "upsell"]', kinds_at),
        ("C-plain", "plain@example.ro", True, "[]", kinds_at),
    ]
    suppressions = [
        ("unsub@example.ro", "unsubscribe", "one-click"),
        ("resub@example.ro", "unsubscribe", "preferences"),
        ("bounce@example.ro", "hard_bounce", "webhook:ses"),
    ]
    with engine_for(empty_database).begin() as connection:
        for customer_id, email, consent, kinds, at in customers:
            connection.execute(
                text(
                    "INSERT INTO customers (id, email, email_marketing, opted_out_kinds, "
                    "attributes, orders_count, lifetime_spend, categories_bought, skus_owned, "
                    "created_at, updated_at) VALUES (:id, :email, :consent, :kinds, '{}', 0, "
                    "0, '[]', '[]', :at, :at)"
                ),
                {"id": customer_id, "email": email, "consent": consent, "kinds": kinds, "at": at},
            )
        for email, reason, source in suppressions:
            connection.execute(
                text(
                    "INSERT INTO suppressions (email, reason, source, created_at) "
                    "VALUES (:email, :reason, :source, :at)"
                ),
                {"email": email, "reason": reason, "source": source, "at": unsubscribed_at},
            )
    for _ in range(2):  # up, down, and up again
        command.upgrade(config, "head")
        command.check(config)
        with transaction(empty_database) as session:
            rows = session.scalars(select(ConsentRecord).order_by(ConsentRecord.scope)).all()
            found = {(r.customer_id, r.scope, r.granted, r.source, r.decided_at) for r in rows}
            consent = {
                c.id: (c.email_marketing, c.opted_out_kinds)
                for c in session.scalars(select(Customer))
            }
        assert found == {
            ("C-unsub", EMAIL_MARKETING, False, "one-click", unsubscribed_at),
            ("C-kinds", "loyalty", False, "preference-page", kinds_at),
            ("C-kinds", "upsell", False, "preference-page", kinds_at),
        }
        # Effective values are untouched.
        assert consent == {c[0]: (c[2], json.loads(c[3])) for c in customers}
        command.downgrade(config, "0005")
        assert "consent_records" not in inspect(engine_for(empty_database)).get_table_names()
    dispose_engines()
