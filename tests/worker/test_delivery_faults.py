"""Exactly one email per planned send, proven by breaking things while a fleet delivers.

Each test runs ``crosssell dispatch`` and two Celery worker processes (thread pool) over a
fresh PostgreSQL database and a real broker, delivering to an aiosmtpd sink that counts
``Message-ID``s. Then something is broken mid-run: workers SIGKILLed and restarted, the
broker restarted, every database connection terminated, the SMTP server refusing. At the
end every send is checked against the sink:

* ``sent`` in the database  ⇔  received exactly once;
* ``failed/ambiguous``: the worker died (or lost the server) between handing the message
  over and recording the answer. It is reported with its Message-ID and never re-sent, so
  the sink holds it at most once; the test prints how many of them did arrive;
* nothing is received twice, nothing is left open.

Sizes can be raised with ``CROSSSELL_FAULT_SENDS`` for a longer soak.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.support.fleet import (
    BIN,
    Fleet,
    Outcome,
    fleet_env,
    open_sends,
    outcome,
    seed_due_sends,
    statuses,
    wait_until,
)
from tests.support.services import database_name, fresh_postgres_database, require_rabbitmq
from tests.support.smtp_sink import SmtpSink
from worker.db import dispose_engines, engine_for
from worker.migrate import upgrade

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("celery", path=str(BIN)) is None, reason="no celery"),
]
SENDS = int(os.environ.get("CROSSSELL_FAULT_SENDS", "2000"))
REPORT = re.compile(r"OPERATOR: send (\d+) \(Message-ID (<[^>]+>)\) is ambiguous")


@pytest.fixture(scope="module")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A database with ``SENDS`` due sends, ingested once and copied by every test."""
    folder = tmp_path_factory.mktemp("seed")
    with fresh_postgres_database() as url:
        upgrade(url)
        seed_due_sends(folder, fleet_env(folder, url, "memory://"), SENDS)
        dispose_engines()
        yield database_name(url), folder


def fleet_database(template: tuple[str, Path], sends: int) -> Iterator[str]:
    """A copy of the seeded database holding its first ``sends`` sends."""
    with fresh_postgres_database(template[0]) as url:
        with engine_for(url).begin() as connection:
            connection.execute(text("DELETE FROM sends WHERE id > :n"), {"n": sends})
        yield url
        dispose_engines()


@pytest.fixture
def database_url(seeded_template: tuple[str, Path]) -> Iterator[str]:
    yield from fleet_database(seeded_template, SENDS)


def check_exactly_once(result: Outcome, fleet: Fleet, expected: int) -> None:
    """The invariants every fault test ends with (see the module docstring)."""
    assert result.duplicates == {}, f"delivered twice: {result.duplicates}"
    assert not result.other, f"sends left open or skipped: {result.other}\n{fleet.logs()}"
    assert len(result.sent) + len(result.ambiguous) + len(result.failed) == expected
    for send_id, message_id in result.sent.items():
        assert result.received[message_id] == 1, f"send {send_id} is sent but not received"
    reported = {int(n): mid for n, mid in REPORT.findall(fleet.log_text())}
    assert reported == result.ambiguous, "every ambiguous send is reported with its Message-ID"
    for message_id in result.ambiguous.values():
        assert result.received[message_id] <= 1
    accounted = set(result.sent.values()) | set(result.ambiguous.values())
    assert set(result.received) <= accounted, "the sink holds a message no send accounts for"
    arrived = sum(result.received[mid] for mid in result.ambiguous.values())
    print(
        f"{len(result.sent)} sent exactly once, {len(result.failed)} failed for good, "
        f"{len(result.ambiguous)} ambiguous (reported; {arrived} of them had arrived)"
    )


def run_to_the_end(database_url: str, fleet: Fleet, timeout: float = 240) -> None:
    wait_until(lambda: open_sends(database_url) == 0, timeout, "every send to settle", fleet)


def test_workers_killed_at_random_moments_deliver_every_send_once(
    tmp_path: Path, database_url: str
) -> None:
    broker = require_rabbitmq()
    with SmtpSink() as sink:
        env = fleet_env(
            tmp_path, database_url, broker, email_provider="smtp", smtp_port=str(sink.port)
        )
        fleet = Fleet(env, tmp_path / "logs")
        try:
            fleet.add_worker("w1")
            fleet.add_worker("w2")
            fleet.add_dispatcher()
            wait_until(lambda: len(sink.handler.messages) > 50, 60, "first deliveries", fleet)
            chaos = random.Random(os.environ.get("CROSSSELL_FAULT_SEED", "kill"))
            kills = 0
            while kills < 6 and len(sink.handler.messages) < SENDS * 0.9:
                time.sleep(chaos.uniform(0.5, 2.0))
                victim = chaos.choice(["w1", "w2"])
                fleet.kill(victim)
                kills += 1
                time.sleep(chaos.uniform(0.1, 1.0))
                fleet.restart(victim)
            assert kills >= 3, "the run ended before the workers were killed often enough"
            run_to_the_end(database_url, fleet)
        finally:
            fleet.stop()
        check_exactly_once(outcome(database_url, sink.handler.message_ids()), fleet, SENDS)
        print(f"{kills} SIGKILLs; statuses: {dict(statuses(database_url))}")
