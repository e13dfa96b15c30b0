"""Offers against a real catalog and order history, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from bench.shop import Shop, ShopSpec, load_shop, make_shop
from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
from tests.support.smtp_sink import SmtpSink
from triggers.campaigns import RecommendedOffer
from triggers.events import validate_event
from triggers.facts import CustomerProfile
from triggers.offers import OfferUnavailable
from worker.commands.demo import seed_catalog
from worker.core.clock import ShiftedClock
from worker.core.db import transaction
from worker.core.models import Product, Send
from worker.intake.ingest import ingest_event
from worker.offers import catalog_import
from worker.offers.catalog import recommended_for
from worker.offers.catalog_import import (
    MAX_LINE_CHARS,
    CatalogError,
    parse_catalog,
    upsert_products,
)
from worker.offers.offer_resolution import resolve_for_send
from worker.offers.recommendations import rebuild_affinities
from worker.outbox.delivery import deliver_send
from worker.outbox.dispatcher import dispatch_once
from worker.process.runtime import Runtime

NOW = datetime(2026, 11, 17, 10, 30, tzinfo=UTC)


@pytest.fixture
def shop(database_url: str) -> Iterator[tuple[str, Shop]]:
    synthetic = make_shop(ShopSpec())
    load_shop(database_url, synthetic, NOW)
    with transaction(database_url) as session:
        rebuild_affinities(session, NOW, min_support=3, top_k=20)
    yield database_url, synthetic


def test_planted_partners_are_found(shop: tuple[str, Shop]) -> None:
    database_url, synthetic = shop
    planted = synthetic.planted
    skus = synthetic.skus
    with transaction(database_url) as session:
        hits = sum(
            skus[b] in [p.sku for p in recommended_for(session, [skus[a]], limit=3)]
            for a, b in planted
        )
    assert hits >= 0.9 * len(planted), f"{hits} of {len(planted)} planted partners in top 3"


def test_recommendations_are_not_just_bestsellers(shop: tuple[str, Shop]) -> None:
    database_url, synthetic = shop
    skus = synthetic.skus
    bestsellers = set(skus[:5])  # popularity follows the product index (Zipf)
    a, _ = synthetic.planted[0]
    with transaction(database_url) as session:
        top = [p.sku for p in recommended_for(session, [skus[a]], limit=3)]
    assert not set(top) <= bestsellers


def _recommend(
    session: object, offer: RecommendedOffer, sku: str, category: str, owned: frozenset[str]
) -> list[str]:
    event = validate_event(purchase(sku=sku, category=category))
    profile = CustomerProfile("C-1", skus_owned=owned | {sku})
    resolved = resolve_for_send(session, offer, event, profile, {})  # type: ignore[arg-type]
    return [item.sku for item in resolved.items]


def test_never_recommends_owned_or_out_of_stock(shop: tuple[str, Shop]) -> None:
    database_url, synthetic = shop
    skus = synthetic.skus
    offer = RecommendedOffer(type="recommended", max_items=5)
    with transaction(database_url) as session:
        for a, b in synthetic.planted[:10]:
            category = synthetic.sku_category(a)
            offered = _recommend(session, offer, skus[a], category, frozenset({skus[b]}))
            assert skus[b] not in offered and skus[a] not in offered
            stock = {
                sku: flag for sku, flag in session.execute(select(Product.sku, Product.in_stock))
            }
            assert all(stock[sku] for sku in offered)
        a, b = synthetic.planted[10]
        session.execute(update(Product).where(Product.sku == skus[b]).values(in_stock=False))
        offered = _recommend(session, offer, skus[a], synthetic.sku_category(a), frozenset())
        assert skus[b] not in offered


def test_fallback_to_bestsellers_when_nothing_is_recommended(shop: tuple[str, Shop]) -> None:
    database_url, _ = shop
    offer = RecommendedOffer(type="recommended", fallback=["bestsellers"], max_items=2)
    with transaction(database_url) as session:
        event = validate_event(purchase(sku="NEVER-SOLD", category="cat-000"))
        profile = CustomerProfile("C-1")
        resolved = resolve_for_send(session, offer, event, profile, {"cat-000": ["cat-001"]})
    assert resolved.strategy == "bestsellers"
    assert [item.category for item in resolved.items] == ["cat-001", "cat-001"]
    with transaction(database_url) as session, pytest.raises(OfferUnavailable):
        resolve_for_send(session, RecommendedOffer(type="recommended"), event, profile, {})


# --- catalog import -------------------------------------------------------------------

CSV_GOOD = """sku,name,category,price,currency,url,in_stock,brand,line,tier
CAM-1,Camera One,cameras,499.00,EUR,https://shop.example/cam-1,true,Acme,cam,1
CAM-2,Camera Two,cameras,799.50,EUR,,false,Acme,cam,2
"""


def test_csv_import_upserts_by_sku(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(CSV_GOOD)
    with transaction(database_url) as session:
        upsert_products(session, parse_catalog(path), NOW)
    path.write_text(CSV_GOOD.replace("799.50", "749.00"))
    with transaction(database_url) as session:
        upsert_products(session, parse_catalog(path), NOW)
        rows = {p.sku: p for p in session.scalars(select(Product))}
    assert set(rows) == {"CAM-1", "CAM-2"}
    assert rows["CAM-2"].price == Decimal("749.00") and rows["CAM-2"].in_stock is False
    assert rows["CAM-1"].tier == 1 and rows["CAM-1"].line == "cam"


def test_jsonl_import(tmp_path: Path, database_url: str) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_text(
        '{"sku": "T-1", "name": "Tripod", "category": "tripods", "price": "79.00", '
        '"currency": "EUR", "in_stock": true}\n\n'
        '{"sku": "T-2", "name": "Mini tripod", "category": "tripods", "price": 29, '
        '"currency": "EUR"}\n'
    )
    with transaction(database_url) as session:
        assert upsert_products(session, parse_catalog(path), NOW) == 2
        prices = {sku: price for sku, price in session.execute(select(Product.sku, Product.price))}
    assert prices == {"T-1": Decimal("79.00"), "T-2": Decimal("29")}


def test_every_bad_row_is_reported_with_its_line_and_nothing_is_imported(
    tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(
        CSV_GOOD
        + "CAM-3,Camera Three,cameras,-5,EUR,,true,,,\n"  # line 4: negative price
        + "CAM-4,Camera Four,cameras,10.00,euro,,maybe,,,\n"  # line 5: currency, in_stock
        + "CAM-1,Camera One again,cameras,1.00,EUR,,true,,,\n"  # line 6: duplicate sku
    )
    with pytest.raises(CatalogError) as caught:
        parse_catalog(path)
    found = [(error.line, error.column) for error in caught.value.errors]
    assert found == [(4, "price"), (5, "currency"), (5, "in_stock"), (6, "sku")]
    assert "already on line 2" in caught.value.errors[-1].message
    with transaction(database_url) as session:
        assert session.scalars(select(Product)).all() == []


def test_unknown_and_missing_columns_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("sku,name,price,currency,colour\nX,Y,1,EUR,red\n")
    with pytest.raises(CatalogError) as caught:
        parse_catalog(path)
    (error,) = caught.value.errors
    assert error.line == 1
    assert "unknown column 'colour'" in error.message
    assert "missing column 'category'" in error.message


# --- import file limits ------------------------------------------------------------------

JSONL_ROW = (
    '{{"sku": "J-{n}", "name": "Item {n}", "category": "c", "price": "1.00", "currency": "EUR"}}\n'
)
CSV_ROW = "C-{n},Item {n},c,1.00,EUR,,true,,,\n"
CSV_HEADER = CSV_GOOD.splitlines(keepends=True)[0]


def _errors(path: Path) -> list[tuple[int, str]]:
    # CPU time of this process: a quadratic parse of the long lines would burn it, while
    # wall time also counts whatever else a loaded machine runs.
    started = time.process_time()
    with pytest.raises(CatalogError) as caught:
        parse_catalog(path)
    assert time.process_time() - started < 2
    return [(error.line, error.column) for error in caught.value.errors]


@settings(max_examples=30, deadline=None, database=None)
@given(
    rows=st.integers(1, 30),
    long_at=st.sets(st.integers(0, 29), min_size=1, max_size=3),
    bad_at=st.sets(st.integers(0, 29), max_size=3),
    jsonl=st.booleans(),
)
def test_over_long_lines_are_reported_and_the_other_lines_keep_their_numbers(
    tmp_path_factory: pytest.TempPathFactory,
    rows: int,
    long_at: set[int],
    bad_at: set[int],
    jsonl: bool,
) -> None:
    long_at = {n for n in long_at if n < rows} or {0}
    bad_at = {n for n in bad_at if n < rows} - long_at
    template = JSONL_ROW if jsonl else CSV_ROW
    lines = [] if jsonl else [CSV_HEADER]
    for n in range(rows):
        line = template.format(n=n)
        if n in bad_at:
            line = line.replace("EUR", "euro")
        if n in long_at:
            line = line.replace("Item", "I" + "x" * MAX_LINE_CHARS)
        lines.append(line)
    path = tmp_path_factory.mktemp("catalog") / ("catalog.jsonl" if jsonl else "catalog.csv")
    path.write_text("".join(lines), encoding="utf-8")
    first = 1 if jsonl else 2  # the line number of row 0
    expected = sorted(
        [(first + n, "line") for n in long_at] + [(first + n, "currency") for n in bad_at]
    )
    assert sorted(_errors(path)) == expected


def test_an_unclosed_quote_is_reported_where_it_opened(tmp_path: Path) -> None:
    """The quote swallows nothing: it is an error on its own line, however many lines
    follow, and the lines after it are read as rows of their own."""
    opened = "Unclosed,c,1.00,EUR,,,,,\n"
    following = "".join(CSV_ROW.format(n=n) for n in range(20_000))
    path = tmp_path / "catalog.csv"
    path.write_text(CSV_HEADER + 'Q-1,"' + opened + following, encoding="utf-8")
    assert _errors(path) == [(2, "csv")]


@pytest.mark.parametrize(
    "text",
    [
        '{"sku": ' + "[" * 5_000 + "]" * 5_000 + "}\n",  # nested past the recursion limit
        '{"sku": "A", "tier": ' + "9" * 5000 + "}\n",  # past Python's int digits limit
    ],
    ids=["json-deep", "json-huge-int"],
)
def test_json_lines_python_cannot_parse_are_errors_not_crashes(tmp_path: Path, text: str) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_text(JSONL_ROW.format(n=1) + text, encoding="utf-8")
    assert _errors(path) == [(2, "json")]


def test_bytes_that_are_not_utf8_are_reported_at_their_line(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes((CSV_GOOD + "BAD-1,Caf\xe9,c,1.00,EUR,,,,,\n").encode("latin-1"))
    assert _errors(path) == [(4, "file")]


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(CSV_GOOD)
    monkeypatch.setattr(catalog_import, "MAX_FILE_BYTES", path.stat().st_size - 1)
    assert _errors(path) == [(1, "file")]
    monkeypatch.setattr(catalog_import, "MAX_FILE_BYTES", path.stat().st_size)
    assert [row.sku for row in parse_catalog(path)] == ["CAM-1", "CAM-2"]


def test_reporting_stops_after_max_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_import, "MAX_ERRORS", 5)
    path = tmp_path / "catalog.csv"
    path.write_text(CSV_HEADER + "".join(f"B-{n},x,c,-1,EUR,,,,,\n" for n in range(50)))
    errors = _errors(path)
    assert errors == [(line, "price") for line in range(2, 7)] + [(7, "file")]


# --- coupons and the send-time check ---------------------------------------------------

COUPON_CAMPAIGN = """\
id: camera-kit
name: Camera kit with a coupon
kind: cross_sell
trigger:
  event: purchase
  where: {field: event.categories, op: contains, value: cameras}
offer:
  type: complementary
  categories: [memory-cards, tripods]
  max_items: 2
  coupon: {prefix: KIT, discount_percent: 10, expires_after: 14d}
schedule: {delay: 0m}
experiment:
  variants:
    - {id: A, template: coupon_kit}
sender: {name: "Foto Ștefan", address: foto@shop.example, reply_to: help@shop.example}
"""


def _coupon_runtime(tmp_path: Path, database_url: str, port: int) -> Runtime:
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "camera-kit.yaml").write_text(COUPON_CAMPAIGN)
    templates = tmp_path / "templates"
    import shutil

    from worker.core.settings import PROJECT_ROOT

    shutil.copytree(PROJECT_ROOT / "templates", templates)
    kit = templates / "coupon_kit"
    kit.mkdir()
    (kit / "subject.txt").write_text("Your kit, {{ customer.first_name }}")
    (kit / "body.html").write_text(
        "<p>{% for item in offer['items'] %}{{ item.name }} {{ item.price_text }};"
        "{% endfor %} code {{ coupon.code }} until {{ coupon.expires_text }}</p>"
    )
    (kit / "body.txt").write_text(
        "{% for item in offer['items'] %}{{ item.name }} {{ item.price_text }};{% endfor %}"
        " code {{ coupon.code }} until {{ coupon.expires_text }}"
    )
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        campaigns_dir=campaigns,
        templates_dir=templates,
        email_provider="smtp",
        smtp_port=port,
        quiet_hours="off",
    )
    seed_catalog(settings, NOW)
    return Runtime(settings, clock=ShiftedClock(TUESDAY_MORNING))


def test_coupon_is_stable_across_retries_and_prices_are_checked_at_send_time(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    runtime = _coupon_runtime(tmp_path, database_url, smtp_sink.port)
    try:
        for attempt in range(20):  # a customer outside the 0% holdout: any will do
            event = purchase(
                customer=customer_block(f"C-kit-{attempt}"),
                sku="CAM-MIRRORLESS",
                category="cameras",
                at=TUESDAY_MORNING - timedelta(minutes=5),
            )
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
                break
        # Between planning and sending: a card sells out, a tripod gets cheaper.
        with transaction(database_url) as session:
            session.execute(
                update(Product).where(Product.sku == "MEM-SD128").values(in_stock=False)
            )
            session.execute(
                update(Product).where(Product.sku == "TRI-GORILLA").values(price=Decimal("1234.5"))
            )
        address = f"{send.customer_id.lower()}@example.ro"
        smtp_sink.handler.data_faults[address] = ["451 4.3.0 try later"]
        dispatch_once(runtime, lambda ids: None)
        assert deliver_send(runtime, send.id) == "retry"
        with transaction(database_url) as session:
            first = session.get(Send, send.id)
        assert first is not None and first.coupon_code is not None
        assert first.coupon_code.startswith("KIT-")
        runtime.clock = ShiftedClock(first.send_at + timedelta(seconds=1))  # type: ignore[operator]
        dispatch_once(runtime, lambda ids: None)
        assert deliver_send(runtime, send.id) == "sent"
        with transaction(database_url) as session:
            final = session.get(Send, send.id)
        assert final is not None and final.coupon_code == first.coupon_code
        assert final.coupon_expires_at == first.coupon_expires_at
        (message,) = smtp_sink.handler.parsed()
        # The campaign's own sender, not the installation default.
        assert message["From"].addresses[0].display_name == "Foto Ștefan"
        assert message["From"].addresses[0].addr_spec == "foto@shop.example"
        assert message["Reply-To"] == "help@shop.example"
        body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert first.coupon_code in body
        # Sold out after planning (the customer is ro-RO: the Romanian name is shown).
        assert "Card SD de 128 GB" not in body and "SD Card 128 GB" not in body
        assert "1.234,50" in body  # the current price, Romanian format
    finally:
        runtime.close()
