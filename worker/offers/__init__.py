"""Offers and the catalog: products and their localized names (``catalog``), the copy of
it each process keeps for sends, checked once per batch (``catalog_snapshot``), the
catalog import (``catalog_import``), "bought X, also bought Y" (``recommendations``) and
which offer a send carries, checked against stock (``offer_resolution``).

May import: :mod:`worker.records`, :mod:`worker.core`; not :mod:`worker.email` (a
sibling). May be imported by: providers and webhooks, decide, process, intake, outbox,
web, commands.
"""
