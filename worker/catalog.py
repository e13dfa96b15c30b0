"""Catalog reads for offer resolution: the few products an offer may draw from."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from triggers.offers import Product as OfferProduct
from worker.models import Product, ProductAffinity, ProductStats


def as_offer_product(row: Product) -> OfferProduct:
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


def products_in_categories(session: Session, categories: Iterable[str]) -> list[OfferProduct]:
    wanted = list(categories)
    if not wanted:
        return []
    rows = session.scalars(select(Product).where(Product.category.in_(wanted))).all()
    return [as_offer_product(row) for row in rows]


def products_by_sku(session: Session, skus: Iterable[str]) -> list[OfferProduct]:
    wanted = list(skus)
    if not wanted:
        return []
    rows = session.scalars(select(Product).where(Product.sku.in_(wanted))).all()
    return [as_offer_product(row) for row in rows]


def products_in_lines(session: Session, lines: Iterable[str]) -> list[OfferProduct]:
    wanted = [line for line in lines if line]
    if not wanted:
        return []
    rows = session.scalars(select(Product).where(Product.line.in_(wanted))).all()
    return [as_offer_product(row) for row in rows]


def recommended_for(session: Session, skus: Iterable[str], limit: int = 50) -> list[OfferProduct]:
    """Partners of the given products, best score first (from the last rebuild)."""
    wanted = list(dict.fromkeys(skus))
    if not wanted:
        return []
    best = func.max(ProductAffinity.score).label("best")
    partners = (
        select(ProductAffinity.other_sku, best)
        .where(ProductAffinity.sku.in_(wanted), ProductAffinity.other_sku.not_in(wanted))
        .group_by(ProductAffinity.other_sku)
        .order_by(best.desc(), ProductAffinity.other_sku)
        .limit(limit)
    )
    ranked = [row.other_sku for row in session.execute(partners)]
    products = {p.sku: p for p in products_by_sku(session, ranked)}
    return [products[sku] for sku in ranked if sku in products]


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
        select(Product.sku, rank.label("rank"))
        .join(ProductStats, ProductStats.sku == Product.sku)
        .where(Product.category.in_(wanted))
        .subquery()
    )
    top = (
        select(Product)
        .join(ranked, ranked.c.sku == Product.sku)
        .where(ranked.c.rank <= per_category)
        .order_by(ranked.c.rank, Product.sku)
    )
    return [as_offer_product(row) for row in session.scalars(top)]
