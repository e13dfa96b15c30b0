"""``crosssell run``: consumer, dispatcher and Celery worker in one process.

The consumer and the dispatcher run in threads; the Celery worker owns the main thread
(it needs the signal handlers). With ``until_drained`` a watcher stops everything once
no event waits in the queue and no send is due, queued or in flight — the demo uses it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from kombu.connection import Connection
from sqlalchemy import func, select

from worker.core.db import transaction
from worker.core.models import Send
from worker.core.topology import events_queue, transport_options
from worker.intake.consumer import EventConsumer, run_consumer
from worker.outbox.dispatcher import run_dispatcher
from worker.process.runtime import Runtime
from worker.process.startup import announce_combined

log = logging.getLogger(__name__)


def waiting_events(runtime: Runtime) -> int:
    url = runtime.settings.resolved_events_url
    with Connection(url, transport_options=transport_options(url)) as connection:
        queue = events_queue(runtime.settings)(connection.default_channel)
        _, count, _ = queue.queue_declare(passive=True)
        return int(count)


def pending_sends(runtime: Runtime) -> int:
    now = runtime.clock.now()
    with transaction(runtime.settings.resolved_database_url) as session:
        in_flight = session.scalar(
            select(func.count()).select_from(Send).where(Send.status.in_(("queued", "sending")))
        )
        due = session.scalar(
            select(func.count())
            .select_from(Send)
            .where(Send.status == "planned", Send.send_at <= now)
        )
    return int(in_flight or 0) + int(due or 0)


def _watch_until_drained(
    runtime: Runtime, consumer_ready: threading.Event, interval: float = 1.0
) -> None:
    consumer_ready.wait()
    calm = 0
    while calm < 3:
        time.sleep(interval)
        try:
            idle = waiting_events(runtime) == 0 and pending_sends(runtime) == 0
        except Exception:
            log.exception("drain check failed")
            idle = False
        calm = calm + 1 if idle else 0
    log.info("pipeline drained; stopping")
    # A warm shutdown, as SIGTERM would ask for, without Celery's "worker: Warm shutdown"
    # line on stdout: the worker's loop checks this flag on every turn.
    from celery.worker import state

    state.should_stop = 0


def _fatal_if_it_ends(
    target: Callable[..., object], failed: threading.Event, stop: threading.Event
) -> Callable[..., None]:
    """Wrap a service thread's body: if it ends by an exception, or returns while the
    process is not stopping, mark the process failed and stop it (SIGTERM makes Celery's
    worker shut down warmly). A dead consumer thread in a live process would leave the
    events queue growing with nobody reading it."""

    def body(*args: object) -> None:
        try:
            target(*args)
        except BaseException as exc:
            log.critical(
                "%s thread died (%s); stopping the process",
                threading.current_thread().name,
                type(exc).__name__,
                exc_info=True,
            )
        else:
            if stop.is_set():
                return
            log.critical("%s thread ended unexpectedly; stopping", threading.current_thread().name)
        failed.set()
        os.kill(os.getpid(), signal.SIGTERM)

    return body


def run_all(
    runtime: Runtime,
    until_drained: bool = False,
    concurrency: int = 1,
    loglevel: str | None = None,
) -> int:
    """Run until stopped (SIGTERM, or drained with ``until_drained``); the exit code.
    ``loglevel``: for the embedded Celery worker, which sets the root logger's level;
    default: the level logging has now, so the command line's choice stands."""
    if loglevel is None:
        loglevel = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    from celery.beat import EmbeddedService

    from worker.outbox.app import app

    announce_combined(runtime)  # one line for the consumer, dispatcher and worker
    stop = threading.Event()
    failed = threading.Event()
    consumer_ready = threading.Event()
    consumers: list[EventConsumer] = []

    def started(consumer: EventConsumer) -> None:
        consumers.append(consumer)
        runtime.consumer = consumer
        consumer_ready.set()

    threads = [
        threading.Thread(
            target=_fatal_if_it_ends(run_consumer, failed, stop),
            args=(runtime, started),
            name="consumer",
            daemon=True,
        ),
        threading.Thread(
            target=_fatal_if_it_ends(run_dispatcher, failed, stop),
            args=(runtime, stop),
            name="dispatcher",
            daemon=True,
        ),
    ]
    if until_drained:
        threads.append(
            threading.Thread(
                target=_watch_until_drained,
                args=(runtime, consumer_ready),
                name="drain-watch",
                daemon=True,
            )
        )
    for thread in threads:
        thread.start()
    options: dict[str, Any] = {
        "pool": "solo" if concurrency == 1 else "threads",
        "concurrency": concurrency,
        "loglevel": loglevel,
        "without_mingle": True,
        "without_gossip": True,
        "without_heartbeat": True,
        "quiet": True,
    }
    # Celery beat (the periodic recommendations rebuild) in a thread of this process:
    # Celery's ``beat=True`` forks it as a child while the consumer and dispatcher threads
    # hold locks, and such a child could hang on a lock no thread of it will ever release,
    # outliving ``crosssell run`` with the SQLite files open.
    beat = EmbeddedService(app, thread=True)
    worker = app.Worker(**options)
    try:
        beat.start()
        worker.start()
    finally:
        beat.stop()
        stop.set()
        for consumer in consumers:
            consumer.should_stop = True
        for thread in threads[:2]:
            thread.join(timeout=10)
    if failed.is_set():
        return 1
    return int(worker.exitcode or 0)
