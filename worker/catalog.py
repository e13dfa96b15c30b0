"""Catalog reads for offer resolution: the few products an offer may draw from.

These run on every send, so each is one Core query returning plain rows (no ORM
identity map) and building the decision core's immutable ``Product`` directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Executable, func, select
from sqlalchemy.orm import Session

from triggers.offers import Product as OfferProduct
from worker.models import Product, ProductAffinity, ProductStats

_COLUMNS = (
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


def _offer_product(row: Any) -> OfferProduct:
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
    return [_offer_product(row) for row in session.execute(query)]


def products_in_categories(session: Session, categories: Iterable[str]) -> list[OfferProduct]:
    wanted = list(categories)
    if not wanted:
        return []
    return _products(session, select(*_COLUMNS).where(Product.category.in_(wanted)))


def products_by_sku(session: Session, skus: Iterable[str]) -> list[OfferProduct]:
    wanted = list(skus)
    if not wanted:
        return []
    return _products(session, select(*_COLUMNS).where(Product.sku.in_(wanted)))


def products_in_lines(session: Session, lines: Iterable[str]) -> list[OfferProduct]:
    wanted = [line for line in lines if line]
    if not wanted:
        return []
    return _products(session, select(*_COLUMNS).where(Product.line.in_(wanted)))


def recommended_for(session: Session, skus: Iterable[str], limit: int = 50) -> list[OfferProduct]:
    """Partners of the given products, best score first (from the last rebuild)."""
    wanted = list(dict.fromkeys(skus))
    if not wanted:
        return []
    best = func.max(ProductAffinity.score).label("best")
    query = (
        select(*_COLUMNS, best)
        .join(ProductAffinity, ProductAffinity.other_sku == Product.sku)
        .where(ProductAffinity.sku.in_(wanted), ProductAffinity.other_sku.not_in(wanted))
        .group_by(*_COLUMNS)
        .order_by(best.desc(), Product.sku)
        .limit(limit)
    )
    return _products(session, query)


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
        select(*_COLUMNS, rank.label("rank"))
        .join(ProductStats, ProductStats.sku == Product.sku)
        .where(Product.category.in_(wanted))
        .subquery()
    )
    query = (
        select(ranked).where(ranked.c.rank <= per_category).order_by(ranked.c.rank, ranked.c.sku)
    )
    return _products(session, query)
