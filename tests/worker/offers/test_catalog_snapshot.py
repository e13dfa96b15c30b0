"""The process's catalog snapshot: the same answers as the SQL reads, a change committed
elsewhere seen by the next batch, one statement per batch however many offers it has.

Runs on SQLite and PostgreSQL (``database_url``). Expected products come from the SQL
reads of :mod:`worker.offers.catalog` or from the rows the test wrote, never from the
snapshot itself.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import delete, event, select, update

from bench.shop import Shop, ShopSpec, load_shop, make_shop
from tests.support.factories import purchase
from triggers.campaigns import ComplementaryOffer, RecommendedOffer, UpgradeOffer
from triggers.events import validate_event
from triggers.facts import CustomerProfile
from triggers.offers import AnyOffer, OfferUnavailable, ResolvedOffer
from worker.core.db import engine_for, transaction
from worker.core.models import CatalogVersion, Product, ProductAffinity, ProductStats
from worker.offers import catalog
from worker.offers.catalog_import import CatalogRow, upsert_products
from worker.offers.catalog_snapshot import (
    MAX_BYTES,
    CatalogReads,
    CatalogSnapshot,
    catalog_version,
    current_snapshot,
)
from worker.offers.offer_resolution import CatalogMemo, choose_offer, localize_offer
from worker.offers.recommendations import rebuild_affinities

NOW = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)


def _row(sku: str, category: str, price: str, **fields: Any) -> CatalogRow:
    return CatalogRow(
        sku=sku,
        name=f"Name {sku}",
        category=category,
        price=Decimal(price),
        currency="EUR",
        **fields,
    )


def _import(url: str, rows: list[CatalogRow]) -> None:
    """What ``crosssell catalog import`` does: one transaction of its own."""
    with transaction(url) as session:
        upsert_products(session, rows, NOW)


@contextmanager
def _statements(url: str) -> Iterator[list[str]]:
    """The SQL statements sent on ``url``'s engine inside the block."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    engine = engine_for(url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _queries(statements: list[str]) -> list[str]:
    """The statements that read or write tables (the transaction's BEGIN left out)."""
    return [s for s in statements if not s.upper().startswith("BEGIN")]


def _offer_skus(url: str, offer: Any, sku: str, category: str) -> list[str]:
    """One batch of one offer, as the delivery task resolves it."""
    event_ = validate_event(purchase(sku=sku, category=category))
    with transaction(url) as session:
        chosen = choose_offer(
            session, offer, event_, CustomerProfile("C-1"), {category: ["cards"]}, CatalogMemo()
        )
    return [item.sku for item in chosen.items]


CAMERAS = [
    _row("CAM-1", "cameras", "499.00", line="cam", tier=1),
    _row("CAM-2", "cameras", "799.00", line="cam", tier=2),
]
CARDS = [
    _row("SD-64", "cards", "19.00", name_i18n={"ro": "Card 64"}),
    _row("SD-128", "cards", "29.00", name_i18n={"ro": "Card 128", "it": "Scheda 128"}),
    _row("SD-256", "cards", "49.00"),
]
COMPLEMENTARY = ComplementaryOffer(type="complementary", max_items=1)


# --- a change committed elsewhere is seen by the next batch -------------------------------


def test_an_import_in_another_transaction_is_seen_by_the_next_batch(database_url: str) -> None:
    _import(database_url, CAMERAS + CARDS)
    assert _offer_skus(database_url, COMPLEMENTARY, "CAM-1", "cameras") == ["SD-64"]
    if database_url.startswith("postgresql"):
        # A batch is open and has read the catalog; an import commits meanwhile. (On
        # SQLite every transaction takes the write lock: the import would wait.)
        with transaction(database_url) as session:
            memo = CatalogMemo()
            before = memo.reads(session).products_in_categories(session, ["cards"])
            _import(database_url, [_row("SD-32", "cards", "9.00")])
            again = memo.reads(session).products_in_categories(session, ["cards"])
            assert {p.sku for p in again} == {p.sku for p in before}
            assert {p.sku for p in before} == {"SD-64", "SD-128", "SD-256"}
            # A read the batch had not made yet sees the import (read committed), as a
            # query of its own would; the snapshot of the older version does not keep it.
            snapshot = memo.reads(session).snapshot
            size = snapshot.size
            found = memo.reads(session).products_by_sku(session, ["SD-32"])
            assert [p.sku for p in found] == ["SD-32"] and snapshot.size == size
    else:
        _import(database_url, [_row("SD-32", "cards", "9.00")])
    # The next batch sees it.
    assert _offer_skus(database_url, COMPLEMENTARY, "CAM-1", "cameras") == ["SD-32"]


def test_stock_and_price_changed_by_hand_are_seen_by_the_next_batch(database_url: str) -> None:
    """Not only the import: any writer of the catalog tables changes the version."""
    _import(database_url, CAMERAS + CARDS)
    assert _offer_skus(database_url, COMPLEMENTARY, "CAM-1", "cameras") == ["SD-64"]
    with transaction(database_url) as session:
        session.execute(update(Product).where(Product.sku == "SD-64").values(in_stock=False))
    assert _offer_skus(database_url, COMPLEMENTARY, "CAM-1", "cameras") == ["SD-128"]
    with transaction(database_url) as session:
        session.execute(update(Product).where(Product.sku == "SD-256").values(price=Decimal(1)))
    assert _offer_skus(database_url, COMPLEMENTARY, "CAM-1", "cameras") == ["SD-256"]


def test_deleted_products_disappear(database_url: str) -> None:
    _import(database_url, CAMERAS + CARDS)
    upgrade = UpgradeOffer(type="upgrade", max_items=1)
    assert _offer_skus(database_url, upgrade, "CAM-1", "cameras") == ["CAM-2"]
    assert _offer_skus(database_url, COMPLEMENTARY, "CAM-1", "cameras") == ["SD-64"]
    with transaction(database_url) as session:
        session.execute(delete(Product).where(Product.sku.in_(["SD-64", "CAM-2"])))
    assert _offer_skus(database_url, COMPLEMENTARY, "CAM-1", "cameras") == ["SD-128"]
    with pytest.raises(OfferUnavailable, match="no_offer"):
        _offer_skus(database_url, upgrade, "CAM-1", "cameras")
    with transaction(database_url) as session:
        reads = CatalogMemo().reads(session)
        assert reads.products_by_sku(session, ["SD-64", "SD-128"]) == catalog.products_by_sku(
            session, ["SD-128"]
        )


def test_a_rebuild_of_the_recommendations_is_seen_by_the_next_batch(database_url: str) -> None:
    _import(database_url, CAMERAS + CARDS)
    offer = RecommendedOffer(type="recommended", max_items=2)
    pairs = [("CAM-1", "SD-128", 0.9), ("CAM-1", "SD-256", 0.5)]
    with transaction(database_url) as session:
        for sku, other, score in pairs:
            session.add(ProductAffinity(sku=sku, other_sku=other, score=score, support=5))
    assert _offer_skus(database_url, offer, "CAM-1", "cameras") == ["SD-128", "SD-256"]
    with transaction(database_url) as session:
        session.execute(update(ProductAffinity).values(score=ProductAffinity.score * -1))
    assert _offer_skus(database_url, offer, "CAM-1", "cameras") == ["SD-256", "SD-128"]


def test_the_version_changes_with_every_write_and_only_then(database_url: str) -> None:
    def version() -> str | None:
        with transaction(database_url) as session:
            return catalog_version(session)

    seen = [version()]
    _import(database_url, CARDS)
    seen.append(version())
    with transaction(database_url) as session:  # reads only
        session.execute(select(Product)).all()
    assert version() == seen[-1]
    stats = ProductStats(sku="SD-128", category="cards", buyers=3, computed_at=NOW)
    pair = ProductAffinity(sku="SD-128", other_sku="SD-256", score=0.5, support=3)
    writes: list[Any] = [
        update(Product).values(in_stock=False),
        delete(Product).where(Product.sku == "SD-64"),
        stats,
        update(ProductStats).values(buyers=4),
        delete(ProductStats),
        pair,
        delete(ProductAffinity),
    ]
    for write in writes:
        with transaction(database_url) as session:
            if isinstance(write, ProductStats | ProductAffinity):
                session.add(write)
            else:
                session.execute(write)
        seen.append(version())
    with pytest.raises(RuntimeError), transaction(database_url) as session:
        session.execute(update(Product).values(in_stock=True))
        raise RuntimeError("rolled back")
    assert version() == seen[-1]
    assert None not in seen and len(set(seen)) == len(seen)


def test_a_transaction_sees_its_own_catalog_writes(database_url: str) -> None:
    """Each of its writes, not only the first (PostgreSQL counts the later ones in a
    transaction-local setting; other sessions see the committed version only)."""
    _import(database_url, CAMERAS + CARDS)
    event_ = validate_event(purchase(sku="CAM-1", category="cameras"))

    def offered(session: Any) -> list[str]:
        chosen = choose_offer(
            session, COMPLEMENTARY, event_, CustomerProfile("C-1"), {"cameras": ["cards"]}
        )
        return [item.sku for item in chosen.items]

    with transaction(database_url) as session:
        versions = [catalog_version(session)]
        assert offered(session) == ["SD-64"]
        for sku, expected in [("SD-64", "SD-128"), ("SD-128", "SD-256")]:
            session.execute(update(Product).where(Product.sku == sku).values(in_stock=False))
            versions.append(catalog_version(session))
            assert offered(session) == [expected]
        if database_url.startswith("postgresql"):
            with transaction(database_url) as other:
                assert catalog_version(other) == versions[0]
    assert len(set(versions)) == 3
    with transaction(database_url) as session:
        assert catalog_version(session) not in versions[:1]
        assert offered(session) == ["SD-256"]


def test_an_emptied_version_table_keeps_nothing_until_the_next_write(database_url: str) -> None:
    _import(database_url, CARDS)
    with transaction(database_url) as session:
        session.execute(delete(CatalogVersion))
    with transaction(database_url) as session:
        snapshot = current_snapshot(session)
        assert snapshot.version is None
        reads = CatalogReads(snapshot)
        assert len(reads.products_in_categories(session, ["cards"])) == 3
        assert snapshot.size == 0
    _import(database_url, [_row("SD-32", "cards", "9.00")])
    with transaction(database_url) as session:
        assert catalog_version(session) is not None
        reads = CatalogReads(current_snapshot(session))
        assert len(reads.products_in_categories(session, ["cards"])) == 4


# --- localized texts ------------------------------------------------------------------------


def test_texts_per_locale_come_with_the_snapshot(database_url: str) -> None:
    _import(database_url, CAMERAS + CARDS)
    offer = ComplementaryOffer(type="complementary", max_items=3)
    event_ = validate_event(purchase(sku="CAM-1", category="cameras"))
    profile = CustomerProfile("C-1")

    def names(locale: str | None) -> tuple[list[str], list[str]]:
        with _statements(database_url) as statements, transaction(database_url) as session:
            memo = CatalogMemo()
            chosen = choose_offer(session, offer, event_, profile, {"cameras": ["cards"]}, memo)
            localized = localize_offer(session, chosen, locale)
        return [item.name for item in localized.items], _queries(statements)

    names(None)  # fills the snapshot
    assert names("ro-RO")[0] == ["Card 64", "Card 128", "Name SD-256"]
    assert names("it_IT")[0] == ["Name SD-64", "Scheda 128", "Name SD-256"]
    assert names("de")[0] == ["Name SD-64", "Name SD-128", "Name SD-256"]
    # Filled: the version check is the batch's only statement.
    assert len(names("ro")[1]) == 1
    _import(database_url, [_row("SD-128", "cards", "29.00", name_i18n={"ro": "Card nou"})])
    assert names("ro-RO")[0] == ["Card 64", "Card nou", "Name SD-256"]
    assert names("it")[0] == ["Name SD-64", "Name SD-128", "Name SD-256"]


def test_items_not_from_the_snapshot_are_looked_up(database_url: str) -> None:
    """An offer made by hand (a preview) still gets the catalog's texts."""
    _import(database_url, CARDS)
    with transaction(database_url) as session:
        CatalogMemo().reads(session).products_by_sku(session, ["SD-128"])  # in the snapshot
        (product,) = catalog.products_by_sku(session, ["SD-128"])  # not its own object
        offer = localize_offer(session, ResolvedOffer("complementary", (product,)), "it-IT")
    assert [item.name for item in offer.items] == ["Scheda 128"]


# --- statements per batch ---------------------------------------------------------------------


@pytest.mark.parametrize("emails", [1, 40])
def test_statements_per_batch_do_not_depend_on_the_number_of_emails(
    database_url: str, emails: int
) -> None:
    _import(database_url, CAMERAS + CARDS + [_row("TRI-1", "tripods", "39.00")])
    offers: list[AnyOffer] = [
        ComplementaryOffer(type="complementary", max_items=2),
        UpgradeOffer(type="upgrade", fallback=["complementary"]),
        RecommendedOffer(type="recommended", fallback=["bestsellers"]),
    ]
    complements = {"cameras": ["cards", "tripods"]}
    cases = [(offer, sku) for offer in offers for sku in ("CAM-1", "CAM-2")]

    def batch(sends: list[tuple[AnyOffer, str]]) -> list[str]:
        with _statements(database_url) as statements, transaction(database_url) as session:
            memo = CatalogMemo()
            for n, (offer, sku) in enumerate(sends):
                event_ = validate_event(purchase(sku=sku, category="cameras"))
                profile = CustomerProfile(f"C-{n}", locale=["ro", "it", None][n % 3])
                try:
                    chosen = choose_offer(session, offer, event_, profile, complements, memo)
                except OfferUnavailable:  # an offer with nothing to show still counts
                    continue
                localize_offer(session, chosen, profile.locale)
        return _queries(statements)

    assert len(batch(cases)) > 1  # the first batch fills the snapshot
    rng = random.Random(emails)
    (statement,) = batch([rng.choice(cases) for _ in range(emails)])
    assert "FROM catalog_version" in statement


# --- the same answers as the SQL reads --------------------------------------------------------


@pytest.fixture
def shop(database_url: str) -> Iterator[tuple[str, Shop]]:
    synthetic = make_shop(ShopSpec(customers=800, products=120, categories=8, planted_pairs=10))
    load_shop(database_url, synthetic, NOW)
    with transaction(database_url) as session:
        rebuild_affinities(session, NOW, min_support=2, top_k=10)
    yield database_url, synthetic


@pytest.mark.parametrize("max_bytes", [MAX_BYTES, 30_000])
def test_snapshot_reads_equal_the_sql_reads(shop: tuple[str, Shop], max_bytes: int) -> None:
    """Also with a bound far below the catalog: the snapshot empties and fills again."""
    url, synthetic = shop
    rng = random.Random(max_bytes)
    with transaction(url) as session:
        snapshot = CatalogSnapshot(catalog_version(session), max_bytes=max_bytes)
        lines = sorted({line for line in synthetic.lines if line})
        for _ in range(60):
            reads = CatalogReads(snapshot)  # a new batch, the same snapshot
            categories = rng.sample(synthetic.categories, rng.randint(1, 3))
            skus = [*rng.sample(synthetic.skus, rng.randint(1, 4)), "NOT-IN-CATALOG"]
            picked = rng.sample(lines, min(len(lines), 2))

            def key(products: list[Any]) -> list[str]:
                return sorted(p.sku for p in products)

            assert key(reads.products_in_categories(session, categories)) == key(
                catalog.products_in_categories(session, categories)
            )
            assert reads.products_by_sku(session, skus) == sorted(
                catalog.products_by_sku(session, skus), key=lambda p: skus.index(p.sku)
            )
            assert key(reads.products_in_lines(session, picked)) == key(
                catalog.products_in_lines(session, picked)
            )
            assert reads.recommended_for(session, skus) == catalog.recommended_for(session, skus)
            assert reads.bestsellers_in(session, categories) == catalog.bestsellers_in(
                session, categories
            )
            assert snapshot.size <= max_bytes
