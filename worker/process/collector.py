"""The garbage collector of a process that is one long-running crosssell service.

``crosssell consume``, ``crosssell dispatch`` and the Celery worker build a large,
long-lived heap at start-up (modules, SQLAlchemy mappers, pydantic schemas, Jinja and
Babel caches: 160,000 tracked objects in the consumer) and then allocate many short-lived
objects per event or email. With CPython's defaults the cyclic collector ran the youngest
generation every 700 allocations, promoted a batch's objects that live until its commit,
and traversed the whole start-up heap again on every full collection. Measured: the
consumer's collector took 0.041-0.055 ms of CPU per event and 0.003 ms with these
settings (``bench.ingest``); the worker's CPU per email in ``bench.delivery`` went from
1.62-1.67 to 1.53 ms (docs/performance.md). Reference counting still frees every
acyclic object at once, and cycles are still collected, less often.

What is frozen is never collected: that includes the first rules snapshot (its template
environment refers to itself), so after a hot reload one snapshot stays in memory for
the process's life, a fixed amount, not a growth. ``crosssell run`` runs its Celery
worker on the main thread, so the embedded process is tuned too, for its life, by the
worker's start signal (``worker.outbox.app``); its consumer and dispatcher, on threads,
leave the collector to it.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

YOUNG_COLLECTION_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation (CPython's default
is 700): a batch of 200 events allocates far more than 700 objects that live until its
commit."""


def tune_for_service() -> tuple[int, int, int]:
    """Freeze what the process built so far (``gc.freeze``: kept, and no longer traversed
    by the cyclic collector) and collect the youngest generation every
    :data:`YOUNG_COLLECTION_THRESHOLD` allocations; returns the thresholds it replaced.
    For a process that keeps these settings until it exits (the Celery worker)."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *thresholds[1:])
    return thresholds


@contextmanager
def collector_for_service() -> Iterator[None]:
    """:func:`tune_for_service` for the block, undone on exit (thresholds restored,
    the frozen objects handed back to the collector)."""
    thresholds = tune_for_service()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def on_own_process() -> bool:
    """Whether the caller runs on its process's main thread: ``crosssell consume`` and
    ``crosssell dispatch`` own their process; under ``crosssell run`` and in tests the
    same loops run on threads of a process that is not theirs to tune (under
    ``crosssell run`` its Celery worker, on the main thread, tunes it)."""
    return threading.current_thread() is threading.main_thread()


def collector_if_own_process() -> AbstractContextManager[None]:
    """:func:`collector_for_service` on the process's main thread, else nothing."""
    return collector_for_service() if on_own_process() else nullcontext()
