"""Sequence steps survive SIGKILLs: none lost, none sent twice.

A two-step sequence (``first`` at entry, ``second`` a few seconds later) enrolls a few
hundred customers through the real ingest path on PostgreSQL; then ``crosssell
dispatch`` (which plans due steps) and two Celery workers deliver over RabbitMQ to an SMTP
sink while the dispatcher and the workers are SIGKILLed and restarted at random moments,
so the kills land while steps are due, being planned, claimed and sent. At the end:

* every enrollment completed, with both steps done in order;
* each step is exactly one ``sends`` row (its dedupe key is the enrollment and step);
* ``sent`` in the database ⇔ received exactly once; an ``ambiguous`` one (a worker killed
  between hand-over and answer) is reported, never re-sent; nothing is received twice.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.support.factories import customer_block, make_settings, purchase
from tests.support.fleet import BIN, Fleet, fleet_env, open_sends, outcome, wait_until
from tests.support.services import fresh_postgres_database, require_rabbitmq
from tests.support.smtp_sink import SmtpSink
from tests.worker.outbox.test_delivery_faults import REPORT, delete_queue
from triggers.events import validate_event
from worker.commands.demo import seed_catalog
from worker.commands.migrate import upgrade
from worker.core.db import dispose_engines, transaction
from worker.core.models import Enrollment, Send
from worker.intake.ingest import ingest_event
from worker.process.runtime import Runtime

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("celery", path=str(BIN)) is None, reason="no celery"),
]
CUSTOMERS = int(os.environ.get("CROSSSELL_FAULT_ENROLLMENTS", "200"))
SEQUENCE = """\
id: quick-journey
name: Two steps a few seconds apart
kind: cross_sell
trigger:
  event: purchase
  where: {field: event.categories, op: contains, value: cameras}
offer: {type: complementary, max_items: 2}
steps:
  - {id: first, after_entry: 0m, template: accessories}
  - {id: second, after_entry: 6s, template: accessories}
experiment:
  variants:
    - {id: A, template: accessories}
"""


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        upgrade(url)
        yield url
        dispose_engines()


def _enroll(tmp_path: Path, env: dict[str, str], count: int) -> None:
    """``count`` camera purchases by as many customers, ingested now: each enrolls."""
    settings = make_settings(
        tmp_path,
        database_url=env["CROSSSELL_DATABASE_URL"],
        campaigns_dir=Path(env["CROSSSELL_CAMPAIGNS_DIR"]),
        quiet_hours="off",
        min_gap="0",
        unsubscribe_keys=env["CROSSSELL_UNSUBSCRIBE_KEYS"],
    )
    runtime = Runtime(settings)
    now = datetime.now(UTC)
    seed_catalog(settings, now)
    rules = runtime.rules.current()
    with transaction(settings.resolved_database_url) as session:
        for number in range(count):
            customer = customer_block(f"C-seq-{number:05d}")
            document = purchase(
                at=now, customer=customer, sku="CAM-ACTION", category="cameras", price="299.00"
            )
            ingest_event(session, validate_event(document), rules, runtime.policy, now)
    runtime.close()


def _settled(database_url: str) -> bool:
    with transaction(database_url) as session:
        running = session.scalar(
            select(Enrollment.id).where(Enrollment.status == "active").limit(1)
        )
    return running is None and open_sends(database_url) == 0


def test_killed_dispatcher_and_workers_lose_no_step_and_send_none_twice(
    tmp_path: Path, database_url: str
) -> None:
    broker = require_rabbitmq()
    with SmtpSink() as sink:
        env = fleet_env(
            tmp_path,
            database_url,
            broker,
            traced=False,  # reliability, not coverage: tests/support/untraced.py
            email_provider="smtp",
            smtp_port=str(sink.port),
            min_gap="0",
        )
        (Path(env["CROSSSELL_CAMPAIGNS_DIR"]) / "quick-journey.yaml").write_text(SEQUENCE)
        _enroll(tmp_path, env, CUSTOMERS)
        fleet = Fleet(env, tmp_path / "logs")
        try:
            fleet.add_worker("w1")
            fleet.add_worker("w2")
            fleet.add_dispatcher()
            chaos = random.Random(os.environ.get("CROSSSELL_FAULT_SEED", "steps"))
            kills = Counter[str]()
            started = time.monotonic()
            # Kill while first steps are going and the second ones fall due (at 6 s).
            while time.monotonic() - started < 12 and not _settled(database_url):
                time.sleep(chaos.uniform(0.3, 1.2))
                # The dispatcher plans the steps: it is killed as often as each worker.
                victim = chaos.choice(["w1", "w2", "dispatch"])
                fleet.kill(victim)
                kills[victim] += 1
                time.sleep(chaos.uniform(0.1, 0.6))
                fleet.restart(victim)
            assert sum(kills.values()) >= 4, "the run ended before enough kills"
            assert kills["dispatch"] >= 1 and kills["w1"] + kills["w2"] >= 2, kills
            # A bound against a hang, not a speed figure: two suites sharing two cores
            # stretched tasks of 20 sends to 20 s each and this past 40 s.
            wait_until(lambda: _settled(database_url), 150, "every step to settle", fleet)
        finally:
            fleet.stop()
            delete_queue(broker, env["CROSSSELL_DELIVER_QUEUE"])
        result = outcome(database_url, sink.handler.message_ids())
    assert result.duplicates == {}, f"delivered twice: {result.duplicates}"
    assert not result.other, f"steps left open or skipped: {result.other}\n{fleet.logs()}"
    with transaction(database_url) as session:
        enrollments = session.execute(
            select(Enrollment.id, Enrollment.status, Enrollment.done)
        ).all()
        steps = Counter(
            (row.enrollment_id, row.step_id)
            for row in session.execute(select(Send.enrollment_id, Send.step_id)).all()
        )
    assert len(enrollments) == CUSTOMERS
    for enrollment_id, status, done in enrollments:
        assert status == "completed" and done == ["first", "second"], enrollment_id
        assert steps[(enrollment_id, "first")] == 1 and steps[(enrollment_id, "second")] == 1
    assert len(result.sent) + len(result.ambiguous) + len(result.failed) == 2 * CUSTOMERS
    for send_id, message_id in result.sent.items():
        assert result.received[message_id] == 1, f"step send {send_id} sent but not received"
    reported = {int(n): mid for n, mid in REPORT.findall(fleet.log_text())}
    assert reported == result.ambiguous
    for message_id in result.ambiguous.values():
        assert result.received[message_id] <= 1
    print(
        f"kills {dict(kills)}: {len(result.sent)} steps sent exactly once, "
        f"{len(result.ambiguous)} ambiguous (reported), {len(result.failed)} failed"
    )
