"""A realistic synthetic shop: catalog, customers and an order history with a long tail
of popularity and *planted* co-purchase affinities, so a recommender can be checked
against a known truth and benchmarked at any size.

* popularity follows a Zipf law: a few bestsellers, many products rarely bought;
* each planted pair (A, B) has B chosen among ordinary products, not bestsellers, and a
  customer who buys A also buys B with probability ``partner_rate`` (in the same or a
  later order) — exactly what "customers who bought A also bought B" must find;
* some products are out of stock, and products come in lines with tiers for upsells.

Used by the tests (a few thousand customers) and by ``bench/offers.py`` (a million
customers and ten million order lines), loading with COPY on PostgreSQL.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np

from worker.core.db import engine_for

START = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ShopSpec:
    customers: int = 3_000
    products: int = 300
    categories: int = 20
    lines_per_customer: float = 6.0
    planted_pairs: int = 30
    partner_rate: float = 0.6
    out_of_stock_share: float = 0.05
    zipf_exponent: float = 1.1
    seed: int = 7


@dataclass
class Shop:
    spec: ShopSpec
    skus: list[str]
    categories: list[str]
    prices: np.ndarray
    in_stock: np.ndarray
    lines: list[str | None]
    tiers: list[int | None]
    planted: list[tuple[int, int]] = field(default_factory=list)

    def sku_category(self, index: int) -> str:
        return self.categories[index % len(self.categories)]


def make_shop(spec: ShopSpec) -> Shop:
    rng = np.random.default_rng(spec.seed)
    skus = [f"SKU-{n:06d}" for n in range(spec.products)]
    categories = [f"cat-{n:03d}" for n in range(spec.categories)]
    prices = np.round(rng.lognormal(mean=3.5, sigma=1.0, size=spec.products), 2) + 1
    in_stock = rng.random(spec.products) >= spec.out_of_stock_share
    # Lines of three tiers for the first 10% of products: same line, rising price.
    lines: list[str | None] = [None] * spec.products
    tiers: list[int | None] = [None] * spec.products
    for start in range(0, spec.products // 10 - 2, 3):
        for tier in range(3):
            lines[start + tier] = f"line-{start // 3:05d}"
            tiers[start + tier] = tier + 1
            prices[start + tier] = prices[start] * (1 + 0.4 * tier)
    shop = Shop(spec, skus, categories, prices, in_stock, lines, tiers)
    # Planted partners: anchors and partners drawn from the middle of the popularity
    # ranking (never the bestsellers), all distinct and in stock.
    middle = rng.permutation(np.arange(spec.products // 5, spec.products))
    chosen = [int(i) for i in middle if in_stock[i]][: 2 * spec.planted_pairs]
    shop.planted = list(zip(chosen[0::2], chosen[1::2], strict=True))
    return shop


def _popularity(spec: ShopSpec) -> np.ndarray:
    ranks = np.arange(1, spec.products + 1, dtype=np.float64)
    weights: np.ndarray = ranks ** (-spec.zipf_exponent)
    normalised: np.ndarray = weights / weights.sum()
    return normalised


def baskets(shop: Shop, chunk: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(customer index, product index) per order line, in chunks of customers."""
    spec = shop.spec
    rng = np.random.default_rng(spec.seed + 1)
    popularity = _popularity(spec)
    partner_of = dict(shop.planted)
    anchors = np.array([a for a, _ in shop.planted], dtype=np.int64)
    for first in range(0, spec.customers, chunk):
        count = min(chunk, spec.customers - first)
        sizes = np.maximum(1, rng.poisson(spec.lines_per_customer - 1, size=count) + 1)
        customers = np.repeat(np.arange(first, first + count), sizes)
        products = rng.choice(spec.products, size=customers.size, p=popularity)
        # Plant: some customers get an anchor, and with partner_rate its partner too.
        lucky = rng.random(count) < min(0.2, 40 * len(anchors) / max(spec.products, 1))
        anchor_pick = anchors[rng.integers(0, len(anchors), size=count)] if len(anchors) else None
        extra_customers: list[np.ndarray] = []
        extra_products: list[np.ndarray] = []
        if anchor_pick is not None:
            who = np.arange(first, first + count)[lucky]
            what = anchor_pick[lucky]
            extra_customers.append(who)
            extra_products.append(what)
            takes = rng.random(who.size) < spec.partner_rate
            extra_customers.append(who[takes])
            extra_products.append(
                np.array([partner_of[int(a)] for a in what[takes]], dtype=np.int64)
            )
        yield (
            np.concatenate([customers, *extra_customers]),
            np.concatenate([products, *extra_products]),
        )


def _copy(connection: object, table: str, columns: str, rows: Iterator[str]) -> None:
    cursor = connection.cursor()  # type: ignore[attr-defined]
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        buffer = io.StringIO()
        for row in rows:
            buffer.write(row)
            if buffer.tell() > 8_000_000:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
        copy.write(buffer.getvalue())


def load_shop(database_url: str, shop: Shop, now: datetime | None = None) -> int:
    """Write catalog, customers and order history; returns the number of order lines."""
    spec = shop.spec
    now = now or datetime.now(UTC)
    engine = engine_for(database_url)
    product_rows = [
        {
            "sku": sku,
            "name": f"Product {sku}",
            "category": shop.sku_category(i),
            "price": str(Decimal(str(shop.prices[i])).quantize(Decimal("0.01"))),
            "currency": "EUR",
            "in_stock": bool(shop.in_stock[i]),
            "line": shop.lines[i],
            "tier": shop.tiers[i],
            "updated_at": now,
            "url": None,
            "image_url": None,
        }
        for i, sku in enumerate(shop.skus)
    ]
    from sqlalchemy import insert

    from worker.core.models import Customer, Order, OrderLine, Product

    lines_written = 0
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(insert(Product), product_rows)
            raw = connection.connection.driver_connection
            _copy(
                raw,
                "customers",
                "id, email, email_marketing, attributes, orders_count, lifetime_spend, "
                "categories_bought, skus_owned, created_at, updated_at",
                (
                    f"S-{n}\tc{n}@shop.example\tt\t{{}}\t0\t0\t[]\t[]\t{now.isoformat()}\t"
                    f"{now.isoformat()}\n"
                    for n in range(spec.customers)
                ),
            )
            for customers, products in baskets(shop):
                lines_written += customers.size
                _copy(
                    raw,
                    "orders",
                    "id, customer_id, event_id, currency, total, ordered_at",
                    (
                        f"O-{c}-{lines_written}\tS-{c}\tsynthetic\tEUR\t0\t"
                        f"{(START + timedelta(days=int(c) % 700)).isoformat()}\n"
                        for c in np.unique(customers)
                    ),
                )
                _copy(
                    raw,
                    "order_lines",
                    "order_id, sku, category, quantity, unit_price",
                    (
                        f"O-{c}-{lines_written}\t{shop.skus[p]}\t{shop.sku_category(p)}\t1\t"
                        f"{shop.prices[p]:.2f}\n"
                        for c, p in zip(customers, products, strict=True)
                    ),
                )
        return lines_written
    with engine.begin() as connection:
        connection.execute(insert(Product), product_rows)
        connection.execute(
            insert(Customer),
            [
                {
                    "id": f"S-{n}",
                    "email": f"c{n}@shop.example",
                    "email_marketing": True,
                    "attributes": {},
                    "orders_count": 0,
                    "lifetime_spend": Decimal(0),
                    "categories_bought": [],
                    "skus_owned": [],
                    "created_at": now,
                    "updated_at": now,
                }
                for n in range(spec.customers)
            ],
        )
        for customers, products in baskets(shop):
            lines_written += customers.size
            connection.execute(
                insert(Order),
                [
                    {
                        "id": f"O-{c}-{lines_written}",
                        "customer_id": f"S-{c}",
                        "event_id": "synthetic",
                        "currency": "EUR",
                        "total": Decimal(0),
                        "ordered_at": START + timedelta(days=int(c) % 700),
                    }
                    for c in np.unique(customers)
                ],
            )
            connection.execute(
                insert(OrderLine),
                [
                    {
                        "order_id": f"O-{c}-{lines_written}",
                        "sku": shop.skus[p],
                        "category": shop.sku_category(p),
                        "quantity": 1,
                        "unit_price": Decimal(f"{shop.prices[p]:.2f}"),
                    }
                    for c, p in zip(customers, products, strict=True)
                ],
            )
    return lines_written


# --- customers of the shipped demo catalog, for the production-stack benchmark ----------

# (locale, time zone, first names, last names): the demo's four markets.
MARKETS = (
    ("ro-RO", "Europe/Bucharest", ("Ana", "Ioana", "Ștefan", "Mihai"), ("Pop", "Țurcanu")),
    ("it-IT", "Europe/Rome", ("Giulia", "Luca", "Niccolò"), ("Rossi", "Bianchi")),
    ("en-GB", "Europe/London", ("Olivia", "Harry", "Amelia"), ("Smith", "Jones")),
    ("en-US", "America/New_York", ("Emma", "Liam", "Noah"), ("Miller", "Brown")),
)


@dataclass(frozen=True, slots=True)
class CatalogItem:
    sku: str
    category: str
    price: Decimal


@dataclass(frozen=True, slots=True)
class Profile:
    """What the benchmark needs to know of a generated customer to write its events."""

    id: str
    email: str
    first_name: str
    last_name: str
    locale: str
    timezone: str


def profile(n: int) -> Profile:
    """Customer ``n`` of :func:`load_catalog_customers`, computed, not read back."""
    locale, zone, firsts, lasts = MARKETS[n % len(MARKETS)]
    return Profile(
        f"S-{n}",
        f"c{n}@shop.example",
        firsts[n // len(MARKETS) % len(firsts)],
        lasts[n // 7 % len(lasts)],
        locale,
        zone,
    )


def load_catalog_customers(
    database_url: str,
    customers: int,
    catalog: list[CatalogItem],
    now: datetime | None = None,
    seed: int = 11,
) -> int:
    """Customers with names, locales, time zones, marketing consent and 1-4 past orders
    of the catalog's products (Zipf popularity), their profiles' order counts, spend,
    categories and SKUs consistent with that history. PostgreSQL only (COPY); the
    products themselves come from ``crosssell catalog import``. Returns the order lines
    written."""
    import json

    now = now or datetime.now(UTC)
    rng = np.random.default_rng(seed)
    weights = np.arange(1, len(catalog) + 1, dtype=np.float64) ** -1.1
    weights /= weights.sum()
    orders_of = rng.integers(1, 5, size=customers)
    days_back = rng.integers(30, 700, size=int(orders_of.sum()))
    picks = rng.choice(len(catalog), size=int(orders_of.sum()), p=weights)
    customer_rows: list[str] = []
    order_rows: list[str] = []
    line_rows: list[str] = []
    cursor = 0
    for n in range(customers):
        person = profile(n)
        count = int(orders_of[n])
        items = [catalog[int(picks[cursor + k])] for k in range(count)]
        dates = sorted(now - timedelta(days=int(days_back[cursor + k])) for k in range(count))
        cursor += count
        for k, (item, when) in enumerate(zip(items, dates, strict=True)):
            order = f"O-{person.id}-{k}"
            order_rows.append(
                f"{order}\t{person.id}\tshop-history\tEUR\t{item.price}\t{when.isoformat()}\n"
            )
            line_rows.append(f"{order}\t{item.sku}\t{item.category}\t1\t{item.price}\n")
        spend = sum((item.price for item in items), Decimal(0))
        categories = json.dumps(sorted({item.category for item in items}))
        skus = json.dumps(sorted({item.sku for item in items}))
        customer_rows.append(
            f"{person.id}\t{person.email}\t{person.first_name}\t{person.last_name}\t"
            f"{person.locale}\t{person.timezone}\tt\t[]\t{{}}\t{count}\t{spend}\t"
            f"{dates[0].isoformat()}\t{dates[-1].isoformat()}\t{categories}\t{skus}\t"
            f"{now.isoformat()}\t{now.isoformat()}\n"
        )
    engine = engine_for(database_url)
    if engine.dialect.name != "postgresql":
        raise ValueError("load_catalog_customers writes with COPY: PostgreSQL only")
    with engine.begin() as connection:
        raw = connection.connection.driver_connection
        _copy(
            raw,
            "customers",
            "id, email, first_name, last_name, locale, timezone, email_marketing, "
            "opted_out_kinds, attributes, orders_count, lifetime_spend, first_purchase_at, "
            "last_purchase_at, categories_bought, skus_owned, created_at, updated_at",
            iter(customer_rows),
        )
        _copy(
            raw,
            "orders",
            "id, customer_id, event_id, currency, total, ordered_at",
            iter(order_rows),
        )
        _copy(
            raw,
            "order_lines",
            "order_id, sku, category, quantity, unit_price",
            iter(line_rows),
        )
        connection.exec_driver_sql("ANALYZE customers")
        connection.exec_driver_sql("ANALYZE orders")
        connection.exec_driver_sql("ANALYZE order_lines")
    return len(line_rows)
