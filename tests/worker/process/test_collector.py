"""worker.process.collector: a service process's collector settings hold while it
consumes or dispatches and are undone after, the Celery worker keeps them for its life,
and a loop on another thread than the process's main one leaves the collector alone."""

from __future__ import annotations

import gc
import threading

import pytest

from worker.intake import consumer
from worker.outbox import app as celery_app
from worker.outbox import dispatcher
from worker.process.collector import YOUNG_COLLECTION_THRESHOLD, collector_for_service


def test_the_collector_is_tuned_while_consuming_and_restored_after() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with collector_for_service():
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0  # what the process built before consuming
        assert gc.isenabled()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_collector_is_restored_when_consuming_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), collector_for_service():
        raise RuntimeError("the broker went away")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cycles_are_still_collected_while_consuming() -> None:
    class Node:
        pass

    with collector_for_service():
        node = Node()
        node.itself = node  # type: ignore[attr-defined]
        del node
        assert gc.collect() >= 1  # the node, unreachable but for its own reference


def test_a_consumer_off_the_main_thread_leaves_the_collector_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``crosssell run`` and the tests run the consumer on a thread of a process that is
    not the consumer's: its collector is not the consumer's to tune."""
    seen: list[tuple[tuple[int, int, int], int]] = []

    def consume(_consumer: object) -> None:
        seen.append((gc.get_threshold(), gc.get_freeze_count()))

    monkeypatch.setattr(consumer, "_consume", consume)
    monkeypatch.setattr(consumer, "announce", lambda runtime, role: None)
    monkeypatch.setattr(consumer, "Connection", _NoConnection)
    runtime = _Runtime()
    before = gc.get_threshold()
    thread = threading.Thread(target=consumer.run_consumer, args=(runtime,))
    thread.start()
    thread.join(10)
    assert seen == [(before, 0)]
    consumer.run_consumer(runtime)  # type: ignore[arg-type]
    assert seen[1] == ((YOUNG_COLLECTION_THRESHOLD, *before[1:]), seen[1][1])
    assert seen[1][1] > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


class _NoConnection:
    def __init__(self, url: str, **options: object) -> None:
        self.url = url

    def __enter__(self) -> _NoConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _Settings:
    resolved_events_url = "memory://"
    resolved_database_url = "sqlite://"
    ingest_batch = 200
    ingest_linger = 0.05
    dispatch_wakeup = False


class _Runtime:
    settings = _Settings()


def test_a_dispatcher_tunes_the_collector_only_on_its_own_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``crosssell dispatch`` runs the loop on its main thread; ``crosssell run`` on a
    thread of a process that is not the dispatcher's."""
    seen: list[tuple[tuple[int, int, int], int]] = []

    def loop(*_arguments: object) -> None:
        seen.append((gc.get_threshold(), gc.get_freeze_count()))

    monkeypatch.setattr(dispatcher, "_dispatch_until_stopped", loop)
    monkeypatch.setattr(dispatcher, "announce", lambda runtime, role: None)
    runtime = _Runtime()
    before = gc.get_threshold()
    run = (runtime, threading.Event(), lambda ids: None)
    thread = threading.Thread(target=dispatcher.run_dispatcher, args=run)
    thread.start()
    thread.join(10)
    assert seen == [(before, 0)]
    dispatcher.run_dispatcher(*run)  # type: ignore[arg-type]
    assert seen[1][0] == (YOUNG_COLLECTION_THRESHOLD, *before[1:]) and seen[1][1] > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_started_celery_worker_keeps_the_tuned_collector() -> None:
    """The ``worker_ready``/``worker_process_init`` handler: on the process's main thread
    the settings stay (the worker owns its process until it exits); started on another
    thread (a test's in-process worker) it leaves them alone."""
    before = gc.get_threshold()
    thread = threading.Thread(target=celery_app._tune_collector)
    thread.start()
    thread.join(10)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, 0)
    try:
        celery_app._tune_collector()
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
