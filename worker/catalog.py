"""Catalog reads for offer resolution: the few products an offer may draw from."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from triggers.offers import Product as OfferProduct
from worker.models import Product


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
