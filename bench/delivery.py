"""Delivery cost per email: worker CPU and database round trips, with the raw floor.

``python -m bench.delivery [--sends N] [--batch B] [--profile | --profile-cpu]`` makes
its own PostgreSQL database (``CROSSSELL_BENCH_POSTGRES``, default the local server's ``test``
database as admin), ingests N purchases by N customers (one due send each, the fleet
tests' instant campaign), dispatches them, then delivers them in this process through
the SMTP provider to an aiosmtpd ``Sink`` running in its own process (so its CPU is not
counted). Printed per email:

* worker CPU (``time.process_time``: every thread of this process) and wall time;
* SQL statements and transactions sent to PostgreSQL; a round trip is a statement, plus
  ``BEGIN`` and ``COMMIT`` per transaction;
* PostgreSQL's CPU: the backends serving the bench database (``bench.procstats``), read
  before and after the deliveries;
* the floor, in the same run: the same renders, ``build_email`` calls and ``smtplib``
  sends on one connection, with no database and no recheck.

With this package's delivery (``deliver_batch``) the ids go in batches of B; a checkout
without it (the one-at-a-time ``deliver_send``) is measured one send per call, so the
same script measures before and after (run it with ``PYTHONPATH`` at the older tree).

``--celery POOL [--concurrency C]`` delivers the same sends through a real Celery
worker (RabbitMQ, ``--broker``) to compare worker pools: emails per second and the CPU
of the worker's whole process tree per email.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text

from bench.procstats import BackendCpu

ADMIN_URL = os.environ.get(
    "CROSSSELL_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def own_database() -> Iterator[str]:
    """A new database on the bench server, dropped afterwards."""
    name = f"crosssell_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from worker.core.db import dispose_engines

        dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def sink_process() -> Iterator[int]:
    """aiosmtpd's discarding ``Sink`` handler in a child process; yields its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    address = f"127.0.0.1:{port}"
    child = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink", "-l", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield port
    finally:
        child.terminate()
        child.wait(10)


@dataclass
class Counts:
    statements: int = 0
    transactions: int = 0

    @property
    def round_trips(self) -> int:
        return self.statements + 2 * self.transactions


def count_database(url: str) -> Counts:
    from worker.core.db import engine_for

    counts = Counts()
    engine = engine_for(url)

    def statement(*_: Any) -> None:
        counts.statements += 1

    def ended(*_: Any) -> None:
        counts.transactions += 1

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", ended)
    event.listen(engine, "rollback", ended)
    return counts


def run(
    sends: int, batch: int, profile: bool, cpu_clock: bool = False, profile_out: str | None = None
) -> None:
    import worker.outbox.delivery as delivery
    from tests.support.factories import make_settings
    from tests.support.fleet import fleet_env, seed_due_sends
    from worker.commands.migrate import upgrade
    from worker.outbox.dispatcher import dispatch_once
    from worker.process.runtime import Runtime

    with own_database() as url, sink_process() as port, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        upgrade(url)
        env = fleet_env(folder, url, "memory://")
        seed_due_sends(folder, env, sends)
        settings = make_settings(
            folder,
            database_url=url,
            campaigns_dir=Path(env["CROSSSELL_CAMPAIGNS_DIR"]),
            quiet_hours="off",
            unsubscribe_keys=env["CROSSSELL_UNSUBSCRIBE_KEYS"],
            email_provider="smtp",
            smtp_port=port,
            dispatch_batch=sends,
            dispatch_max_queued=sends,
            postal_address="1 Bench Street, Benchville",
        )
        runtime = Runtime(settings)
        ids: list[int] = []
        dispatch_once(runtime, ids.extend)
        assert len(ids) == sends, f"dispatched {len(ids)} of {sends}"

        renders: list[tuple[tuple[Any, ...], Any]] = []
        builds: list[Any] = []
        render, build = runtime.renderer.render, getattr(delivery, "build_email")  # noqa: B009

        def recorded_render(*arguments: Any) -> Any:
            renders.append((arguments, None))
            return render(*arguments)

        def recorded_build(envelope: Any, rendered: Any) -> Any:
            builds.append(envelope)
            return build(envelope, rendered)

        setattr(runtime.renderer, "render", recorded_render)  # noqa: B010
        setattr(delivery, "build_email", recorded_build)  # noqa: B010
        runtime.provider  # noqa: B018 - connect outside the measurement
        counts = count_database(url)
        server = BackendCpu(url, ADMIN_URL)
        batched = getattr(delivery, "deliver_batch", None)
        profiler = None
        if profile:
            profiler = cProfile.Profile(time.process_time) if cpu_clock else cProfile.Profile()
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        outcomes: dict[str, int] = {}
        if batched is not None:
            for first in range(0, len(ids), batch):
                for status in batched(runtime, ids[first : first + batch]).values():
                    outcomes[status] = outcomes.get(status, 0) + 1
        else:
            for send_id in ids:
                status = delivery.deliver_send(runtime, send_id)
                outcomes[status] = outcomes.get(status, 0) + 1
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        server_cpu = server.used()
        setattr(delivery, "build_email", build)  # noqa: B010
        setattr(runtime.renderer, "render", render)  # noqa: B010

        floor_cpu = floor(render, build, renders, builds, port)
        mode = f"deliver_batch, batches of {batch}" if batched else "deliver_send, one per call"
        print(f"delivery: {sends} sends, {mode}: {outcomes}")
        print(
            f"  worker CPU {cpu / sends * 1000:.2f} ms/email, wall {wall / sends * 1000:.2f} "
            f"ms/email ({sends / wall:.0f} emails/s)"
        )
        print(
            f"  database: {counts.statements / sends:.2f} statements, "
            f"{counts.transactions / sends:.2f} transactions, "
            f"{counts.round_trips / sends:.2f} round trips per email; PostgreSQL CPU "
            f"{server_cpu / sends * 1000:.2f} ms/email"
        )
        print(f"  floor (render + build_email + smtplib): {floor_cpu / sends * 1000:.2f} ms/email")
        if profiler is not None:
            from bench.timing import print_profile

            print_profile(profiler, 30)
            if profile_out:
                profiler.dump_stats(profile_out)
        runtime.close()


def run_celery(sends: int, batch: int, pool: str, concurrency: int, broker: str) -> None:
    """The same sends through ``celery -A worker.outbox.app worker --pool POOL``: emails per
    second between the first and the last ``sent_at``, and the CPU of the whole worker
    process tree (its children included) per email."""
    import resource

    from sqlalchemy import func, select

    from tests.support.fleet import fleet_env, seed_due_sends
    from worker.commands.migrate import upgrade
    from worker.core.db import transaction
    from worker.core.models import Send
    from worker.core.settings import get_settings
    from worker.outbox.dispatcher import celery_enqueue, dispatch_once
    from worker.process.runtime import Runtime, get_runtime

    with own_database() as url, sink_process() as port, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        upgrade(url)
        env = fleet_env(
            folder,
            url,
            broker,
            email_provider="smtp",
            smtp_port=str(port),
            smtp_pool_size=str(concurrency),
            dispatch_batch=str(sends),
            dispatch_max_queued=str(sends),
            delivery_batch=str(batch),
        )
        seed_due_sends(folder, env, sends)
        os.environ.update(env)
        get_settings.cache_clear()
        runtime = Runtime(get_settings())
        ids: list[int] = []
        dispatch_once(runtime, ids.extend)
        get_runtime()  # the Celery app configures itself from the environment set above
        try:
            celery_enqueue(ids, batch)
        except TypeError:  # an older tree: one task per send
            celery_enqueue(ids)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "worker.outbox.app", "worker"),
                *("--pool", pool, "--concurrency", str(concurrency), "--loglevel", "WARNING"),
                *("--without-mingle", "--without-gossip", "--without-heartbeat"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                with transaction(url) as session:
                    open_sends = session.scalar(
                        select(func.count())
                        .select_from(Send)
                        .where(Send.status.in_(["planned", "queued", "sending"]))
                    )
                if not open_sends:
                    break
                time.sleep(0.5)
        finally:
            worker.terminate()
            worker.wait(60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        with transaction(url) as session:
            first, last, sent = session.execute(
                select(func.min(Send.sent_at), func.max(Send.sent_at), func.count())
                .select_from(Send)
                .where(Send.status == "sent")
            ).one()
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        span = (last - first).total_seconds() if first and last else float("nan")
        print(
            f"celery --pool {pool} --concurrency {concurrency}, batches of {batch}: "
            f"{sent}/{sends} sent, {sent / span:.0f} emails/s, worker CPU "
            f"{cpu / max(sent, 1) * 1000:.2f} ms/email"
        )
        from worker.outbox.app import app

        with app.connection_for_write() as connection:
            connection.default_channel.queue_delete(env["CROSSSELL_DELIVER_QUEUE"])
        runtime.close()


def floor(
    render: Any,
    build: Any,
    renders: list[tuple[tuple[Any, ...], Any]],
    builds: list[Any],
    port: int,
) -> float:
    """CPU seconds of the same renders, builds and SMTP sends with nothing else."""
    connection = smtplib.SMTP("127.0.0.1", port)
    try:
        started = time.process_time()
        for (arguments, _), envelope in zip(renders, builds, strict=False):
            built = build(envelope, render(*arguments))
            connection.sendmail(built.sender, [built.recipient], built.data)
        return time.process_time() - started
    finally:
        connection.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary")
    parser.add_argument(
        "--profile-cpu",
        action="store_true",
        help="profile CPU time (time.process_time) instead of wall time: what the worker "
        "pays per email, without the waits for PostgreSQL and the SMTP sink",
    )
    parser.add_argument(
        "--profile-out", metavar="FILE", help="with --profile(-cpu): also save the pstats"
    )
    parser.add_argument(
        "--celery", metavar="POOL", help="deliver with a Celery worker of this pool instead"
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    options = parser.parse_args(argv)
    if options.celery:
        run_celery(
            options.sends, options.batch, options.celery, options.concurrency, options.broker
        )
    else:
        run(
            options.sends,
            options.batch,
            options.profile or options.profile_cpu,
            options.profile_cpu,
            options.profile_out,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
