"""worker.intake.consumer.collector_for_intake: the consumer process's collector settings
hold while it consumes and are undone after, and a consumer on another thread than the
process's main one leaves the collector alone."""

from __future__ import annotations

import gc
import threading

import pytest

from worker.intake import consumer
from worker.intake.consumer import YOUNG_COLLECTION_THRESHOLD, collector_for_intake


def test_the_collector_is_tuned_while_consuming_and_restored_after() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with collector_for_intake():
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0  # what the process built before consuming
        assert gc.isenabled()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_collector_is_restored_when_consuming_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), collector_for_intake():
        raise RuntimeError("the broker went away")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cycles_are_still_collected_while_consuming() -> None:
    class Node:
        pass

    with collector_for_intake():
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
    ingest_batch = 200
    ingest_linger = 0.05


class _Runtime:
    settings = _Settings()
