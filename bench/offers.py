"""Offers at scale on PostgreSQL: recommendation rebuild time and send-time resolution.

    python -m bench.offers                      # 1,000,000 customers, ~10,000,000 lines
    python -m bench.offers --customers 100000   # a quicker look

Creates a scratch database on the local PostgreSQL, loads a synthetic shop (long-tail
popularity, planted co-purchase pairs; see bench/shop.py), then prints:

* the load time (for information) and the size reached;
* the rebuild time of "customers who bought X also bought Y" (target <= 120 s);
* how many planted partners the rebuild puts in the anchor's top 3;
* the median / p95 time to resolve one offer at send time, one offer per catalog check
  (``resolve_for_send``, as a preview does; target median <= 2 ms), next to the raw
  baseline of one primary-key product lookup on the same connection;
* the same offers in batches of ``--batch``, as the deliver task resolves them (one
  catalog version check per batch, ``CatalogMemo``): time per offer and the SQL
  statements per batch, the first batch (which fills the process's catalog snapshot)
  and the others.

The scratch database is dropped at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy import create_engine, text
from sqlalchemy.event import listen, remove
from sqlalchemy.orm import Session

from bench.shop import ShopSpec, load_shop, make_shop
from triggers.campaigns import RecommendedOffer
from triggers.events import validate_event
from triggers.facts import CustomerProfile
from worker.commands.migrate import upgrade
from worker.core.db import dispose_engines, engine_for, transaction
from worker.offers.offer_resolution import (
    CatalogMemo,
    choose_offer,
    localize_offer,
    resolve_for_send,
)
from worker.offers.recommendations import rebuild_affinities

ADMIN_URL = os.environ.get(
    "CROSSSELL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def products_by_key(session: Session, sku: str) -> object:
    """The floor: one round trip for one product row, no SQLAlchemy in between."""
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute("SELECT * FROM products WHERE sku = %s", [sku])
        return cursor.fetchone()
    finally:
        cursor.close()


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _event(sku: str, category: str, customer: str) -> dict[str, object]:
    return {
        "id": f"bench-{uuid.uuid4().hex}",
        "type": "purchase",
        "occurred_at": "2026-11-17T10:00:00+00:00",
        "customer": {"id": customer},
        "data": {
            "order_id": f"B-{uuid.uuid4().hex}",
            "currency": "EUR",
            "total": "10.00",
            "items": [{"sku": sku, "category": category, "unit_price": "10.00"}],
        },
    }


def run(
    customers: int,
    lines_per_customer: float,
    products: int,
    samples: int,
    keep: bool,
    batch: int = 50,
) -> None:
    name = f"crosssell_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        spec = ShopSpec(
            customers=customers,
            products=products,
            categories=max(10, products // 100),
            lines_per_customer=lines_per_customer,
            planted_pairs=200,
        )
        shop = make_shop(spec)
        started = time.perf_counter()
        lines = load_shop(url, shop, datetime.now(UTC))
        with transaction(url) as session:
            session.execute(text("ANALYZE"))
        print(
            f"loaded {customers:,} customers, {products:,} products, {lines:,} order lines "
            f"in {time.perf_counter() - started:.1f} s"
        )

        started = time.perf_counter()
        with transaction(url) as session:
            report = rebuild_affinities(session, datetime.now(UTC), min_support=3, top_k=20)
        rebuild = time.perf_counter() - started
        print(
            f"rebuild: {rebuild:.1f} s (target <= 120 s) — {report.customers:,} customers, "
            f"{report.products:,} products, {report.pairs:,} pairs kept "
            f"(matrix work {report.seconds:.1f} s of it)"
        )

        from worker.offers.catalog import recommended_for

        with transaction(url) as session:
            hits = sum(
                shop.skus[b] in [p.sku for p in recommended_for(session, [shop.skus[a]], limit=3)]
                for a, b in shop.planted
            )
        print(
            f"planted partners in the anchor's top 3: {hits} of {len(shop.planted)} "
            f"({100 * hits / len(shop.planted):.0f}%)"
        )

        rng = random.Random(1)
        offer = RecommendedOffer(type="recommended", max_items=3, fallback=["bestsellers"])
        complements = {
            c: [shop.categories[(i + 1) % len(shop.categories)]]
            for i, c in enumerate(shop.categories)
        }
        resolve_times: list[float] = []
        lookup_times: list[float] = []
        with transaction(url) as session:
            for _ in range(samples):
                index = rng.randrange(len(shop.skus))
                sku, category = shop.skus[index], shop.sku_category(index)
                event = validate_event(_event(sku, category, f"S-{rng.randrange(customers)}"))
                owned = frozenset(shop.skus[rng.randrange(len(shop.skus))] for _ in range(8))
                profile = CustomerProfile(event.customer.id, skus_owned=owned | {sku})
                begin = time.perf_counter_ns()
                resolve_for_send(session, offer, event, profile, complements)
                resolve_times.append((time.perf_counter_ns() - begin) / 1e6)
                begin = time.perf_counter_ns()
                products_by_key(session, sku)
                lookup_times.append((time.perf_counter_ns() - begin) / 1e6)
        print(
            f"resolve one offer at send time ({samples} samples): median "
            f"{statistics.median(resolve_times):.2f} ms, p95 {_percentile(resolve_times, 0.95):.2f}"
            f" ms (target median <= 2 ms)"
        )
        print(
            f"baseline, one product row by primary key on the driver cursor: median "
            f"{statistics.median(lookup_times):.2f} ms"
        )

        statements: list[int] = [0]

        def count(*_args: object) -> None:
            statements[0] += 1

        listen(engine_for(url), "before_cursor_execute", count)
        per_offer: list[float] = []
        per_batch: list[int] = []
        for start in range(0, samples, batch):
            statements[0] = 0
            with transaction(url) as session:
                memo = CatalogMemo()
                begin = time.perf_counter_ns()
                for _ in range(start, min(samples, start + batch)):
                    index = rng.randrange(len(shop.skus))
                    sku, category = shop.skus[index], shop.sku_category(index)
                    event_ = validate_event(_event(sku, category, f"S-{rng.randrange(customers)}"))
                    profile = CustomerProfile(event_.customer.id, skus_owned=frozenset({sku}))
                    chosen = choose_offer(session, offer, event_, profile, complements, memo)
                    localize_offer(session, chosen, "ro-RO")
                count_in_batch = min(samples, start + batch) - start
                per_offer.append((time.perf_counter_ns() - begin) / 1e6 / count_in_batch)
            per_batch.append(statements[0])
        remove(engine_for(url), "before_cursor_execute", count)
        later = per_batch[1:] or per_batch
        print(
            f"resolve in batches of {batch} (one catalog check per batch): median "
            f"{statistics.median(per_offer):.2f} ms per offer; SQL statements per batch: "
            f"{per_batch[0]} in the first, median {statistics.median(later):.0f} after"
        )
    finally:
        dispose_engines()
        if not keep:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        else:
            print(f"kept database {name}")
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--lines-per-customer", type=float, default=10.0)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=50, help="offers per batch")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    run(
        args.customers,
        args.lines_per_customer,
        args.products,
        args.samples,
        args.keep,
        args.batch,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
