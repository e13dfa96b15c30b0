"""Ingest throughput on PostgreSQL: events/s and CPU ms per event, with the raw floor.

Creates its own PostgreSQL database (``crosssell_bench_<random>``, dropped at the end),
migrates it, imports the demo catalog and, for each round, loads ``--events`` new
customers, then stores one purchase event per customer through the consumer's own path
(``worker.intake.consumer.handle_bodies``: validation, one transaction per batch, the rule
engine, the outbox) in batches of ``--batch`` bodies, as the consumer does after taking
them off the queue. The broker is left out: its cost is the same with or without
batches, and leaving it out keeps the figure about the database side.

Two cases, on a rule set of one campaign (``config/campaigns/laptop-accessories.yaml``):

* **one campaign matches**: laptop purchases; each plans (or holds out) an email, whose
  offer is resolved from the catalog;
* **nothing matches**: purchases of books under the campaign's minimum total.

Next to them, the **raw floor**: the same number of rows (the events' JSON) inserted
with psycopg alone, ``--batch`` rows per transaction: what the database and driver cost
without crosssell. CPU is this process's (``time.process_time``), not the server's.

Run ``python -m bench.ingest`` (``--help`` for the knobs, ``--profile`` for a cProfile
of one round). The script imports only the ``worker`` package, so the same file measures
an older checkout: ``PYTHONPATH=<checkout> python bench/ingest.py`` (a checkout without
``handle_bodies`` is driven one body at a time through ``handle_body``).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, insert, text

from bench.procstats import BackendCpu

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get(
    "CROSSSELL_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# A Tuesday morning in the campaign's send window (Europe/Bucharest).
NOW = datetime(2026, 11, 24, 8, 30, tzinfo=UTC)


@contextmanager
def bench_database(admin_url: str) -> Iterator[str]:
    """A new, migrated PostgreSQL database with the demo catalog, dropped afterwards."""
    name = f"crosssell_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        from worker.commands.migrate import upgrade

        upgrade(url)
        yield url
    finally:
        from worker.core.db import dispose_engines

        dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def load_customers(url: str, prefix: str, count: int) -> list[str]:
    """``count`` consenting customers with one earlier order each, inserted directly."""
    from worker.core.db import engine_for
    from worker.core.models import Customer

    ids = [f"{prefix}-{index:06d}" for index in range(count)]
    rows = [
        {
            "id": customer_id,
            "email": f"{customer_id.lower()}@example.ro",
            "first_name": "Ana",
            "last_name": "Popescu",
            "locale": "ro-RO",
            "timezone": "Europe/Bucharest",
            "email_marketing": True,
            "opted_out_kinds": [],
            "attributes": {},
            "orders_count": 1,
            "lifetime_spend": Decimal("120.00"),
            "first_purchase_at": NOW - timedelta(days=90),
            "last_purchase_at": NOW - timedelta(days=90),
            "categories_bought": ["books"],
            "skus_owned": [],
            "created_at": NOW - timedelta(days=90),
            "updated_at": NOW - timedelta(days=90),
        }
        for customer_id in ids
    ]
    with engine_for(url).begin() as connection:
        connection.execute(insert(Customer), rows)
    return ids


def purchase_body(customer_id: str, matching: bool) -> bytes:
    """One CRM purchase event as the queue carries it (JSON bytes)."""
    if matching:
        sku, category, price = "LAP-14-PRO", "laptops", "999.00"
    else:
        sku, category, price = "BOOK-1", "books", "20.00"
    document = {
        "id": f"evt-{uuid.uuid4().hex}",
        "type": "purchase",
        "occurred_at": (NOW - timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
        "customer": {
            "id": customer_id,
            "email": f"{customer_id.lower()}@example.ro",
            "first_name": "Ana",
            "locale": "ro-RO",
            "timezone": "Europe/Bucharest",
            "consent": {"email_marketing": True},
        },
        "data": {
            "order_id": f"ord-{uuid.uuid4().hex}",
            "currency": "RON",
            "total": price,
            "items": [{"sku": sku, "category": category, "quantity": 1, "unit_price": price}],
        },
    }
    return json.dumps(document).encode()


def store_function(runtime: Any) -> Callable[[Sequence[bytes]], list[Any]]:
    """The consumer's batch path, or, in a checkout before it, one body at a time."""
    from worker.intake import consumer

    batch = getattr(consumer, "handle_bodies", None)
    if batch is not None:
        return lambda bodies: list(batch(runtime, bodies))
    return lambda bodies: [consumer.handle_body(runtime, body) for body in bodies]


def measure(
    runtime: Any, url: str, count: int, batch: int, matching: bool, profile: bool, admin_url: str
) -> tuple[float, float, float]:
    """One round: events/s (wall), CPU ms per event of this process and of the
    PostgreSQL backends serving the bench database."""
    ids = load_customers(url, f"C-{uuid.uuid4().hex[:6]}", count)
    bodies = [purchase_body(customer_id, matching) for customer_id in ids]
    store = store_function(runtime)
    # The process's CPU clock: the default (wall) clock charges a loaded machine's waits
    # for a core to whichever function was waiting (docs/performance.md, "Ingest").
    profiler = cProfile.Profile(time.process_time) if profile else None
    server = BackendCpu(url, admin_url)
    wall, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    outcomes: list[Any] = []
    for start in range(0, count, batch):
        outcomes.extend(store(bodies[start : start + batch]))
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server_cpu = server.used()
    stored = sum(1 for handled in outcomes if handled.outcome == "stored")
    if stored != count:
        raise SystemExit(f"only {stored} of {count} events stored: {outcomes[:3]}")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    return count / wall, cpu * 1000 / count, server_cpu * 1000 / count


SCANNED_TABLES = ("customers", "events", "sends", "enrollments")


def table_scans(url: str) -> str:
    """Sequential scans so far of the tables a batch reads by lists of ids, and the rows
    they read (``pg_stat_user_tables``, after its half-second reporting delay)."""
    time.sleep(0.6)
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as connection:
        rows = connection.execute(
            "SELECT relname, seq_scan, seq_tup_read FROM pg_stat_user_tables"
            " WHERE relname = ANY(%s) ORDER BY relname",
            (list(SCANNED_TABLES),),
        ).fetchall()
    return "sequential scans " + ", ".join(
        f"{name} {scans} ({read:,} rows)" for name, scans, read in rows
    )


def raw_floor(url: str, count: int, batch: int) -> float:
    """Rows/s for ``count`` event-sized JSON rows inserted with psycopg alone."""
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    rows = [
        (f"evt-{uuid.uuid4().hex}", purchase_body(f"F-{index}", True).decode())
        for index in range(count)
    ]
    with psycopg.connect(conninfo) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS bench_floor "
            "(id bigserial PRIMARY KEY, event_id text UNIQUE, payload jsonb)"
        )
        connection.commit()
        started = time.perf_counter()
        for start in range(0, count, batch):
            with connection.transaction(), connection.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO bench_floor (event_id, payload) VALUES (%s, %s)",
                    rows[start : start + batch],
                )
        elapsed = time.perf_counter() - started
    return count / elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--batch", type=int, default=500, help="bodies per call (CROSSSELL_INGEST_BATCH's default)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile (process CPU clock) the first round"
    )
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's collector settings (the consumer process tunes them)",
    )
    parser.add_argument(
        "--each-round",
        action="store_true",
        help="print every round's rate and the sequential scans of the busiest tables so "
        "far (pg_stat_user_tables): whether batches slow down as the tables grow",
    )
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args(argv)

    from worker.core.clock import ShiftedClock
    from worker.core.settings import Settings
    from worker.process.runtime import Runtime

    workdir = Path(tempfile.mkdtemp(prefix="crosssell-bench-ingest-"))
    try:
        campaigns = workdir / "campaigns"
        campaigns.mkdir()
        shutil.copy(ROOT / "config" / "campaigns" / "laptop-accessories.yaml", campaigns)
        with bench_database(args.admin_url) as url:
            settings = Settings(
                var_dir=workdir / "var",
                database_url=url,
                campaigns_dir=campaigns,
                unsubscribe_keys="b1:bench-secret-0123456789",
            )
            from worker.commands.demo import seed_catalog

            seed_catalog(settings, NOW)
            runtime = Runtime(settings, clock=ShiftedClock(NOW))
            runtime.rules.current()  # load and compile the campaigns before any timing
            from worker.intake import consumer

            try:
                from worker.process import collector as service_collector
            except ImportError:  # a checkout before the collector settings
                service_collector = None

            path = (
                f"handle_bodies, batches of {args.batch}"
                if hasattr(consumer, "handle_bodies")
                else "handle_body, one event per transaction"
            )
            # The consumer process's collector settings (``crosssell consume`` runs with
            # them; a checkout before them has none).
            tuned = getattr(service_collector, "collector_for_service", None) or getattr(
                consumer, "collector_for_intake", None
            )
            collector = "default" if tuned is None or args.default_gc else "as crosssell consume"
            print(
                f"ingest on PostgreSQL ({consumer.__file__}): {args.events} events per round, "
                f"{args.rounds} rounds, {path}, garbage collector {collector}"
            )
            with tuned() if tuned is not None and not args.default_gc else nullcontext():
                for label, matching in (
                    ("one campaign matches", True),
                    ("nothing matches", False),
                ):
                    rates, cpus, servers = [], [], []
                    for round_number in range(args.rounds):
                        rate, cpu, server = measure(
                            runtime,
                            url,
                            args.events,
                            args.batch,
                            matching,
                            args.profile and round_number == 0 and matching,
                            args.admin_url,
                        )
                        rates.append(rate)
                        cpus.append(cpu)
                        servers.append(server)
                        if args.each_round:
                            print(
                                f"  {label}, round {round_number + 1}: {rate:.0f} events/s, "
                                f"CPU {cpu:.2f} ms/event, PostgreSQL {server:.2f}; "
                                f"{table_scans(url)}"
                            )
                    print(
                        f"{label:22} {min(rates):7.0f} to {max(rates):7.0f} events/s "
                        f"(median {statistics.median(rates):.0f}), "
                        f"CPU {min(cpus):.2f} to {max(cpus):.2f} ms/event, "
                        f"PostgreSQL {min(servers):.2f} to {max(servers):.2f} "
                        f"(median {statistics.median(servers):.2f})"
                    )
            floors = [raw_floor(url, args.events, args.batch) for _ in range(args.rounds)]
            print(
                f"{'raw floor (psycopg)':22} {min(floors):7.0f} to {max(floors):7.0f} rows/s "
                f"(median {statistics.median(floors):.0f}), {args.batch} INSERTs per transaction"
            )
            runtime.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
