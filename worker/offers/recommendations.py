""" "Customers who bought X also bought Y", rebuilt in batch from the order history.

Each customer's purchases form a set (a row of a sparse customer x product matrix); the
co-purchase counts are that matrix's Gram matrix. Scores are cosine similarities
(co-buyers / sqrt(buyers of X x buyers of Y)): unlike raw co-purchase counts they do not
just return the bestsellers, and unlike lift they do not reward rare products bought
together once. Pairs with fewer than ``min_support`` co-buyers are dropped; each product
keeps its ``top_k`` best partners. The tables are replaced in one transaction, so a send
never sees half a rebuild. Batch, not incremental: a full rebuild of a large shop takes
seconds to a few minutes (see docs/offers.md and bench/), and runs daily.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from scipy import sparse
from sqlalchemy import delete, insert, text
from sqlalchemy.orm import Session

from worker.core.db import transaction
from worker.core.models import ProductAffinity, ProductStats
from worker.core.settings import Settings

log = logging.getLogger(__name__)

_BASKETS = {
    "postgresql": (
        "SELECT string_agg(DISTINCT l.sku, ' ') FROM order_lines l "
        "JOIN orders o ON o.id = l.order_id GROUP BY o.customer_id"
    ),
    "sqlite": (
        "SELECT group_concat(sku, ' ') FROM (SELECT DISTINCT o.customer_id, l.sku "
        "FROM order_lines l JOIN orders o ON o.id = l.order_id) GROUP BY customer_id"
    ),
}
_CATEGORIES = (
    "SELECT sku, max(category) FROM ("
    " SELECT sku, category FROM products UNION ALL SELECT sku, category FROM order_lines"
    ") AS known GROUP BY sku"
)


@dataclass(frozen=True, slots=True)
class RebuildReport:
    customers: int
    products: int
    pairs: int
    seconds: float


def _baskets(session: Session) -> Iterator[list[str]]:
    """Each customer's distinct SKUs (SKUs never contain spaces: they are identifiers)."""
    dialect = session.get_bind().dialect.name
    connection = session.connection().connection.driver_connection
    if dialect == "postgresql":
        query = f"COPY ({_BASKETS['postgresql']}) TO STDOUT"
        with connection.cursor() as cursor, cursor.copy(query) as copy:  # type: ignore[union-attr]
            pending = b""
            for chunk in copy:
                lines = (pending + bytes(chunk)).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    yield line.decode().split(" ")
            if pending:
                yield pending.decode().split(" ")
        return
    for (joined,) in session.execute(text(_BASKETS["sqlite"])):
        yield str(joined).split(" ")


def purchase_matrix(session: Session) -> tuple[sparse.csr_matrix, list[str]]:
    """Binary customers x products matrix and the SKU of each column."""
    index: dict[str, int] = {}
    columns: list[int] = []
    pointers = [0]
    for skus in _baskets(session):
        for sku in skus:
            columns.append(index.setdefault(sku, len(index)))
        pointers.append(len(columns))
    data = np.ones(len(columns), dtype=np.float32)
    matrix = sparse.csr_matrix(
        (data, np.asarray(columns, dtype=np.int32), np.asarray(pointers, dtype=np.int64)),
        shape=(len(pointers) - 1, len(index)),
    )
    return matrix, list(index)


def top_partners(
    matrix: sparse.csr_matrix, min_support: int, top_k: int
) -> Iterator[tuple[int, int, float, int]]:
    """(product, partner, cosine, co-buyers) for each product's best partners."""
    buyers = np.asarray(matrix.sum(axis=0)).ravel()
    co = (matrix.T @ matrix).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    norms = np.sqrt(buyers)
    for row in range(co.shape[0]):
        start, end = co.indptr[row], co.indptr[row + 1]
        partners = co.indices[start:end]
        counts = co.data[start:end]
        keep = counts >= min_support
        partners, counts = partners[keep], counts[keep]
        if partners.size == 0:
            continue
        scores = counts / (norms[row] * norms[partners])
        best = np.argsort(-scores, kind="stable")[:top_k]
        for position in best:
            yield row, int(partners[position]), float(scores[position]), int(counts[position])


def rebuild_affinities(
    session: Session, now: datetime, min_support: int = 3, top_k: int = 20
) -> RebuildReport:
    """Recompute both tables inside the caller's transaction."""
    started = time.perf_counter()
    matrix, skus = purchase_matrix(session)
    buyers = np.asarray(matrix.sum(axis=0)).ravel()
    categories = {str(sku): str(category) for sku, category in session.execute(text(_CATEGORIES))}
    pairs = [
        {"sku": skus[a], "other_sku": skus[b], "score": score, "support": support}
        for a, b, score, support in top_partners(matrix, min_support, top_k)
    ]
    session.execute(delete(ProductAffinity))
    session.execute(delete(ProductStats))
    for start in range(0, len(pairs), 5000):
        session.execute(insert(ProductAffinity), pairs[start : start + 5000])
    stats = [
        {"sku": sku, "category": categories.get(sku, ""), "buyers": int(count), "computed_at": now}
        for sku, count in zip(skus, buyers, strict=True)
    ]
    for start in range(0, len(stats), 5000):
        session.execute(insert(ProductStats), stats[start : start + 5000])
    seconds = time.perf_counter() - started
    log.info(
        "recommendations rebuilt: %s customers, %s products, %s pairs in %.1fs",
        matrix.shape[0],
        len(skus),
        len(pairs),
        seconds,
    )
    return RebuildReport(matrix.shape[0], len(skus), len(pairs), seconds)


def run_rebuild(settings: Settings) -> RebuildReport:
    """One rebuild in its own transaction, with the configured support and size."""
    with transaction(settings.resolved_database_url) as session:
        return rebuild_affinities(
            session,
            datetime.now(UTC),
            min_support=settings.recommendations_min_support,
            top_k=settings.recommendations_top_k,
        )
