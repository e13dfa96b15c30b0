"""Catalog reads for offer resolution: the few products an offer may draw from.

Each is one Core query returning plain rows (no ORM identity map) and building the
decision core's immutable ``Product`` directly. Sends do not call them one by one:
they read through the process's snapshot (:mod:`worker.offers.catalog_snapshot`), which
runs the same queries only for what it does not hold yet; these stay the reference
(tests compare the snapshot with them) and serve one-off reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Executable, func, select
from sqlalchemy.orm import Session

from triggers.offers import Product as OfferProduct
from worker.core.models import Product, ProductStats

PRODUCT_COLUMNS = (
    Product.sku,
    Product.name,
    Product.category,
    Product.price,
    Product.currency,
    Product.in_stock,
    Product.url,
    Product.image_url,
    Product.line,
    Product.tier,
)


# A product's texts: (name_i18n, description, description_i18n), language tags lower case.
Texts = tuple[dict[str, str], str | None, dict[str, str]]


@dataclass(frozen=True, slots=True)
class LocalizedProduct(OfferProduct):
    """A product as one customer sees it: ``name`` in their language (or the default
    name) and the ``description`` in their language, if the catalog has one."""

    description: str | None = None


def lookup_tags(locale_tag: str | None) -> list[str]:
    """The language tags to try for a customer's locale, most specific first: RFC 4647
    section 3.4 lookup, truncating subtags from the end (``ro-RO`` -> ``ro-ro``, ``ro``;
    POSIX ``it_IT.UTF-8`` -> ``it-it``, ``it``). Empty for no locale."""
    if not locale_tag:
        return []
    tag = locale_tag.split(".", 1)[0].split("@", 1)[0].replace("_", "-").strip().lower()
    subtags = [part for part in tag.split("-") if part]
    tags = []
    while subtags:
        tags.append("-".join(subtags))
        subtags.pop()
        # RFC 4647 3.4: a single-letter subtag (extension or private-use singleton) is
        # removed together with the subtag that follows it.
        while subtags and len(subtags[-1]) == 1:
            subtags.pop()
    return tags


def localized(
    texts: Mapping[str, str] | None, default: str | None, locale_tag: str | None
) -> str | None:
    """The text for ``locale_tag`` from ``texts`` (lower-case tag -> text), falling back
    to ``default`` when no tag of the lookup chain has one."""
    if texts:
        for tag in lookup_tags(locale_tag):
            text = texts.get(tag)
            if text:
                return text
    return default


def product_texts(session: Session, skus: Iterable[str]) -> dict[str, Texts]:
    """``sku -> (name_i18n, description, description_i18n)`` for the given products: only
    the few items an email shows, read after the offer is chosen."""
    wanted = list(dict.fromkeys(skus))
    if not wanted:
        return {}
    query = select(
        Product.sku, Product.name_i18n, Product.description, Product.description_i18n
    ).where(Product.sku.in_(wanted))
    return {
        row.sku: (dict(row.name_i18n or {}), row.description, dict(row.description_i18n or {}))
        for row in session.execute(query)
    }


def offer_product(row: Any) -> OfferProduct:
    """The decision core's product from a row of :data:`PRODUCT_COLUMNS`."""
    return OfferProduct(
        sku=row.sku,
        name=row.name,
        category=row.category,
        price=row.price,
        currency=row.currency,
        in_stock=row.in_stock,
        url=row.url,
        image_url=row.image_url,
        line=row.line,
        tier=row.tier,
    )


def _products(session: Session, query: Executable) -> list[OfferProduct]:
    return [offer_product(row) for row in session.execute(query)]


_RAW_COLUMNS = (
    "p.sku, p.name, p.category, p.price, p.currency, p.in_stock, p.url, p.image_url, p.line, p.tier"
)


def _driver_rows(session: Session, sql: str, params: list[Any]) -> list[OfferProduct]:
    """Run one hot query on the driver's own cursor: SQLAlchemy's execution layer costs
    about 0.3 ms a query here, as much as the database itself. ``?`` marks parameters."""
    connection = session.connection()
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    if connection.dialect.name == "postgresql":
        sql = sql.replace("?", "%s")
    try:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    return [
        OfferProduct(
            sku=sku,
            name=name,
            category=category,
            price=Decimal(str(price)),
            currency=currency,
            in_stock=bool(in_stock),
            url=url,
            image_url=image_url,
            line=line,
            tier=tier,
        )
        for sku, name, category, price, currency, in_stock, url, image_url, line, tier, *_ in rows
    ]


def products_in_categories(session: Session, categories: Iterable[str]) -> list[OfferProduct]:
    wanted = list(categories)
    if not wanted:
        return []
    return _products(session, select(*PRODUCT_COLUMNS).where(Product.category.in_(wanted)))


def products_by_sku(session: Session, skus: Iterable[str]) -> list[OfferProduct]:
    wanted = list(skus)
    if not wanted:
        return []
    return _products(session, select(*PRODUCT_COLUMNS).where(Product.sku.in_(wanted)))


def products_in_lines(session: Session, lines: Iterable[str]) -> list[OfferProduct]:
    wanted = [line for line in lines if line]
    if not wanted:
        return []
    return _products(session, select(*PRODUCT_COLUMNS).where(Product.line.in_(wanted)))


def recommended_for(session: Session, skus: Iterable[str], limit: int = 50) -> list[OfferProduct]:
    """Partners of the given products, best score first (from the last rebuild)."""
    wanted = list(dict.fromkeys(skus))
    if not wanted:
        return []
    marks = ", ".join("?" for _ in wanted)
    sql = (
        f"SELECT {_RAW_COLUMNS}, best FROM ("
        f" SELECT a.other_sku AS sku, max(a.score) AS best FROM product_affinities a"
        f" WHERE a.sku IN ({marks}) AND a.other_sku NOT IN ({marks})"
        f" GROUP BY a.other_sku ORDER BY best DESC, a.other_sku LIMIT ?"
        f") AS ranked JOIN products p ON p.sku = ranked.sku ORDER BY best DESC, p.sku"
    )
    return _driver_rows(session, sql, [*wanted, *wanted, limit])


def bestsellers_in(
    session: Session, categories: Iterable[str], per_category: int = 10
) -> list[OfferProduct]:
    """The most bought products of each category, most bought first."""
    wanted = list(categories)
    if not wanted:
        return []
    rank = func.row_number().over(
        partition_by=Product.category, order_by=(ProductStats.buyers.desc(), Product.sku)
    )
    ranked = (
        select(*PRODUCT_COLUMNS, rank.label("rank"))
        .join(ProductStats, ProductStats.sku == Product.sku)
        .where(Product.category.in_(wanted))
        .subquery()
    )
    query = (
        select(ranked).where(ranked.c.rank <= per_category).order_by(ranked.c.rank, ranked.c.sku)
    )
    return _products(session, query)
