"""A delivery fleet in real processes: ``crosssell dispatch`` plus Celery workers, each
killable with SIGKILL and restartable, over PostgreSQL, a real broker and a real sink.

The outbox is filled through the real ingest path (events → decisions → planned sends),
so every send the fleet delivers went through the same rechecks as in production.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from tests.support.factories import customer_block, make_settings, purchase
from tests.support.untraced import untraced
from triggers.events import validate_event
from worker.commands.demo import seed_catalog
from worker.core.db import transaction
from worker.core.models import Send
from worker.intake.ingest import ingest_batch
from worker.process.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OPEN_STATUSES = ("planned", "queued", "sending")

# One instant cross-sell campaign, shared with the end-to-end production-stack test.
CAMPAIGN = """\
id: instant-accessories
name: Accessories right after a laptop purchase
kind: cross_sell
priority: 50
trigger:
  event: purchase
  where: {field: event.categories, op: contains, value: laptops}
offer: {type: complementary, max_items: 2}
schedule: {delay: 0m}
frequency: {cooldown: 1d}
experiment:
  variants:
    - {id: A, template: accessories}
"""


def fleet_env(
    tmp_path: Path, database_url: str, broker_url: str, traced: bool = True, **settings: str
) -> dict[str, str]:
    """The environment every fleet process shares; ``settings`` are CROSSSELL_* overrides.

    ``traced=False`` keeps coverage out of the fleet's processes (``tests/support/
    untraced.py``): for the fault tests, which prove what breaking things does to the
    sends, not which lines run (the production-stack tests measure the same processes)."""
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir(exist_ok=True)
    (campaigns / "instant.yaml").write_text(CAMPAIGN)
    values = {
        "DATABASE_URL": database_url,
        "BROKER_URL": broker_url,
        "DELIVER_QUEUE": f"crosssell.deliver.fleet.{uuid.uuid4().hex[:8]}",
        "CAMPAIGNS_DIR": str(campaigns),
        "QUIET_HOURS": "off",
        "VAR_DIR": str(tmp_path / "var"),
        "UNSUBSCRIBE_KEYS": "t1:fleet-secret-0123456789",
        "DISPATCH_INTERVAL": "0.2",
        "DISPATCH_BATCH": "200",
        "DISPATCH_MAX_QUEUED": "300",
        "REQUEUE_AFTER": "20s",
        "SENDING_TIMEOUT": "8s",
        "DELIVERY_LEASE": "8s",
        "DELIVERY_BATCH": "20",
        "RETRY_BASE_SECONDS": "0.5",
        "SMTP_TIMEOUT": "3",
        "POSTAL_ADDRESS": "1 Test Street, Testville",
    }
    values.update({key.upper(): value for key, value in settings.items()})
    base = os.environ if traced else untraced()
    return {**base, **{f"CROSSSELL_{key}": value for key, value in values.items()}}


def seed_due_sends(tmp_path: Path, env: dict[str, str], count: int) -> list[int]:
    """``count`` purchases by ``count`` customers, ingested now: one due send each."""
    settings = make_settings(
        tmp_path,
        database_url=env["CROSSSELL_DATABASE_URL"],
        campaigns_dir=Path(env["CROSSSELL_CAMPAIGNS_DIR"]),
        quiet_hours="off",
        unsubscribe_keys=env["CROSSSELL_UNSUBSCRIBE_KEYS"],
    )
    runtime = Runtime(settings)
    now = datetime.now(UTC)
    seed_catalog(settings, now)
    rules = runtime.rules.current()
    url = settings.resolved_database_url
    # Batches as the consumer ingests them (``ingest_batch``): a statement per batch
    # where one event at a time made ~18 per event, 18,000 round trips for the delivery
    # fault module's 1,000 sends and 14 s of its 23 s set-up waiting on the server.
    batch = 200
    for first in range(0, count, batch):
        events = [
            validate_event(purchase(at=now, customer=customer_block(f"C-fleet-{number:05d}")))
            for number in range(first, min(first + batch, count))
        ]
        with transaction(url) as session:
            ingest_batch(session, events, rules, runtime.policy, now)
    with transaction(url) as session:
        ids = list(session.scalars(select(Send.id).where(Send.status == "planned")))
    assert len(ids) == count, f"expected {count} planned sends, ingest planned {len(ids)}"
    return ids


@dataclass
class Member:
    name: str
    command: tuple[str, ...]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0


class Fleet:
    """Named processes started in their own session so SIGKILL takes the whole group."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.members: dict[str, Member] = {}

    def add_worker(self, name: str, concurrency: int = 4) -> None:
        self.add(
            name,
            str(BIN / "celery"),
            "-A",
            "worker.outbox.app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@%h",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        )

    def add_dispatcher(self) -> None:
        self.add("dispatch", str(BIN / "crosssell"), "--log-level", "INFO", "dispatch")

    def add(self, name: str, *command: str) -> None:
        member = self.members[name] = Member(name, command)
        self.start(member)

    def start(self, member: Member) -> None:
        with (self.log_dir / f"{member.name}.log").open("ab") as log:
            member.process = subprocess.Popen(
                member.command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        member.starts += 1

    def kill(self, name: str) -> None:
        """SIGKILL the member's whole process group, as an OOM killer or a crash would."""
        process = self.members[name].process
        assert process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def restart(self, name: str) -> None:
        self.start(self.members[name])

    def stop(self) -> None:
        for member in self.members.values():
            if member.process is not None and member.process.poll() is None:
                member.process.send_signal(signal.SIGTERM)
        for member in self.members.values():
            if member.process is None:
                continue
            try:
                member.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(member.process.pid, signal.SIGKILL)
                member.process.wait()

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )

    def log_text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.log_dir.glob("*.log"))


def statuses(database_url: str) -> Counter[tuple[str, str | None]]:
    with transaction(database_url) as session:
        rows = session.execute(
            select(Send.status, Send.reason, func.count()).group_by(Send.status, Send.reason)
        ).all()
    return Counter({(status, reason): int(n) for status, reason, n in rows})


def open_sends(database_url: str) -> int:
    with transaction(database_url) as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Send).where(Send.status.in_(OPEN_STATUSES))
            )
            or 0
        )


def wait_until(condition: Callable[[], bool], timeout: float, what: str, fleet: Fleet) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{fleet.logs()}")


@dataclass(frozen=True)
class Outcome:
    """What the database says against what the sink received, send by send."""

    sent: dict[int, str]
    ambiguous: dict[int, str]
    failed: dict[int, tuple[str, str, str]]  # reason, customer id, Message-ID
    other: Counter[tuple[str, str | None]]
    received: Counter[str]

    @property
    def duplicates(self) -> dict[str, int]:
        return {mid: n for mid, n in self.received.items() if n > 1}


def outcome(database_url: str, received: Iterable[str]) -> Outcome:
    sent: dict[int, str] = {}
    ambiguous: dict[int, str] = {}
    failed: dict[int, tuple[str, str, str]] = {}
    other: Counter[tuple[str, str | None]] = Counter()
    with transaction(database_url) as session:
        rows = session.execute(
            select(Send.id, Send.status, Send.reason, Send.message_id, Send.customer_id)
        ).all()
    for send_id, status, reason, message_id, customer_id in rows:
        if status in ("sent", "failed") and reason in (None, "ambiguous"):
            # Sent and ambiguous sends were handed over, which stores their Message-ID.
            assert message_id is not None, f"send {send_id} ({status}) has no Message-ID"
        if status == "sent":
            sent[send_id] = str(message_id)
        elif status == "failed" and reason == "ambiguous":
            ambiguous[send_id] = str(message_id)
        elif status == "failed":
            failed[send_id] = (reason or "", customer_id, message_id or "")
        else:
            other[(status, reason)] += 1
    return Outcome(sent, ambiguous, failed, other, Counter(received))
