"""Attribution on a real database (SQLite and PostgreSQL): purchases ingested through
``ingest_event``, sends recorded before or after them, reconciliation run again and
again. Expected rows come from the documented rule (docs/measurement.md), restated by
the brute-force reference of the pure tests."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from tests.triggers.builders import campaign_document
from tests.triggers.test_attribution import reference
from triggers.attribution import Purchase, Touch
from triggers.campaigns import Campaign
from triggers.events import validate_event
from triggers.rule_set import RuleSet, compile_campaign
from worker.commands.demo import seed_catalog
from worker.core.db import dispose_engines, transaction
from worker.core.models import ActivityOutbox, Conversion, Customer, Send, SendOffer
from worker.core.settings import Settings
from worker.decide.attribution import AttributionConfig, reconcile
from worker.intake.ingest import ingest_event

T = TUESDAY_MORNING
WEEK = timedelta(days=7)


def _campaign(campaign_id: str, **extra: Any) -> Any:
    document = campaign_document(campaign_id, event="anniversary", **extra.pop("options", {}))
    document.update(extra)
    return compile_campaign(Campaign.model_validate(document), f"{campaign_id}.yaml", {})


RULES = RuleSet(
    (
        _campaign("alpha"),
        _campaign("beta"),
        _campaign("gamma"),
        _campaign("brief", attribution_window="2d"),
    )
)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Iterator[Settings]:
    yield make_settings(tmp_path, database_url=database_url)
    dispose_engines()


def _config() -> AttributionConfig:
    return AttributionConfig(WEEK, {})


def _customer(url: str, customer_id: str = "C-1001") -> None:
    with transaction(url) as session:
        if session.get(Customer, customer_id) is None:
            session.add(Customer(id=customer_id, attributes={}, created_at=T, updated_at=T))


_SENDS = iter(range(1, 10**6))


def _send(
    url: str,
    campaign: str,
    at: Any,
    status: str = "sent",
    offered: tuple[str, ...] = (),
    customer_id: str = "C-1001",
    variant: str = "A",
) -> int:
    _customer(url, customer_id)
    with transaction(url) as session:
        send = Send(
            campaign_id=campaign,
            kind="cross_sell",
            variant=variant,
            template="accessories",
            customer_id=customer_id,
            event_id=f"evt-trigger-{next(_SENDS)}",
            status=status,
            reason="holdout" if status == "held_out" else None,
            dedupe_key=f"key-{next(_SENDS)}",
            send_at=at,
            sent_at=at if status == "sent" else None,
            attempts=0,
            created_at=at,
            updated_at=at,
        )
        session.add(send)
        session.flush()
        session.add(SendOffer(send_id=send.id, skus=list(offered), resolved_at=at))
        return send.id


def _ingest(settings: Settings, document: dict[str, Any]) -> bool:
    event = validate_event(document)
    with transaction(settings.resolved_database_url) as session:
        result = ingest_event(session, event, RULES, settings.policy(), T + timedelta(days=30))
    return result.duplicate


def _rows(url: str) -> list[tuple[str, str, int, str, str, bool, Decimal, str]]:
    with transaction(url) as session:
        return [
            (r.order_id, r.campaign_id, r.send_id, r.arm, r.kind, r.credited, r.revenue, r.currency)
            for r in session.scalars(
                select(Conversion).order_by(Conversion.order_id, Conversion.campaign_id)
            )
        ]


def _reconcile(url: str) -> int:
    with transaction(url) as session:
        return reconcile(session, RULES, _config(), T + timedelta(days=30))


def test_a_redelivered_purchase_is_attributed_once(settings: Settings) -> None:
    url = settings.resolved_database_url
    send = _send(url, "alpha", T - timedelta(days=1), offered=("LAP-14-PRO",))
    event = purchase("evt-buy-1", at=T, order_id="O-1", price="999.00")
    assert _ingest(settings, event) is False
    assert _ingest(settings, event) is True  # the same event again
    assert _ingest(settings, {**event, "id": "evt-buy-1-again"}) is False  # same order, new id
    _reconcile(url)
    _reconcile(url)
    assert _rows(url) == [
        ("O-1", "alpha", send, "sent", "direct", True, Decimal("999.00"), "EUR"),
    ]
    # The CRM hears of it once: one ``converted`` activity, ids and amounts only.
    with transaction(url) as session:
        activity = session.scalars(
            select(ActivityOutbox).where(ActivityOutbox.type == "converted")
        ).all()
    assert [(a.customer_id, a.data["order_id"], a.data["campaign_id"]) for a in activity] == [
        ("C-1001", "O-1", "alpha")
    ]
    assert activity[0].data["revenue"] == "999.00" and activity[0].data["kind"] == "direct"


def test_a_purchase_in_several_windows_counts_for_each_and_is_credited_once(
    settings: Settings,
) -> None:
    url = settings.resolved_database_url
    alpha = _send(url, "alpha", T - timedelta(days=3))
    beta = _send(url, "beta", T - timedelta(days=1), offered=("LAP-14-PRO",))
    gamma = _send(url, "gamma", T - timedelta(hours=2), status="held_out")
    _ingest(settings, purchase("evt-buy-2", at=T, order_id="O-2", price="50.00"))
    assert _rows(url) == [
        ("O-2", "alpha", alpha, "sent", "influenced", False, Decimal("50.00"), "EUR"),
        ("O-2", "beta", beta, "sent", "direct", True, Decimal("50.00"), "EUR"),
        ("O-2", "gamma", gamma, "held_out", "influenced", False, Decimal("50.00"), "EUR"),
    ]


def test_a_send_recorded_after_the_purchase_is_attributed_by_reconciliation(
    settings: Settings,
) -> None:
    url = settings.resolved_database_url
    _ingest(settings, purchase("evt-buy-3", at=T, order_id="O-3", price="10.00"))
    assert _rows(url) == []
    late = _send(url, "alpha", T - timedelta(hours=5))  # the email was recorded later
    _reconcile(url)
    assert _rows(url) == [
        ("O-3", "alpha", late, "sent", "influenced", True, Decimal("10.00"), "EUR")
    ]
    later = _send(url, "beta", T - timedelta(hours=1))
    _reconcile(url)
    _reconcile(url)
    assert _rows(url) == [
        ("O-3", "alpha", late, "sent", "influenced", False, Decimal("10.00"), "EUR"),
        ("O-3", "beta", later, "sent", "influenced", True, Decimal("10.00"), "EUR"),
    ]


def test_a_late_event_for_a_purchase_made_before_the_email_is_not_a_conversion(
    settings: Settings,
) -> None:
    url = settings.resolved_database_url
    _send(url, "alpha", T)
    _ingest(settings, purchase("evt-buy-4", at=T - timedelta(minutes=1), order_id="O-4"))
    _reconcile(url)
    assert _rows(url) == []


@pytest.mark.parametrize(
    ("sent_before", "counted"),
    [(timedelta(days=1), True), (timedelta(days=2), True), (timedelta(days=2, seconds=1), False)],
)
def test_a_campaigns_own_window_replaces_the_default(
    settings: Settings, sent_before: timedelta, counted: bool
) -> None:
    url = settings.resolved_database_url
    _send(url, "brief", T - sent_before)
    _ingest(settings, purchase("evt-buy-5", at=T, order_id="O-5"))
    assert [row[1] for row in _rows(url)] == (["brief"] if counted else [])


def test_the_database_refuses_a_second_row_for_the_same_order_and_campaign(
    settings: Settings,
) -> None:
    url = settings.resolved_database_url
    send = _send(url, "alpha", T - timedelta(days=1))
    _ingest(settings, purchase("evt-buy-6", at=T, order_id="O-6"))
    with pytest.raises(IntegrityError), transaction(url) as session:
        session.add(
            Conversion(
                order_id="O-6",
                campaign_id="alpha",
                send_id=send,
                variant="A",
                arm="sent",
                kind="influenced",
                credited=False,
                revenue=Decimal(1),
                currency="EUR",
                ordered_at=T,
                touched_at=T,
                attributed_at=T,
            )
        )


@pytest.mark.parametrize("seed", [7, 11, 23])
def test_random_histories_in_any_order_end_as_the_rule_says(settings: Settings, seed: int) -> None:
    """Sends and purchases recorded in a shuffled order, reconciliation at the end:
    every order's rows equal the reference applied to all touches."""
    url = settings.resolved_database_url
    rng = random.Random(seed)
    steps: list[tuple[str, Any]] = []
    for index in range(12):
        at = T + timedelta(hours=rng.randint(0, 24 * 12))
        steps.append(
            (
                "send",
                (
                    rng.choice(["alpha", "beta", "brief"]),
                    at,
                    rng.choice(["sent", "sent", "held_out"]),
                    tuple(rng.sample(["S1", "S2", "S3"], rng.randint(0, 2))),
                ),
            )
        )
        if index % 2 == 0:
            buy_at = T + timedelta(hours=rng.randint(0, 24 * 14))
            steps.append(("buy", (f"O-R{index}", buy_at, rng.choice(["S1", "S2", "S9"]))))
    rng.shuffle(steps)
    touches: list[Touch] = []
    purchases: list[Purchase] = []
    for kind, data in steps:
        if kind == "send":
            campaign, at, status, offered = data
            send_id = _send(url, campaign, at, status=status, offered=offered)
            window = timedelta(days=2) if campaign == "brief" else WEEK
            group = "held_out" if status == "held_out" else "sent"
            touches.append(Touch(send_id, campaign, "A", group, at, window, frozenset(offered)))  # type: ignore[arg-type]
        else:
            order_id, at, sku = data
            document = purchase(f"evt-{order_id}", at=at, order_id=order_id, sku=sku)
            _ingest(settings, document)
            _ingest(settings, document)  # redelivered
            purchases.append(Purchase(order_id, at, frozenset({sku})))
    _reconcile(url)
    _reconcile(url)
    expected = sorted(
        (p.order_id, campaign, send_id, kind, credited)
        for p in purchases
        for campaign, (send_id, kind, credited) in reference(p, touches).items()
    )
    found = sorted((r[0], r[1], r[2], r[4], r[5]) for r in _rows(url))
    assert found == expected
    assert expected, "the seed should produce some conversions"


def test_ingest_records_the_same_offer_for_emailed_and_held_out_customers(
    tmp_path: Path, database_url: str
) -> None:
    """Both groups' offers are resolved at planning time, the same way."""
    settings = make_settings(tmp_path, database_url=database_url)
    seed_catalog(settings, T)
    document = campaign_document(
        "laptops",
        where={"field": "event.categories", "op": "contains_any", "value": ["laptops"]},
        offer={"type": "complementary", "max_items": 3},
        holdout_percent=50,
    )
    compiled = compile_campaign(Campaign.model_validate(document), "laptops.yaml", {})
    rules = RuleSet((compiled,))
    held, emailed = None, None
    for number in range(200):
        customer_id = f"C-{5000 + number}"
        if compiled.assign(customer_id).held_out:
            held = held or customer_id
        else:
            emailed = emailed or customer_id
    assert held and emailed
    for customer_id in (held, emailed):
        event = purchase(
            at=T - timedelta(hours=1),
            customer=customer_block(customer_id),
        )
        with transaction(settings.resolved_database_url) as session:
            ingest_event(session, validate_event(event), rules, settings.policy(), T)
    with transaction(settings.resolved_database_url) as session:
        offers = {
            send.status: session.get(SendOffer, send.id)
            for send in session.scalars(select(Send).where(Send.campaign_id == "laptops"))
        }
    dispose_engines()
    assert set(offers) == {"held_out", "planned"}
    held_offer, planned_offer = offers["held_out"], offers["planned"]
    assert held_offer is not None and planned_offer is not None
    assert held_offer.skus and held_offer.skus == planned_offer.skus


def test_an_offer_fault_never_stops_ingest(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in offer resolution is logged and the send recorded without an offer; the
    purchase and its plan are still stored."""
    import worker.decide.attribution

    def broken(*_: object, **__: object) -> object:
        raise ValueError("a catalog row nobody foresaw")

    monkeypatch.setattr(worker.decide.attribution, "choose_offer", broken)
    settings = make_settings(tmp_path, database_url=database_url)
    document = campaign_document(
        "laptops", where={"field": "event.categories", "op": "contains_any", "value": ["laptops"]}
    )
    rules = RuleSet((compile_campaign(Campaign.model_validate(document), "laptops.yaml", {}),))
    with transaction(settings.resolved_database_url) as session:
        event = validate_event(purchase(at=T - timedelta(hours=1)))
        ingest_event(session, event, rules, settings.policy(), T)
    with transaction(settings.resolved_database_url) as session:
        (send,) = session.scalars(select(Send).where(Send.campaign_id == "laptops"))
        offer = session.get(SendOffer, send.id)
        assert offer is not None and (offer.skus, offer.reason) == ([], "offer_error")
    dispose_engines()
