"""The catalog as offer resolution reads it, kept once per process and checked per batch.

A :class:`CatalogSnapshot` holds what offer resolution has read of one version of the
catalog (``catalog_version.version``, which triggers change with every write to
``products``, ``product_affinities`` and ``product_stats``; migration 0015): the products
of a category or of a line, a product by SKU, a product's affinity partners, a
category's bestsellers, a product's localized texts. It is filled lazily, key by key, so
a shop of 100,000 products holds only what its campaigns offer, and it is bounded
(:data:`MAX_BYTES`). The process keeps one snapshot per database; a batch reads the
version once (:func:`current_snapshot`) and gets a new, empty snapshot when it changed.

Fills are checked, not trusted: on PostgreSQL (read committed) a fill may already see
an import that committed after the batch read the version, so each fill query also
reads the version (joined to its rows: one statement, one view of the database), and
its rows are kept only when that is the snapshot's version. Otherwise they serve the
batch that read them, as the per-batch reads did before, and are not kept. A miss
costs one statement, as the read did before the snapshot.

Orders are those of the SQL reads in :mod:`worker.offers.catalog`; where the SQL breaks
ties by SKU, this module compares SKUs by code point, as SQLite and PostgreSQL's ``C``
collations do.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Engine, FromClause, func, literal_column, select
from sqlalchemy.orm import Session

from triggers.offers import Product
from worker.core.models import CatalogVersion, ProductAffinity, ProductStats
from worker.core.models import Product as ProductRow
from worker.offers.catalog import PRODUCT_COLUMNS, Texts, offer_product

# What a snapshot may hold, in bytes as estimated from the sizes measured with
# tracemalloc (docs/performance.md, "The catalog snapshot"): a product 731 B, an
# affinity partner 158 B, a product's texts about 130 B per text plus its characters.
# Past it the snapshot starts again empty. 32 MiB is about 45,000 products.
MAX_BYTES = 32 * 1024 * 1024
PRODUCT_BYTES = 750
PARTNER_BYTES = 160
TEXT_BYTES = 130
# The catalog's version as a transaction sees it. On PostgreSQL the transaction's own
# catalog writes after its first one are counted in a transaction-local setting, not in
# the row (migration 0015 says why), so the count is part of the version.
VERSION_EXPRESSION = {
    "postgresql": (
        "catalog_version.version || ':' || coalesce("
        "nullif(current_setting('crosssell.catalog_writes', true), ''), '0')"
    ),
    "sqlite": "catalog_version.version",
}
VERSION_SQL = {
    dialect: f"SELECT {expression} FROM catalog_version WHERE id = 1"
    for dialect, expression in VERSION_EXPRESSION.items()
}

V = TypeVar("V")
_ABSENT = object()
# What a fill query returns: the catalog version it saw (None: not asked, or no version
# row) and ``key -> value`` for every key asked for.
_Loaded = tuple[str | None, dict[Any, Any]]


def catalog_version(session: Session) -> str | None:
    """The catalog's current version as ``session``'s transaction sees it (one
    statement); None when the ``catalog_version`` row is missing (a table emptied by
    hand: nothing is kept until the next catalog write makes it again)."""
    connection = session.connection()
    value = connection.exec_driver_sql(VERSION_SQL[connection.dialect.name]).scalar()
    return None if value is None else str(value)


class CatalogSnapshot:
    """What has been read of one catalog version, shared by the threads of a process.

    Every read takes the session of the caller's transaction (to fill what is missing)
    and ``seen``, the caller's batch-local memo: what the batch read is served again
    from it even when the snapshot could not keep it (a stale fill, the bound)."""

    def __init__(self, version: str | None, max_bytes: int = MAX_BYTES) -> None:
        self.version = version
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, Hashable], Any] = {}
        self._products: dict[str, Product] = {}
        self._size = 0

    @property
    def size(self) -> int:
        """What the snapshot holds now, in estimated bytes (see :data:`MAX_BYTES`)."""
        return self._size

    def holds(self, products: Iterable[Product]) -> bool:
        """Whether each of ``products`` is the very object this snapshot handed out:
        then its texts (:meth:`texts`) are of the same catalog version."""
        return all(self._products.get(p.sku) is p for p in products)

    # -- reads ----------------------------------------------------------------------------

    def products_in_categories(
        self, session: Session, categories: Iterable[str], seen: dict[Any, Any]
    ) -> list[Product]:
        """The products of ``categories``, category by category."""
        found = self._lookup(session, _CATEGORY, categories, seen)
        return [p for products in found.values() for p in products]

    def products_by_sku(
        self, session: Session, skus: Iterable[str], seen: dict[Any, Any]
    ) -> list[Product]:
        """The catalog's products among ``skus``, in their order; unknown SKUs are left out."""
        found = self._lookup(session, _SKU, skus, seen)
        return [p for p in found.values() if p is not None]

    def products_in_lines(
        self, session: Session, lines: Iterable[str], seen: dict[Any, Any]
    ) -> list[Product]:
        """The products of the product ``lines`` (empty names are ignored)."""
        found = self._lookup(session, _LINE, [line for line in lines if line], seen)
        return [p for products in found.values() for p in products]

    def recommended_for(
        self, session: Session, skus: Iterable[str], seen: dict[Any, Any], limit: int = 50
    ) -> list[Product]:
        """Partners of ``skus`` (not themselves), best score first, then by SKU: the
        ``limit`` best of the affinity table, less those no longer in the catalog."""
        seeds = list(dict.fromkeys(skus))
        if not seeds:
            return []
        partners = self._lookup(session, _PARTNERS, seeds, seen)
        excluded = set(seeds)
        best: dict[str, float] = {}
        for pairs in partners.values():
            for other, score in pairs:
                if other not in excluded and score > best.get(other, float("-inf")):
                    best[other] = score
        ranked = sorted(best.items(), key=lambda pair: (-pair[1], pair[0]))[:limit]
        products = {p.sku: p for p in self.products_by_sku(session, [s for s, _ in ranked], seen)}
        return [products[sku] for sku, _ in ranked if sku in products]

    def bestsellers_in(
        self,
        session: Session,
        categories: Iterable[str],
        seen: dict[Any, Any],
        per_category: int = 10,
    ) -> list[Product]:
        """The ``per_category`` most bought products of each category, most bought first:
        ordered by rank in its category, then SKU."""
        keys = [(category, per_category) for category in categories]
        found = self._lookup(session, _BESTSELLERS, keys, seen)
        ranked = sorted(
            (entry for entries in found.values() for entry in entries),
            key=lambda entry: (entry[0], entry[1].sku),
        )
        return [product for _, product in ranked]

    def texts(
        self, session: Session, skus: Iterable[str], seen: dict[Any, Any]
    ) -> dict[str, Texts]:
        """``sku -> (name_i18n, description, description_i18n)``; a SKU no longer in the
        catalog has none (``({}, None, {})``)."""
        return self._lookup(session, _TEXTS, skus, seen)

    # -- filling ----------------------------------------------------------------------------

    def _lookup(
        self,
        session: Session,
        kind: _Kind,
        keys: Iterable[Hashable],
        seen: dict[Any, Any],
    ) -> dict[Any, Any]:
        """``key -> value`` for ``keys`` (each once, in order): from ``seen``, else from
        the snapshot, else from one query for all the missing ones."""
        found: dict[Any, Any] = {}
        missing: list[Any] = []
        entries = self._entries
        for key in keys:
            if key in found:
                continue
            value = seen.get((kind.name, key), _ABSENT)
            if value is _ABSENT:
                value = entries.get((kind.name, key), _ABSENT)
            if value is _ABSENT:
                missing.append(key)
            found[key] = value
        if missing:
            version, loaded = kind.load(session, missing, self.version is not None)
            if version is not None and version == self.version:
                loaded = self._keep(kind, loaded)
            found.update(loaded)
        for key, value in found.items():
            seen[(kind.name, key)] = value
        return found

    def _keep(self, kind: _Kind, loaded: dict[Any, Any]) -> dict[Any, Any]:
        """Store ``loaded`` (read at this snapshot's version) and return it with each
        product replaced by the snapshot's own object for its SKU. Past
        :attr:`max_bytes` the snapshot empties first; a value larger than that alone is
        not kept."""
        weight = sum(kind.weight(value) for value in loaded.values())
        if weight > self.max_bytes:
            return loaded
        with self._lock:
            if self._size + weight > self.max_bytes:
                self._entries, self._products, self._size = {}, {}, 0
            products = self._products
            kept = {key: kind.intern(value, products) for key, value in loaded.items()}
            self._entries.update(((kind.name, key), value) for key, value in kept.items())
            self._size += weight
        return kept


# -- the queries that fill a snapshot (one per call, for all the missing keys) ---------------


def _version_column(session: Session) -> ColumnElement[Any]:
    """The version as :func:`catalog_version` reads it, as a column of a fill query."""
    dialect = session.get_bind().dialect.name
    return literal_column(VERSION_EXPRESSION[dialect]).label("catalog_version")


def _read(
    session: Session,
    columns: Sequence[Any],
    source: FromClause | type[Any],
    condition: ColumnElement[bool],
    versioned: bool,
) -> tuple[str | None, list[Any]]:
    """The rows of ``source`` meeting ``condition`` and, when ``versioned``, the catalog
    version the same statement saw (one snapshot of the database: the rows are of that
    version), read by joining the rows to the ``catalog_version`` row."""
    if versioned:
        query = (
            select(_version_column(session), *columns)
            .select_from(CatalogVersion)
            .outerjoin(source, condition)
            .where(CatalogVersion.id == 1)
        )
        rows = session.execute(query).all()
        if rows:  # the version row is there: the rows found are those with a SKU
            return str(rows[0].catalog_version), [row for row in rows if row.sku is not None]
    return None, list(session.execute(select(*columns).where(condition)))


def _grouped(rows: Iterable[Any], attribute: str, keys: Sequence[Any]) -> dict[Any, Any]:
    groups: dict[Any, list[Product]] = {key: [] for key in keys}
    for row in rows:
        groups[getattr(row, attribute)].append(offer_product(row))
    return {key: tuple(products) for key, products in groups.items()}


def _load_categories(session: Session, categories: list[str], versioned: bool) -> _Loaded:
    condition = ProductRow.category.in_(categories)
    version, rows = _read(session, PRODUCT_COLUMNS, ProductRow, condition, versioned)
    return version, _grouped(rows, "category", categories)


def _load_lines(session: Session, lines: list[str], versioned: bool) -> _Loaded:
    condition = ProductRow.line.in_(lines)
    version, rows = _read(session, PRODUCT_COLUMNS, ProductRow, condition, versioned)
    return version, _grouped(rows, "line", lines)


def _load_skus(session: Session, skus: list[str], versioned: bool) -> _Loaded:
    condition = ProductRow.sku.in_(skus)
    version, rows = _read(session, PRODUCT_COLUMNS, ProductRow, condition, versioned)
    found: dict[str, Product | None] = dict.fromkeys(skus)
    for row in rows:
        found[row.sku] = offer_product(row)
    return version, found


def _load_partners(session: Session, skus: list[str], versioned: bool) -> _Loaded:
    columns = (ProductAffinity.sku, ProductAffinity.other_sku, ProductAffinity.score)
    condition = ProductAffinity.sku.in_(skus)
    version, rows = _read(session, columns, ProductAffinity, condition, versioned)
    partners: dict[str, list[tuple[str, float]]] = {sku: [] for sku in skus}
    for row in rows:
        partners[row.sku].append((row.other_sku, float(row.score)))
    return version, {sku: tuple(pairs) for sku, pairs in partners.items()}


def _load_bestsellers(session: Session, keys: list[tuple[str, int]], versioned: bool) -> _Loaded:
    """Each category's ``per_category`` products with the most buyers (ties by SKU, in
    the database's order), with their rank."""
    found: dict[tuple[str, int], list[tuple[int, Product]]] = {key: [] for key in keys}
    versions: set[str | None] = set()
    for per_category in sorted({n for _, n in keys}):
        categories = [category for category, n in keys if n == per_category]
        rank = func.row_number().over(
            partition_by=ProductRow.category,
            order_by=(ProductStats.buyers.desc(), ProductRow.sku),
        )
        ranked = (
            select(*PRODUCT_COLUMNS, rank.label("rank"))
            .join(ProductStats, ProductStats.sku == ProductRow.sku)
            .where(ProductRow.category.in_(categories))
            .subquery()
        )
        condition = ranked.c.rank <= per_category
        version, rows = _read(session, list(ranked.c), ranked, condition, versioned)
        versions.add(version)
        for row in rows:
            found[(row.category, per_category)].append((int(row.rank), offer_product(row)))
    # Two statements (two sizes asked for at once) are one version only if both saw it.
    version = versions.pop() if len(versions) == 1 else None
    return version, {key: tuple(entries) for key, entries in found.items()}


def _load_texts(session: Session, skus: list[str], versioned: bool) -> _Loaded:
    columns = (
        ProductRow.sku,
        ProductRow.name_i18n,
        ProductRow.description,
        ProductRow.description_i18n,
    )
    condition = ProductRow.sku.in_(skus)
    version, rows = _read(session, columns, ProductRow, condition, versioned)
    texts: dict[str, Texts] = dict.fromkeys(skus, ({}, None, {}))
    for row in rows:
        names, descriptions = dict(row.name_i18n or {}), dict(row.description_i18n or {})
        texts[row.sku] = (names, row.description, descriptions)
    return version, texts


# -- what each kind of entry is: its query, its size, its products made canonical ----------


@dataclass(frozen=True, slots=True)
class _Kind:
    name: str
    load: Callable[[Session, list[Any], bool], _Loaded]
    weight: Callable[[Any], int]
    intern: Callable[[Any, dict[str, Product]], Any]


def _products_size(value: tuple[Any, ...] | Product | None) -> int:
    return PRODUCT_BYTES * (len(value) if isinstance(value, tuple) else 1)


def _partners_size(value: tuple[tuple[str, float], ...]) -> int:
    return PARTNER_BYTES * len(value)


def _texts_size(value: Texts) -> int:
    names, description, descriptions = value
    texts = [*names.values(), *descriptions.values(), description or ""]
    return sum(TEXT_BYTES + len(text) for text in texts) + 2 * TEXT_BYTES


def _as_is(value: V, products: dict[str, Product]) -> V:
    return value


def _intern_product(product: Product | None, products: dict[str, Product]) -> Product | None:
    return None if product is None else products.setdefault(product.sku, product)


def _intern_products(
    value: tuple[Product, ...], products: dict[str, Product]
) -> tuple[Product, ...]:
    return tuple(products.setdefault(p.sku, p) for p in value)


def _intern_ranked(
    value: tuple[tuple[int, Product], ...], products: dict[str, Product]
) -> tuple[tuple[int, Product], ...]:
    return tuple((rank, products.setdefault(p.sku, p)) for rank, p in value)


_CATEGORY = _Kind("category", _load_categories, _products_size, _intern_products)
_LINE = _Kind("line", _load_lines, _products_size, _intern_products)
_SKU = _Kind("sku", _load_skus, _products_size, _intern_product)
_PARTNERS = _Kind("partners", _load_partners, _partners_size, _as_is)
_BESTSELLERS = _Kind("bestsellers", _load_bestsellers, _products_size, _intern_ranked)
_TEXTS = _Kind("texts", _load_texts, _texts_size, _as_is)


# -- one snapshot per process and database ---------------------------------------------------

_current: weakref.WeakKeyDictionary[Engine, CatalogSnapshot] = weakref.WeakKeyDictionary()
_current_lock = threading.Lock()


def current_snapshot(session: Session) -> CatalogSnapshot:
    """The process's snapshot of the catalog ``session``'s transaction sees now: one
    statement (the version); a new, empty snapshot when the version changed."""
    version = catalog_version(session)
    engine = session.get_bind().engine
    with _current_lock:
        snapshot = _current.get(engine)
        if snapshot is None or snapshot.version != version:
            snapshot = CatalogSnapshot(version)
            if version is not None:
                _current[engine] = snapshot
    return snapshot


def snapshot_holding(session: Session, products: Sequence[Product]) -> CatalogSnapshot | None:
    """The process's current snapshot if ``products`` are its own objects (so they
    were read in a batch that checked its version), else None. No statement."""
    snapshot = _current.get(session.get_bind().engine)
    if snapshot is not None and snapshot.holds(products):
        return snapshot
    return None


class CatalogReads:
    """The catalog reads of one unit of work (a batch, or one offer): the snapshot its
    version check returned and what it has read, served again from memory."""

    def __init__(self, snapshot: CatalogSnapshot) -> None:
        self.snapshot = snapshot
        self._seen: dict[Any, Any] = {}

    def products_in_categories(self, session: Session, categories: Iterable[str]) -> list[Product]:
        return self.snapshot.products_in_categories(session, categories, self._seen)

    def products_by_sku(self, session: Session, skus: Iterable[str]) -> list[Product]:
        return self.snapshot.products_by_sku(session, skus, self._seen)

    def products_in_lines(self, session: Session, lines: Iterable[str]) -> list[Product]:
        return self.snapshot.products_in_lines(session, lines, self._seen)

    def recommended_for(self, session: Session, skus: Iterable[str]) -> list[Product]:
        return self.snapshot.recommended_for(session, skus, self._seen)

    def bestsellers_in(self, session: Session, categories: Iterable[str]) -> list[Product]:
        return self.snapshot.bestsellers_in(session, categories, self._seen)

    def texts(self, session: Session, skus: Iterable[str]) -> dict[str, Texts]:
        return self.snapshot.texts(session, skus, self._seen)
