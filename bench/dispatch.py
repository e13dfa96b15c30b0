"""Dispatcher CPU per email and its pick-up delay, on PostgreSQL and RabbitMQ.

``python -m bench.dispatch [--sends N] [--rate R] [--profile]`` makes its own database
(``CROSSSELL_BENCH_POSTGRES``, as ``bench.delivery``), plans N sends through the real
ingest path (the fleet tests' instant campaign and the shipped post-purchase journey, so
the sequence planner has work to look at), parks them in the future, then runs
``run_dispatcher`` in a thread with the default settings while a producer thread makes
them due at R sends/s in ingest-sized commits (every 50 ms, the consumer's linger),
waking the dispatcher the way ingest does when this tree has a wake-up. Tasks go to a
private queue on the broker (``--broker``), deleted afterwards.

Printed: the dispatcher thread's CPU (``time.thread_time``, so the producer's is not
counted) per email, with and without the publishes, and the delay from a send becoming
due (the producer's commit) to its ``queued_at``, p50 and p99. ``--profile`` adds a cProfile
summary of the dispatcher thread.
"""

from __future__ import annotations

import argparse
import cProfile
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bench.delivery import own_database

ROOT = Path(__file__).resolve().parents[1]


def run(sends: int, rate: float, profile: bool, broker: str) -> None:
    import os

    from tests.support.fleet import fleet_env, seed_due_sends
    from worker.commands.migrate import upgrade
    from worker.core.db import transaction
    from worker.core.models import Send
    from worker.core.settings import get_settings
    from worker.outbox import dispatcher
    from worker.process.runtime import Runtime

    with own_database() as url, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        upgrade(url)
        env = fleet_env(folder, url, broker)
        # The defaults, as `crosssell dispatch` runs, for the timing settings the fleet
        # tests shorten.
        for key in (
            "DISPATCH_INTERVAL",
            "DISPATCH_BATCH",
            "DISPATCH_MAX_QUEUED",
            "DELIVERY_BATCH",
            "REQUEUE_AFTER",
            "SENDING_TIMEOUT",
            "DELIVERY_LEASE",
        ):
            env.pop(f"CROSSSELL_{key}")
        shutil.copy(ROOT / "config/campaigns/post-purchase-journey.yaml", folder / "campaigns")
        seed_due_sends(folder, env, sends)
        os.environ.update(env)
        get_settings.cache_clear()
        runtime = Runtime(get_settings())
        future = datetime.now(UTC) + timedelta(days=365)
        with transaction(url) as session:
            ids = list(session.scalars(select(Send.id).where(Send.status == "planned")))
            session.execute(update(Send).where(Send.id.in_(ids)).values(send_at=future))
        ids.sort()
        wake: Callable[[Session], None] | None
        try:
            from worker.core.wakeup import wake_dispatcher as wake
        except ImportError:  # a tree from before the wake-up: polling only
            wake = None
        if not hasattr(dispatcher, "Waiter"):
            wake = None  # a dispatcher that does not listen (an older tree on this path)
        stop = threading.Event()
        publish_cpu = [0.0]
        profiler = cProfile.Profile() if profile else None

        from worker.outbox.dispatcher import celery_enqueue

        def enqueue(batch: Sequence[int]) -> None:
            started = time.thread_time()
            celery_enqueue(batch, runtime.settings.delivery_batch)
            publish_cpu[0] += time.thread_time() - started

        def dispatch() -> None:
            if profiler is not None:
                profiler.enable()
            dispatcher.run_dispatcher(runtime, stop, enqueue)
            if profiler is not None:
                profiler.disable()

        thread = threading.Thread(target=dispatch, name="dispatcher")
        thread.start()
        time.sleep(3)  # start-up (rules, connections) is not counted per email
        assert thread.ident is not None
        clock = time.pthread_getcpuclockid(thread.ident)
        started_cpu = time.clock_gettime(clock)
        publish_cpu[0] = 0.0

        committed_at: dict[int, datetime] = {}

        def producer() -> None:
            per_commit = max(1, round(rate * 0.05))
            for first in range(0, len(ids), per_commit):
                chunk = ids[first : first + per_commit]
                with transaction(url) as session:
                    session.execute(
                        update(Send).where(Send.id.in_(chunk)).values(send_at=datetime.now(UTC))
                    )
                    if wake is not None:
                        wake(session)
                committed = datetime.now(UTC)
                for send_id in chunk:
                    committed_at[send_id] = committed
                time.sleep(per_commit / rate)

        producing = threading.Thread(target=producer, name="producer")
        producing.start()
        producing.join()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with transaction(url) as session:
                left = session.scalar(select(Send.id).where(Send.status == "planned").limit(1))
            if left is None:
                break
            time.sleep(0.2)
        time.sleep(2)
        total = time.clock_gettime(clock) - started_cpu
        stop.set()
        thread.join(30)
        with transaction(url) as session:
            rows = session.execute(
                select(Send.id, Send.queued_at).where(Send.queued_at.is_not(None))
            ).all()
        # From the producer's commit (a little after it: the producer notes the time once
        # its commit returned) to the claim's clock: may be slightly negative.
        delays = sorted(
            (queued - committed_at[send_id]).total_seconds()
            for send_id, queued in rows
            if queued is not None
        )
        print(
            f"dispatch: {len(rows)}/{sends} sends queued at {rate:.0f}/s "
            f"({'polling only' if wake is None else 'woken by ingest'})"
        )
        print(
            f"  dispatcher thread CPU {total / sends * 1000:.3f} ms/email "
            f"(publishing {publish_cpu[0] / sends * 1000:.3f}, the rest "
            f"{(total - publish_cpu[0]) / sends * 1000:.3f})"
        )
        if delays:
            p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
            print(
                f"  committed due -> queued: p50 {statistics.median(delays) * 1000:.0f} ms, "
                f"p99 {p99 * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms"
            )
        if profiler is not None:
            from bench.timing import print_profile

            print_profile(profiler, 30)
        from worker.outbox.app import app

        with app.connection_for_write() as connection:
            connection.default_channel.queue_delete(env["CROSSSELL_DELIVER_QUEUE"])
        runtime.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="sends made due per second")
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary")
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    options = parser.parse_args(argv)
    run(options.sends, options.rate, options.profile, options.broker)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
