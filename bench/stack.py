"""``make bench``: the production stack of this machine, measured end to end.

    python -m bench.stack [--events N] [--bursts N] [--customers N] [--workers N]
                          [--pool prefork|threads] [--concurrency N] [--skip-floor]
                          [--skip-embedded] [--json FILE] [--soak]

What it does, in order (docs/performance.md has the whole story):

1. creates its own PostgreSQL database and RabbitMQ virtual host on the shared servers
   (bench/services.py), runs ``crosssell migrate`` and ``crosssell catalog import
   config/demo/catalog.csv`` as the README does, and loads a generated shop with COPY
   (``--customers``, each with 1-4 past orders of the demo catalog: bench/shop.py);
2. starts the SMTP sink in its own process (bench/sink.py) and measures what it takes
   from raw smtplib clients, to show it is not the bottleneck;
3. starts ``crosssell consume``, ``crosssell dispatch`` and ``celery -A worker.outbox.app
   worker`` as the README's process table does, configured only through ``CROSSSELL_*``
   variables, on the shipped campaigns and templates with their delays set to 0 and
   their send windows removed (quiet hours off), so that every
   matching event is due at once;
4. publishes with pika (bench/stream.py): a warm-up (in waves until every Celery worker
   has delivered an email), then ``--bursts`` bursts of ``--events`` events as fast as
   it can (the median one reported), then the same mix paced at half the burst's rate;
   measures delivered emails/s, latency publish → accepted at the sink, CPU and memory
   of every process (bench/procstats.py) and the database's work per email;
5. stops dispatcher and workers and measures the consumer alone: events/s with nothing
   matching and with one campaign matching every event (the queue filled beforehand);
6. measures the floor in the same run (bench/floor.py) and the embedded mode
   (``crosssell run`` on SQLite with the file provider, at concurrency 1 and 4);
7. prints a table of every figure with its target and verdict, drops the database and
   the virtual host.

``--soak`` instead runs ``--events`` (default 300,000) through the stack in chunks,
samples the RSS of every process every 2 s and prints each one's growth after warm-up,
and counts lost and duplicated emails at the sink. Nothing here asserts a time: figures
are printed, never tested.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from bench import floor as floor_module
from bench import profile as profile_module
from bench import sink as sink_module
from bench.procstats import Group, Sampler, children_of, find_by_command
from bench.services import admin_connection, bench_database, bench_vhost, driver_url
from bench.shop import CatalogItem, load_catalog_customers
from bench.stream import Planned, Publisher, mix
from bench.timing import machine_line, percentile

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CATALOG = ROOT / "config" / "demo" / "catalog.csv"
OPEN = ("planned", "queued", "sending")
MB = 1024 * 1024

# The targets of issue 16 ("Two million emails an hour on two cores").
TARGET_EMAILS_PER_S = 550.0
TARGET_FLOOR_RATIO = 0.5
TARGET_INGEST_NOTHING = 3000.0
TARGET_INGEST_MATCH = 1000.0
TARGET_P99_S = 1.0
TARGET_CPU_MS = 3.6
TARGET_RSS_MB = 200.0
TARGET_EMBEDDED = 200.0
TARGET_SOAK_GROWTH = 0.10
WARMUP_WAVES = 4
# A rate or a percentile measured over less than this is printed but not judged: a phase
# that short is mostly its start and its end (--events 40, --ingest-events 100).
MIN_JUDGED_S = 1.0
# The Celery worker's line for a delivered email (worker.outbox.delivery logs it at INFO).
SENT_LINE = re.compile(r"\bsend \d+ sent\b")
# Process groups that are not crosssell's (bench/procstats.py): printed, never judged.
NOT_OURS = ("postgresql", "rabbitmq", "sink", "bench (publisher)")


def say(text: str = "") -> None:
    print(text, flush=True)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# --- campaigns ---------------------------------------------------------------------------


def bench_campaigns(directory: Path) -> int:
    """The shipped campaign files, each with every delay 0 and no send window: the
    processes run on the real clock, and every matching event must be due now. (A window
    of the whole week, 00:00 to 23:59, left out the last minute of each day: a burst
    that met 23:59 in a customer's time zone had those sends wait until midnight.)"""
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted((ROOT / "config" / "campaigns").glob("*.yaml")):
        source = path.read_text(encoding="utf-8")
        changed = re.sub(r"(?m)^[ \t]+window: \{[^}]*\}[ \t]*\n", "", source)
        changed = re.sub(r"(?m)^(\s+)delay: \S+", r"\1delay: 0m", changed)
        (directory / path.name).write_text(changed, encoding="utf-8")
        count += 1
    return count


def catalog_items() -> list[CatalogItem]:
    with CATALOG.open(encoding="utf-8", newline="") as f:
        return [
            CatalogItem(row["sku"], row["category"], Decimal(row["price"]))
            for row in csv.DictReader(f)
        ]


# --- processes ---------------------------------------------------------------------------


class Stack:
    """The started processes, by name, each logging to ``<logs>/<name>.log``."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.commands: dict[str, tuple[str, ...]] = {}
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *command: str) -> None:
        self.commands[name] = command
        with (self.logs / f"{name}.log").open("ab") as log:
            self.running[name] = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def restart(self, name: str) -> None:
        self.start(name, *self.commands[name])

    def stop(self, *names: str) -> None:
        chosen = names or tuple(self.running)
        for name in chosen:
            if name in self.running:
                self.running[name].send_signal(signal.SIGTERM)
        for name in chosen:
            process = self.running.pop(name, None)
            if process is None:
                continue
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def pids(self, name: str) -> set[int]:
        process = self.running.get(name)
        if process is None or process.poll() is not None:
            return set()
        return children_of([process.pid])

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, process in self.running.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited ({process.returncode}):\n{self.log(name)[-3000:]}"
                )


def run_command(env: dict[str, str], *command: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


# --- database ----------------------------------------------------------------------------


class Database:
    """The harness's one connection to the bench database. It counts its own statements
    and table scans, so they can be taken out of the per-email figures."""

    def __init__(self, url: str) -> None:
        self.name = url.rsplit("/", 1)[1]
        self.connection = psycopg.connect(driver_url(url), autocommit=True)
        self.statements = 0
        self.scans = 0
        self.statements_extension = False
        try:
            self.connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self.connection.execute("SELECT count(*) FROM pg_stat_statements")
            self.statements_extension = True
        except psycopg.Error:
            pass  # not in shared_preload_libraries: the proxies below are used instead

    def rows(self, sql: str, parameters: Sequence[object] = (), scans: int = 1) -> list[Any]:
        """All rows of one statement (one transaction: autocommit)."""
        self.statements += 1
        self.scans += scans
        return list(self.connection.execute(sql, parameters).fetchall())

    def scalar(self, sql: str, parameters: Sequence[object] = (), scans: int = 1) -> Any:
        return self.rows(sql, parameters, scans)[0][0]

    def events(self) -> int:
        return int(self.scalar("SELECT count(*) FROM events"))

    def open_due(self) -> int:
        return int(
            self.scalar(
                "SELECT count(*) FROM sends WHERE status = ANY(%s)"
                " AND (send_at IS NULL OR send_at <= now())",
                (list(OPEN),),
            )
        )

    def counters(self) -> dict[str, float]:
        """Cumulative counters of the bench database (pg_stat_database,
        pg_stat_user_tables, and pg_stat_statements' calls when it is loaded), with the
        harness's own statements and scans so far."""
        with admin_connection() as admin:
            row = admin.execute(
                "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted"
                " FROM pg_stat_database WHERE datname = %s",
                (self.name,),
            ).fetchone()
        assert row is not None
        tables = self.rows(
            "SELECT coalesce(sum(seq_scan), 0), coalesce(sum(idx_scan), 0)"
            " FROM pg_stat_user_tables",
            scans=0,
        )[0]
        counters = {
            "commits": float(row[0]),
            "rollbacks": float(row[1]),
            "rows_written": float(row[2] + row[3] + row[4]),
            "table_scans": float(tables[0] + tables[1]),
        }
        if self.statements_extension:
            counters["statements"] = float(
                self.scalar(
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                    " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)",
                    (self.name,),
                    scans=0,
                )
            )
        counters["own_statements"] = float(self.statements)
        counters["own_scans"] = float(self.scans)
        return counters

    def close(self) -> None:
        self.connection.close()


def database_work(
    before: dict[str, float], after: dict[str, float], emails: int
) -> dict[str, float]:
    """Per email: transactions, table scans, rows written (and statements when
    pg_stat_statements is loaded), less the harness's own queries."""
    own = after["own_statements"] - before["own_statements"]
    own_scans = after["own_scans"] - before["own_scans"]
    per = max(emails, 1)
    work = {
        "commits_per_email": (after["commits"] - before["commits"] - own) / per,
        "rollbacks_per_email": (after["rollbacks"] - before["rollbacks"]) / per,
        "table_scans_per_email": (after["table_scans"] - before["table_scans"] - own_scans) / per,
        "rows_written_per_email": (after["rows_written"] - before["rows_written"]) / per,
    }
    if "statements" in after:
        work["statements_per_email"] = (after["statements"] - before["statements"] - own) / per
    return work


# --- results -----------------------------------------------------------------------------


@dataclass
class Delivery:
    label: str
    events: int
    emails: int
    seconds: float
    emails_per_s: float
    events_per_s: float
    latency_p50: float
    latency_p99: float
    latency_max: float
    lost: int
    duplicates: int
    unexpected: int
    outcomes: dict[str, int]
    cpu: dict[str, float]
    database: dict[str, float]
    # seconds after the first publish: the last publish, the first and the last send
    # stored by the consumer, the first and the last email at the sink
    timeline: dict[str, float] = field(default_factory=dict)
    # what the phase's event ids start with ("bench-burst-"): the floor replays its emails
    event_prefix: str = ""


@dataclass
class Ingest:
    label: str
    events: int
    seconds: float
    events_per_s: float
    cpu_ms_per_event: dict[str, float]


@dataclass
class Results:
    machine: str
    settings: dict[str, Any]
    setup_seconds: dict[str, float] = field(default_factory=dict)
    sink_capacity: dict[str, float] = field(default_factory=dict)
    sink_cpu_ms_per_message: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)
    ingest: list[Ingest] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    processes: int = 0
    floor_emails_per_s: float | None = None
    embedded: dict[str, float] = field(default_factory=dict)
    # the seconds between the first and the last file each embedded rate was taken over
    embedded_seconds: dict[str, float] = field(default_factory=dict)
    soak: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, list[str]] = field(default_factory=dict)
    # the label of the burst the table reports: the median of --bursts by emails/s ("" in
    # a soak, which has none)
    burst: str = ""


# --- the bench ---------------------------------------------------------------------------


class Bench:
    def __init__(self, options: argparse.Namespace, work: Path, database_url: str, amqp: str):
        self.options = options
        self.work = work
        self.database_url = database_url
        self.amqp = amqp
        self.sink_log = work / "sink.log"
        self.sink_port = _free_port()
        self.campaigns = work / "campaigns"
        (work / "logs").mkdir()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CROSSSELL_")},
            "CROSSSELL_DATABASE_URL": database_url,
            "CROSSSELL_EVENTS_URL": amqp,
            "CROSSSELL_BROKER_URL": amqp,
            "CROSSSELL_EMAIL_PROVIDER": "smtp",
            "CROSSSELL_SMTP_HOST": "127.0.0.1",
            "CROSSSELL_SMTP_PORT": str(self.sink_port),
            "CROSSSELL_SMTP_POOL_SIZE": str(options.concurrency),
            "CROSSSELL_POSTAL_ADDRESS": "Strada Exemplu 1, 010101 Bucure\u0219ti, Romania",
            "CROSSSELL_UNSUBSCRIBE_KEYS": "k1:a-long-random-bench-secret",
            "CROSSSELL_CAMPAIGNS_DIR": str(self.campaigns),
            "CROSSSELL_VAR_DIR": str(work / "var"),
            "CROSSSELL_QUIET_HOURS": "off",
        }
        for setting in options.env:
            key, _, value = setting.partition("=")
            self.env[key] = value
        self.stack = Stack(self.env, work / "logs")
        self.results = Results(
            machine=machine_line(),
            settings={
                key: str(value) if isinstance(value, Path) else value
                for key, value in vars(options).items()
            },
        )
        self.db: Database | None = None
        self.publisher: Publisher | None = None
        self.sampler: Sampler | None = None
        self.next_customer = 0
        self.customers_used_up = False
        self.worker_names = [f"celery-{k}" for k in range(options.workers)]
        self.events_queue = self.env.get("CROSSSELL_EVENTS_QUEUE", "crosssell.events")
        self.exchange = self.env.get("CROSSSELL_EVENTS_EXCHANGE", "crm.events")
        # The batched rewrite may fold the dispatcher into the workers: run it if it exists.
        self.dispatcher = (
            subprocess.run(
                [str(BIN / "crosssell"), "dispatch", "--help"], capture_output=True, check=False
            ).returncode
            == 0
        )

    # setup -----------------------------------------------------------------------------

    def setup(self) -> None:
        campaigns = bench_campaigns(self.campaigns)
        started = time.perf_counter()
        say("  " + run_command(self.env, "crosssell", "migrate"))
        say(
            "  "
            + run_command(
                self.env, "crosssell", "catalog", "import", str(CATALOG.relative_to(ROOT))
            )
        )
        self.results.setup_seconds["migrate_and_catalog"] = time.perf_counter() - started
        started = time.perf_counter()
        lines = load_catalog_customers(self.database_url, self.options.customers, catalog_items())
        took = time.perf_counter() - started
        self.results.setup_seconds["shop_load"] = took
        say(
            f"  shop: {self.options.customers:,} customers with {lines:,} past order lines "
            f"loaded in {took:.1f} s (COPY); {campaigns} shipped campaigns, delays 0, "
            "no send windows, quiet hours off"
        )
        self.db = Database(self.database_url)

    def start_sink(self) -> None:
        self.stack.start(
            "sink",
            sys.executable,
            "-m",
            "bench.sink",
            "--port",
            str(self.sink_port),
            "--log",
            str(self.sink_log),
        )
        wait_for(lambda: _port_open(self.sink_port), 20, "the SMTP sink")

    def start_sampler(self) -> None:
        rabbit = find_by_command("beam.smp", exclude="crosssell-test")
        admin = admin_connection()
        name = self.db.name if self.db else ""

        def backends() -> set[int]:
            rows = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchall()
            return {int(row[0]) for row in rows}

        groups = [
            Group("consume", lambda: self.stack.pids("consume")),
            Group("dispatch", lambda: self.stack.pids("dispatch")),
            *[
                Group(worker, lambda w=worker: self.stack.pids(w))  # type: ignore[misc]
                for worker in self.worker_names
            ],
            Group("postgresql", backends, summed_rss=False),
            Group("rabbitmq", lambda: set(rabbit)),
            Group("sink", lambda: self.stack.pids("sink")),
            Group("bench (publisher)", lambda: {os.getpid()}),
        ]
        self.sampler = Sampler(groups, interval=2.0 if self.options.soak else 1.0)
        self.sampler.start()

    def measure_sink(self) -> None:
        count = self.options.sink_messages
        if count <= 0:
            return
        size = 20_000
        assert self.sampler is not None
        before = self.sampler.cpu()["sink"]
        one = sink_module.measure_capacity(self.sink_port, count, size, 1)
        middle = self.sampler.cpu()["sink"]
        two = sink_module.measure_capacity(self.sink_port, count, size, 2)
        after = self.sampler.cpu()["sink"]
        del middle
        cpu_ms = (after - before) * 1000 / (2 * count)
        ceiling = 1000 / cpu_ms if cpu_ms > 0 else float("inf")
        self.results.sink_capacity = {
            "one_client": one,
            "two_clients": two,
            "ceiling_per_core": ceiling,
        }
        self.results.sink_cpu_ms_per_message = cpu_ms
        say(
            f"  SMTP sink ({size // 1000} kB messages from raw smtplib clients over persistent "
            f"connections): {one:,.0f} msgs/s from 1 client process, {two:,.0f} msgs/s from "
            f"2; the sink's own CPU {cpu_ms:.3f} ms/message, i.e. ~{ceiling:,.0f} msgs/s "
            "per core of sink (the clients, not the sink, set those rates)"
        )

    def start_stack(self) -> None:
        crosssell = str(BIN / "crosssell")
        self.stack.start("consume", crosssell, "consume")
        if self.dispatcher:
            self.stack.start("dispatch", crosssell, "dispatch")
        for k, name in enumerate(self.worker_names):
            self.stack.start(
                name,
                str(BIN / "celery"),
                "-A",
                "worker.outbox.app",
                "worker",
                "--pool",
                self.options.pool,
                "--concurrency",
                str(self.options.concurrency),
                "--loglevel",
                "INFO",
                "-n",
                f"bench{k}@%h",
            )
        self.publisher = Publisher(self.amqp, self.exchange)

        def queue_ready() -> bool:
            self.stack.check_alive()
            try:
                probe = Publisher(self.amqp, self.exchange)
            except Exception:
                return False
            try:
                probe.queue_depth(self.events_queue)
                return True
            except Exception:
                return False
            finally:
                probe.close()

        wait_for(queue_ready, 90, "the consumer's queue")
        for name in self.worker_names:
            wait_for(lambda n=name: " ready." in self.stack.log(n), 90, f"{name} ready")  # type: ignore[misc]
        if self.dispatcher:
            wait_for(lambda: "dispatch: database" in self.stack.log("dispatch"), 60, "dispatch")

    # profiles --------------------------------------------------------------------------

    def start_profiles(self) -> list[profile_module.Recording]:
        if self.options.profile is None:
            return []
        if profile_module.py_spy() is None:
            say("  --profile: py-spy is not installed (pip install py-spy); no profiles")
            return []
        recordings = []
        for name in ("consume", "dispatch", *self.worker_names):
            process = self.stack.running.get(name)
            if process is None:
                continue
            recording = profile_module.start(
                name, process.pid, self.options.profile, self.options.pool == "prefork"
            )
            if recording is not None:
                recordings.append(recording)
        time.sleep(1.0)  # py-spy attaches
        return recordings

    def finish_profiles(self, recordings: list[profile_module.Recording]) -> None:
        for recording in recordings:
            profile_module.stop(recording)
            lines = profile_module.summarise(recording.output)
            self.results.profiles[recording.name] = lines
            for line in lines:
                say(line)

    # phases ----------------------------------------------------------------------------

    def events(self, label: str, count: int, **mix_options: Any) -> list[Planned]:
        customers = self.options.customers
        if not self.customers_used_up and self.next_customer + count > customers:
            # Once, when the phases first come round to customers who already had an event:
            # their campaigns' cooldowns then decide, and the figures stop being the mix's.
            self.customers_used_up = True
            say(
                f"  WARNING: {label}: the shop's {customers:,} customers are used up; from "
                f"here events go again to customers who had one (cooldowns, fewer emails): "
                "give --customers more"
            )
        planned = mix(
            f"bench-{label}",
            count,
            self.next_customer,
            self.options.customers,
            **mix_options,
        )
        self.next_customer += count
        return planned

    def warm_up(self) -> None:
        """Waves of ``--warmup-events`` matching events, each delivered before the next,
        until every Celery worker has delivered an email (its log has a ``send N sent``
        line; with ``--pool prefork``, any one of its children), at most ``WARMUP_WAVES``.
        One wave is one dispatcher pass, often one task, so one worker: the others would
        pay their first-use work (the first connections, statements compiled, locale
        data) inside the timed burst."""
        for wave in range(1, WARMUP_WAVES + 1):
            self.delivery(
                "warm-up" if wave == 1 else f"warm-up, wave {wave}",
                self.events(
                    "warmup" if wave == 1 else f"warmup{wave}",
                    self.options.warmup_events,
                    match_share=1.0,
                ),
                None,
            )
            cold = [
                name for name in self.worker_names if not SENT_LINE.search(self.stack.log(name))
            ]
            if not cold:
                return
        say(
            f"  warm-up: {', '.join(cold)} delivered nothing in {WARMUP_WAVES} waves: the "
            "burst includes its first-use work"
        )

    def bursts(self) -> Delivery:
        """``--bursts`` bursts of ``--events``, published as fast as pika goes, each
        delivered before the next; returns the median one by emails/s (the upper
        median of an even count), which the table reports."""
        count: int = self.options.bursts
        done = [
            self.delivery(
                "burst" if count == 1 else f"burst {k} of {count}",
                self.events("burst" if k == 1 else f"burst{k}", self.options.events),
                None,
            )
            for k in range(1, count + 1)
        ]
        median = sorted(done, key=lambda d: d.emails_per_s)[count // 2]
        self.results.burst = median.label
        if count > 1:
            rates = ", ".join(f"{d.emails_per_s:,.1f}" for d in done)
            say(f"  bursts: {rates} emails/s; the table reports the median, {median.label}")
        return median

    def delivery(self, label: str, planned: list[Planned], rate: float | None) -> Delivery:
        assert self.db and self.publisher and self.sampler
        base = self.db.events()
        cpu_before = self.sampler.cpu()
        db_before = self.db.counters()
        self.publisher.publish(planned, rate)
        total = base + len(planned)

        def settled() -> bool:
            self.stack.check_alive()
            return self.db is not None and self.db.events() >= total and self.db.open_due() == 0

        wait_for(settled, self.options.timeout, f"{label}: every event stored and sent", 0.5)
        prefix = planned[0].event_id.rsplit("-", 1)[0] + "-"
        rows = self.db.rows(
            "SELECT event_id, CASE WHEN send_at > now() AND status = 'planned'"
            " THEN 'planned for later' ELSE status END, coalesce(reason, ''), message_id"
            " FROM sends WHERE event_id LIKE %s",
            (prefix + "%",),
        )
        sent = {row[3]: row[0] for row in rows if row[1] == "sent"}

        def at_sink() -> bool:
            seen = {mid for _, mid in sink_module.read_log(self.sink_log)}
            return set(sent) <= seen

        with suppress(TimeoutError):  # what never arrives is counted as lost below
            wait_for(at_sink, 15, "the sent emails at the sink", 0.5)
        time.sleep(1.5)  # the processes' last CPU ticks (the sampler reads /proc each second)
        cpu_after = self.sampler.cpu()
        # A backend that reported its statistics less than a second before going idle
        # keeps the rest until it has been idle 10 s (PostgreSQL 15's pgstat.c,
        # PGSTAT_IDLE_INTERVAL): read earlier, the phase's last second of database work
        # would be counted in the next phase.
        time.sleep(self.options.stats_settle - 1.5)
        db_after = self.db.counters()
        arrivals: dict[str, list[float]] = {}
        for stamp, mid in sink_module.read_log(self.sink_log):
            arrivals.setdefault(mid, []).append(stamp)
        published = self.publisher.published_at
        latencies = sorted(
            arrivals[mid][0] - published[event_id]
            for mid, event_id in sent.items()
            if mid in arrivals
        )
        emails = len(latencies)
        start = min(published[p.event_id] for p in planned)
        last = max((arrivals[mid][0] for mid in sent if mid in arrivals), default=start)
        seconds = max(last - start, 1e-9)
        known = {row[0] for row in self.db.rows("SELECT message_id FROM sends", scans=1)}
        unexpected = sum(
            len(times)
            for mid, times in arrivals.items()
            if mid not in known and not mid.startswith(("<sinkcap-", "<floor-"))
        )
        outcomes = Counter(f"{status} {reason}".strip() for _, status, reason, _ in rows)
        outcomes["no decision planned (not matching)"] = len(planned) - len(
            {row[0] for row in rows}
        )
        cpu = {name: cpu_after[name] - cpu_before[name] for name in cpu_after}
        stored = self.db.rows(
            "SELECT extract(epoch FROM min(created_at)), extract(epoch FROM max(created_at))"
            " FROM sends WHERE event_id LIKE %s",
            (prefix + "%",),
        )[0]
        firsts = sorted(times[0] for mid, times in arrivals.items() if mid in sent)
        timeline = {
            "last publish": max(published[p.event_id] for p in planned) - start,
            "first send stored": float(stored[0] or start) - start,
            "last send stored": float(stored[1] or start) - start,
            "first email": (firsts[0] if firsts else start) - start,
            "last email": last - start,
        }
        result = Delivery(
            label=label,
            event_prefix=prefix,
            events=len(planned),
            emails=emails,
            seconds=seconds,
            emails_per_s=emails / seconds,
            events_per_s=len(planned) / seconds,
            latency_p50=percentile(latencies, 50) if latencies else float("nan"),
            latency_p99=percentile(latencies, 99) if latencies else float("nan"),
            latency_max=latencies[-1] if latencies else float("nan"),
            lost=len(set(sent) - set(arrivals)),
            duplicates=sum(len(arrivals[mid]) - 1 for mid in sent if mid in arrivals),
            unexpected=unexpected,
            outcomes=dict(outcomes),
            cpu=cpu,
            database=database_work(db_before, db_after, emails),
            timeline=timeline,
        )
        self.results.deliveries.append(result)
        self._print_delivery(result)
        return result

    def _print_delivery(self, d: Delivery) -> None:
        say(
            f"  {d.label}: {d.events:,} events -> {d.emails:,} emails in {d.seconds:.1f} s = "
            f"{d.emails_per_s:,.1f} emails/s ({d.events_per_s:,.1f} events/s); latency "
            f"publish -> sink p50 {d.latency_p50:.2f} s, p99 {d.latency_p99:.2f} s, "
            f"max {d.latency_max:.2f} s; lost {d.lost}, duplicated {d.duplicates}, "
            f"unexpected {d.unexpected}"
        )
        say("    outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(d.outcomes.items())))
        say(
            "    timeline, s after the first publish: "
            + ", ".join(f"{name} {seconds:.2f}" for name, seconds in d.timeline.items())
        )
        per = max(d.emails, 1)
        say(
            "    CPU ms per email: "
            + ", ".join(f"{name} {seconds * 1000 / per:.2f}" for name, seconds in d.cpu.items())
        )
        say("    database per email: " + ", ".join(f"{k} {v:.1f}" for k, v in d.database.items()))

    def ingest(self, label: str, planned: list[Planned]) -> Ingest:
        """The consumer alone on a full queue: events/s and CPU per event.

        The consumer is the one that ran the phases before, warm (imports done, pools
        and statement caches filled): it is paused (SIGSTOP) while the queue is filled
        and resumed (SIGCONT) when every event is in the queue or in its socket. The
        clock runs from the resume to the last event stored, so the figure is the rate
        of a running consumer that finds a backlog, not the start-up of a new one."""
        assert self.db and self.publisher and self.sampler
        consumer = self.stack.running["consume"]
        base = self.db.events()
        consumer.send_signal(signal.SIGSTOP)
        try:
            self.publisher.publish(planned)
            self._wait_until_queued(len(planned))
        finally:
            first_time = time.perf_counter()
            cpu_before = self.sampler.cpu()
            consumer.send_signal(signal.SIGCONT)
        first_count = base
        wait_for(
            lambda: self.db is not None and self.db.events() >= base + len(planned),
            self.options.timeout,
            f"{label}: every event stored",
            0.02,
        )
        seconds = time.perf_counter() - first_time
        cpu_after = self.sampler.cpu()
        counted = base + len(planned) - first_count
        per = max(counted, 1)
        cpu_ms = {
            name: (cpu_after[name] - cpu_before[name]) * 1000 / per
            for name in ("consume", "postgresql", "rabbitmq")
        }
        result = Ingest(label, counted, seconds, counted / seconds, cpu_ms)
        self.results.ingest.append(result)
        say(
            f"  {label}: {counted:,} events in {seconds:.1f} s = {result.events_per_s:,.0f} "
            "events/s; CPU ms per event: "
            + ", ".join(f"{name} {value:.2f}" for name, value in cpu_ms.items())
        )
        return result

    def _wait_until_queued(self, count: int) -> None:
        """Until the broker holds ``count`` events for the paused consumer: the queue's
        ready count (less what the broker already pushed to the consumer's socket, at
        most its prefetch) has reached them and stopped moving for 0.3 s."""
        assert self.publisher
        prefetch = 2 * int(self.env.get("CROSSSELL_INGEST_BATCH", "500"))
        last = -1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            depth = self.publisher.queue_depth(self.events_queue)
            if depth >= count - prefetch and depth == last:
                return
            last = depth
            time.sleep(0.3)
        raise SystemExit(f"bench.stack: the {count} events did not reach the queue in 60 s")

    def floor(self, processes: int, burst: Delivery) -> None:
        assert self.db
        products = {
            row[0]: {
                "sku": row[0],
                "name": row[1],
                "name_i18n": row[2],
                "category": row[3],
                "price": str(row[4]),
                "currency": row[5],
                "url": row[6],
                "image_url": row[7],
            }
            for row in self.db.rows(
                "SELECT sku, name, name_i18n, category, price, currency, url, image_url"
                " FROM products"
            )
        }
        rows = self.db.rows(
            "SELECT s.campaign_id, s.variant, s.template, s.coupon_code, s.coupon_expires_at,"
            " c.id, c.email, c.first_name, c.last_name, c.locale, c.timezone, e.payload,"
            " o.skus FROM sends s JOIN customers c ON c.id = s.customer_id"
            " JOIN events e ON e.event_id = s.event_id"
            " LEFT JOIN send_offers o ON o.send_id = s.id"
            " WHERE s.status = 'sent' AND s.event_id LIKE %s ORDER BY s.id",
            (burst.event_prefix + "%",),
            scans=4,
        )
        jobs = []
        for row in rows:
            language = (row[9] or "en").split("-")[0]
            offered = tuple(
                {
                    **products[sku],
                    "name": products[sku]["name_i18n"].get(language) or products[sku]["name"],
                }
                for sku in (row[12] or [])
                if sku in products
            )
            jobs.append(
                floor_module.Job(
                    campaign_id=row[0],
                    variant=row[1],
                    template=row[2],
                    customer={
                        "id": row[5],
                        "email": row[6],
                        "first_name": row[7],
                        "last_name": row[8],
                        "locale": row[9],
                        "timezone": row[10],
                    },
                    event=row[11],
                    products=offered,
                    coupon_code=row[3],
                    coupon_expires_at=row[4],
                )
            )
        if not jobs:
            say("  floor: no email of the burst to replay")
            return
        per_process = max(200, self.options.floor_messages // processes)
        rate = floor_module.measure_floor(jobs, processes, per_process, self.sink_port)
        self.results.floor_emails_per_s = rate
        say(
            f"  floor: {processes} process(es) x {per_process:,} emails (render + MIME + "
            f"smtplib, the burst's {len(jobs):,} emails replayed): {rate:,.0f} emails/s"
        )

    def embedded(self, concurrency: int) -> float:
        """``crosssell run`` on SQLite with the file provider: emails/s while it works
        through ``--embedded-events`` purchases published beforehand with ``crosssell
        publish``."""
        var = self.work / f"embedded-{concurrency}"
        outbox = var / "outbox"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CROSSSELL_")},
            "CROSSSELL_VAR_DIR": str(var),
            "CROSSSELL_CAMPAIGNS_DIR": str(self.campaigns),
            "CROSSSELL_QUIET_HOURS": "off",
            "CROSSSELL_OUTBOX_DIR": str(outbox),
        }
        run_command(env, "crosssell", "migrate")
        run_command(env, "crosssell", "catalog", "import", str(CATALOG.relative_to(ROOT)))
        planned = mix(
            f"embedded-{concurrency}",
            self.options.embedded_events,
            0,
            self.options.customers,
            match_share=1.0,
            kinds=("purchase",),
        )
        events = var / "events.jsonl"
        events.write_bytes(b"\n".join(p.body for p in planned) + b"\n")
        run_command(env, "crosssell", "publish", str(events))
        log = (self.work / "logs" / f"embedded-{concurrency}.log").open("wb")
        started, started_at = time.perf_counter(), time.time()
        process = subprocess.Popen(
            [str(BIN / "crosssell"), "run", "--until-drained", "--concurrency", str(concurrency)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            process.wait(timeout=self.options.embedded_seconds)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        wall = time.perf_counter() - started
        log.close()
        stamps = sorted(path.stat().st_mtime for path in outbox.glob("*.eml"))
        span = stamps[-1] - stamps[0] if len(stamps) >= 2 else 0.0
        rate = (len(stamps) - 1) / max(span, 1e-09) if len(stamps) >= 2 else 0.0
        self.results.embedded[f"concurrency_{concurrency}"] = rate
        self.results.embedded_seconds[f"concurrency_{concurrency}"] = span
        say(
            f"  embedded `crosssell run --concurrency {concurrency}`: {len(stamps)} emails "
            f"written from {len(planned)} matching purchases, {rate:,.1f} emails/s between "
            f"the first and the last file ({wall:.0f} s wall clock with start-up, limit "
            f"{self.options.embedded_seconds:.0f} s)"
        )
        if stamps:
            # The rate above starts at the first file: it leaves out whatever ingest did
            # before it, so a dispatcher that starts sending earlier (during ingest) lowers
            # it with no email written later. The offsets say where that window lies.
            say(
                f"    first file {stamps[0] - started_at:.2f} s, last file "
                f"{stamps[-1] - started_at:.2f} s after the start of crosssell run"
            )
        return rate

    def peak_rss(self) -> None:
        assert self.sampler
        self.results.peak_rss_mb = {name: peak / MB for name, peak in self.sampler.peaks().items()}
        say(
            "  peak RSS (MB): "
            + ", ".join(f"{name} {mb:,.0f}" for name, mb in self.results.peak_rss_mb.items())
            + " (postgresql: the largest backend, shared buffers included; rabbitmq: the"
            " shared node, all its vhosts)"
        )

    def pipeline_processes(self) -> int:
        names = ["consume", "dispatch", *self.worker_names]
        return sum(len(self.stack.pids(name)) for name in names)

    # the soak --------------------------------------------------------------------------

    def soak(self) -> None:
        assert self.db and self.publisher and self.sampler
        total = self.options.events
        chunk = 2000
        base = self.db.events()
        published = 0
        started = time.perf_counter()
        warm_at: float | None = None
        last_report = started
        while True:
            self.stack.check_alive()
            stored = self.db.events() - base
            if warm_at is None and stored >= total // 10:
                warm_at = time.monotonic()
                say(f"  soak: warm-up done at {stored:,} events stored")
            if published < total and published - stored < chunk:
                count = min(chunk, total - published)
                batch = self.events(f"soak-{published}", count)
                self.publisher.publish(batch)
                published += count
            if stored >= total and self.db.open_due() == 0:
                break
            if time.perf_counter() - last_report > 30:
                last_report = time.perf_counter()
                say(
                    f"  soak: {published:,} published, {stored:,} stored, "
                    f"{sink_module.count_lines(self.sink_log):,} lines at the sink, "
                    f"{last_report - started:.0f} s"
                )
            time.sleep(1.0)
        seconds = time.perf_counter() - started
        time.sleep(5)  # the last answers reach the sink log
        self.sampler.sample()
        rows = self.db.rows(
            "SELECT message_id FROM sends WHERE status = 'sent' AND event_id LIKE %s",
            ("bench-soak-%",),
        )
        sent = {row[0] for row in rows}
        arrivals = Counter(mid for _, mid in sink_module.read_log(self.sink_log))
        lost = len(sent - set(arrivals))
        duplicates = sum(arrivals[mid] - 1 for mid in sent if mid in arrivals)
        growth: dict[str, dict[str, float]] = {}
        for name, group in self.sampler.groups.items():
            series = [(t, rss) for t, rss in group.rss_series if rss > 0]
            after = [rss for t, rss in series if warm_at is not None and t >= warm_at]
            if len(after) < 2:
                continue
            warm = statistics.median(after[:5])
            end = statistics.median(after[-5:])
            growth[name] = {
                "warm_mb": warm / MB,
                "end_mb": end / MB,
                "max_mb": max(after) / MB,
                "growth": (end - warm) / warm,
            }
        self.results.soak = {
            "events": total,
            "emails": len(sent),
            "seconds": seconds,
            "lost": lost,
            "duplicates": duplicates,
            "rss": growth,
        }
        say(
            f"  soak: {total:,} events, {len(sent):,} emails sent in {seconds:.0f} s; "
            f"at the sink: lost {lost}, duplicated {duplicates}"
        )
        for name, figures in growth.items():
            say(
                f"    RSS {name:<20} after warm-up {figures['warm_mb']:7.1f} MB, at the end "
                f"{figures['end_mb']:7.1f} MB, max {figures['max_mb']:7.1f} MB, growth "
                f"{figures['growth'] * 100:+.1f} %"
            )

    def close_publisher(self) -> None:
        if self.publisher:
            self.publisher.close()
            self.publisher = None

    def close(self) -> None:
        if self.sampler:
            self.sampler.stop()
        self.stack.stop()
        self.close_publisher()
        if self.db:
            self.db.close()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --- the table ---------------------------------------------------------------------------


def _row(
    figure: str, target: str, measured: str, ratio: float | None, met: bool | None, short: bool
) -> str:
    ratio_text = "" if ratio is None else f"{ratio:.2f}"
    verdict = "" if met is None else ("short" if short else "met" if met else "MISSED")
    return f"  {figure:<60} {target:>9} {measured:>13} {ratio_text:>6}  {verdict}"


def final_table(results: Results) -> list[str]:
    lines = [f"  {'figure':<60} {'target':>9} {'measured':>13} {'ratio':>6}  verdict"]
    burst = next((d for d in results.deliveries if d.label == results.burst), None)
    bursts = [d for d in results.deliveries if d.label.startswith("burst")]
    paced = next((d for d in results.deliveries if d.label.startswith("paced")), None)
    verdicts: list[str] = []

    def add(
        figure: str,
        target: float | None,
        measured: float,
        unit: str,
        higher_is_better: bool,
        window: float | None = None,
    ) -> None:
        """One row; ``window``: the seconds the figure was measured over, a rate or a
        percentile from less than ``MIN_JUDGED_S`` is printed but not judged."""
        if target is None:
            lines.append(_row(figure, "-", f"{measured:,.2f} {unit}", None, None, False))
            return
        met = measured >= target if higher_is_better else measured <= target
        short = window is not None and window < MIN_JUDGED_S
        ratio = measured / target if target else None
        sign = ">=" if higher_is_better else "<="
        lines.append(
            _row(figure, f"{sign} {target:,.4g}", f"{measured:,.2f} {unit}", ratio, met, short)
        )
        if short:
            verdicts.append(
                f"  short  {figure}: {measured:,.2f} {unit} over {window:.2f} s, not judged "
                f"(under {MIN_JUDGED_S:g} s; target {sign} {target:,.4g})"
            )
            return
        verdicts.append(
            f"  {'met   ' if met else 'MISSED'} {figure}: {measured:,.2f} {unit} "
            f"(target {sign} {target:,.4g})"
        )

    if burst:
        # A burst that delivered nothing is judged (MISSED), however short its window.
        burst_window = burst.seconds if burst.emails else None
        add(
            "delivered emails/s end to end (burst)",
            TARGET_EMAILS_PER_S,
            burst.emails_per_s,
            "/s",
            True,
            burst_window,
        )
        if results.floor_emails_per_s:
            add(
                f"floor emails/s ({results.processes} processes, same run)",
                None,
                results.floor_emails_per_s,
                "/s",
                True,
            )
            add(
                "pipeline / floor",
                TARGET_FLOOR_RATIO,
                burst.emails_per_s / results.floor_emails_per_s,
                "x",
                True,
                burst_window,
            )
        add("latency p50 on the burst", None, burst.latency_p50, "s", False)
        add("latency p99 on the burst", None, burst.latency_p99, "s", False)
        pipeline = [n for n in burst.cpu if n not in ("sink", "bench (publisher)")]
        cpu_ms = sum(burst.cpu[n] for n in pipeline) * 1000 / max(burst.emails, 1)
        add(
            "CPU ms per email, all pipeline processes",
            TARGET_CPU_MS,
            cpu_ms,
            "ms",
            False,
            burst_window,
        )
        # What the CPU alone would allow on this machine's cores, whatever else runs on it.
        cores = os.cpu_count() or 1
        if cpu_ms > 0:
            allowed = cores * 1000 / cpu_ms
            add(f"  emails/s that CPU allows on {cores} cores", None, allowed, "/s", True)
        add(
            "  of which the SMTP sink (not counted)",
            None,
            burst.cpu.get("sink", 0) * 1000 / max(burst.emails, 1),
            "ms",
            False,
        )
        for key, value in burst.database.items():
            add(f"database {key.replace('_', ' ')}", None, value, "", False)
        add(
            "lost + duplicated at the sink (every burst)",
            0,
            sum(d.lost + d.duplicates for d in bursts),
            "",
            False,
        )
    if paced:
        add(
            f"latency p50, {paced.label} (half the burst)",
            None,
            paced.latency_p50,
            "s",
            False,
        )
        add(
            f"latency p99, {paced.label} (half the burst)",
            TARGET_P99_S,
            paced.latency_p99,
            "s",
            False,
            paced.seconds if paced.emails else None,
        )
    for ingest in results.ingest:
        target = TARGET_INGEST_NOTHING if "nothing" in ingest.label else TARGET_INGEST_MATCH
        add(
            f"ingest events/s, {ingest.label}",
            target,
            ingest.events_per_s,
            "/s",
            True,
            ingest.seconds,
        )
        consumer_ms = ingest.cpu_ms_per_event.get("consume", 0.0)
        if consumer_ms > 0:
            add(
                "  events/s the consumer's CPU allows on one core",
                None,
                1000 / consumer_ms,
                "/s",
                True,
            )
    crosssell = {name: mb for name, mb in results.peak_rss_mb.items() if name not in NOT_OURS}
    if crosssell:
        worst = max(crosssell, key=lambda name: crosssell[name])
        add(f"peak RSS of one process ({worst})", TARGET_RSS_MB, crosssell[worst], "MB", False)
    for key, rate in results.embedded.items():
        embedded_target = TARGET_EMBEDDED if key == "concurrency_1" else None
        add(
            f"embedded crosssell run, {key.replace('_', ' ')}",
            embedded_target,
            rate,
            "/s",
            True,
            results.embedded_seconds.get(key) if rate else None,
        )
    if results.soak:
        # The target is about crosssell's processes; the shared servers, the sink and the
        # harness are printed above for information.
        growth = max(
            (g["growth"] for name, g in results.soak["rss"].items() if name not in NOT_OURS),
            default=0.0,
        )
        add(
            "soak: largest RSS growth of a crosssell process", TARGET_SOAK_GROWTH, growth, "", False
        )
        add(
            "soak: lost + duplicated at the sink",
            0,
            results.soak["lost"] + results.soak["duplicates"],
            "",
            False,
        )
    return [*lines, "", "verdicts:", *verdicts]


# --- main --------------------------------------------------------------------------------


def _at_least(minimum: float, kind: type[int] | type[float] = int) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` no smaller than ``minimum`` (a count of 0
    would leave a phase with nothing to time, or divide by it)."""

    def number(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not (value >= minimum and math.isfinite(value)):  # nan fails both, inf the second
            raise argparse.ArgumentTypeError(f"must be a finite {minimum} or more, not {text}")
        return value

    return number


def _unwritable(path: Path) -> str | None:
    """Why ``path`` could not be written at the end of the run (None: it could): an
    existing file must be writable, else the nearest existing directory above it (the
    directories between are made when the figures are written). Creates nothing."""
    if path.exists():
        if path.is_dir():
            return "is a directory"
        return None if os.access(path, os.W_OK) else "not writable"
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is not a directory"
            return None if os.access(parent, os.W_OK | os.X_OK) else f"{parent} is not writable"
    return "no existing directory above it"


def write_figures(path: Path, results: Results) -> None:
    """The run's figures as JSON, written whole (``worker.core.files.replace_whole``: a
    temporary file renamed over ``path``, none left on failure); a reader never sees half
    of them. Aggregates only: the umask's mode."""
    from worker.core.files import replace_whole

    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(asdict(results), indent=2, default=str)
    replace_whole(path, text.encode("utf-8"), shared=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stack", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--events",
        type=_at_least(1),
        default=None,
        help="burst size (default 2000), or soak size (default 300000)",
    )
    parser.add_argument(
        "--customers",
        type=_at_least(1),
        default=None,
        help="customers in the generated shop (default 100000; a soak: at least --events)",
    )
    parser.add_argument(
        "--workers",
        type=_at_least(1),
        default=len(os.sched_getaffinity(0)),
        help="Celery worker processes (default: one per usable CPU, as the README runs them)",
    )
    parser.add_argument("--pool", choices=("prefork", "threads"), default="threads")
    parser.add_argument("--concurrency", type=_at_least(1), default=4)
    parser.add_argument(
        "--ingest-events",
        type=_at_least(1),
        default=None,
        help="events per ingest phase (default: 3 x --events)",
    )
    parser.add_argument("--warmup-events", type=_at_least(1), default=50)
    parser.add_argument(
        "--bursts",
        type=_at_least(1),
        default=3,
        help="bursts of --events, one after another; the table reports the median by "
        "emails/s, the upper one of an even count (a 2-second window on a shared VM moves "
        "by a tenth from run to run)",
    )
    parser.add_argument("--paced-seconds", type=_at_least(0.1, float), default=20.0)
    parser.add_argument(
        "--embedded-events",
        type=_at_least(1),
        default=1000,
        help="matching purchases for crosssell run (1000: about 900 emails, 1.5-2 s of "
        "writing on a fast host, over the second a rate needs to be judged)",
    )
    parser.add_argument(
        "--embedded-seconds",
        type=_at_least(1.0, float),
        default=40.0,
        help="stop crosssell run after this long and count its files",
    )
    parser.add_argument(
        "--sink-messages",
        type=_at_least(0),
        default=4000,
        help="the sink's own check (0: skip it)",
    )
    parser.add_argument("--floor-messages", type=_at_least(1), default=6000)
    parser.add_argument(
        "--timeout",
        type=_at_least(1.0, float),
        default=600.0,
        help="seconds a phase may take before the bench gives up",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="CROSSSELL_X=VALUE",
        help="an extra setting for every crosssell process (repeatable)",
    )
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--soak", action="store_true")
    parser.add_argument(
        "--stats-settle",
        type=_at_least(1.5, float),
        default=10.5,
        help="seconds after a phase before its database counters are read, at least 1.5 "
        "(PostgreSQL publishes an idle backend's last statistics up to 10 s late; less: "
        "faster, and the phase's last second may count in the next)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy profiles of the consumer and workers during a burst of their own "
        "after the measured ones, kept in DIR",
    )
    options = parser.parse_args(argv)
    if options.json is not None:
        # Checked now: the file is written after the table, and a run of minutes whose
        # figures cannot be saved is lost at its end.
        problem = _unwritable(options.json)
        if problem:
            parser.error(f"--json {options.json}: {problem}")
    if options.events is None:
        options.events = 300_000 if options.soak else 2000
    if options.customers is None:
        # A soak's events go to customers in turn: with fewer customers than events the
        # second round meets every campaign's cooldown and the soak stops sending email.
        warmup = WARMUP_WAVES * options.warmup_events  # at most; the soak's events come after
        options.customers = max(100_000, options.events + warmup) if options.soak else 100_000
    if options.ingest_events is None and not options.soak:  # a soak has no ingest phase
        # Three times the burst: the ingest window then lasts 2-3 s on two cores, long
        # against the 20 ms poll of its end and the batch sizes' ramp after a pause.
        options.ingest_events = 3 * options.events
    return options


@contextmanager
def _workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="crosssell-bench-stack-") as name:
        yield Path(name)


def run(options: argparse.Namespace) -> Results:
    say(f"bench.stack: {machine_line()}")
    say(
        f"  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; options: "
        + ", ".join(f"{k}={v}" for k, v in vars(options).items() if v not in (None, [], False))
    )
    with ExitStack() as stack:
        work = stack.enter_context(_workspace())
        database_url = stack.enter_context(bench_database())
        amqp = stack.enter_context(bench_vhost())
        bench = Bench(options, work, database_url, amqp)
        try:
            bench.setup()
            bench.start_sink()
            bench.start_sampler()
            bench.measure_sink()
            bench.start_stack()
            processes = bench.pipeline_processes()
            bench.results.processes = processes
            say(
                f"  stack: consume, dispatch, {options.workers} x celery worker --pool "
                f"{options.pool} --concurrency {options.concurrency}: {processes} processes"
            )
            bench.warm_up()
            if options.soak:
                bench.soak()
            else:
                burst = bench.bursts()
                # Its own burst: py-spy's sampling takes CPU from the figures above.
                recordings = bench.start_profiles()
                if recordings:
                    bench.delivery("profiled burst", bench.events("profiled", options.events), None)
                    bench.finish_profiles(recordings)
                rate = max(1.0, burst.events_per_s / 2)
                paced_count = max(10, int(rate * options.paced_seconds))
                bench.delivery(
                    f"paced at {rate:.0f} events/s",
                    bench.events("paced", paced_count),
                    rate,
                )
                bench.stack.stop("dispatch", *bench.worker_names)
                bench.ingest(
                    "nothing matching (consumer alone)",
                    bench.events("nomatch", options.ingest_events, match_share=0.0),
                )
                bench.ingest(
                    "one campaign matching (consumer alone)",
                    bench.events("match", options.ingest_events, match_share=1.0),
                )
            bench.peak_rss()
            bench.stack.stop("consume", "dispatch", *bench.worker_names)
            bench.close_publisher()
            if not options.soak and not options.skip_floor:
                bench.floor(processes, burst)
            if not options.soak and not options.skip_embedded:
                for concurrency in (1, 4):
                    bench.embedded(concurrency)
        except BaseException:
            for name in ("consume", "dispatch", *bench.worker_names):
                tail = bench.stack.log(name)[-2000:]
                if tail:
                    print(f"--- {name}.log (end)\n{tail}", file=sys.stderr)
            raise
        finally:
            bench.close()
            logs = ROOT / "var" / "bench-logs"
            shutil.rmtree(logs, ignore_errors=True)
            shutil.copytree(work / "logs", logs)
        say()
        for line in final_table(bench.results):
            say(line)
        say(f"  (process logs of this run: {logs.relative_to(ROOT)}/)")
        if options.json:
            write_figures(options.json, bench.results)
        return bench.results


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the database, the vhost and the processes go too.
    signal.signal(signal.SIGTERM, _interrupted)
    run(parse(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
