"""The README's production steps, followed as written, deliver the shipped campaigns.

Before, following them produced no email at all: they never imported a catalog, so every
send was skipped ``no_offer`` and nothing said so. Here a fresh PostgreSQL database gets
the README's own commands (read from its production section, run as subprocesses), then
``crosssell consume``, ``crosssell dispatch`` and ``celery -A worker.outbox.app worker`` run as
in the README's process table, a CRM publishes plain JSON to RabbitMQ, and the emails of
all three shipped campaigns must reach an SMTP sink.

The shipped campaign files are used as they are but for their send windows (weekday and
hour), which are widened to the whole week, and quiet hours are off: the processes run on
the real clock, and a test that passes only on weekday afternoons would be no test.
Delays are kept; the events are dated back by them.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from tests.support.factories import as_json, customer_block
from tests.support.services import fresh_postgres_database, require_rabbitmq
from tests.support.smtp_sink import SmtpSink
from tests.worker.end_to_end.test_production_stack import Stack, _pika, _queue_ready, publish_plain
from tests.worker.intake.test_consumer_rabbitmq import wait_for
from worker.commands.migrate import alembic_config
from worker.process.startup import masked

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_production_commands() -> list[list[str]]:
    """The ``crosssell …`` commands of the README's first shell block in "Running on the
    production stack" (the ``export`` lines are the settings, given here by the test)."""
    section = README.split("## Running on the production stack", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None
    return [
        shlex.split(line) for line in block.group(1).splitlines() if line.startswith("crosssell ")
    ]


def _widened_campaigns(directory: Path) -> None:
    directory.mkdir()
    for path in sorted((ROOT / "config" / "campaigns").glob("*.yaml")):
        source = path.read_text(encoding="utf-8")
        widened = re.sub(
            r"window: \{[^}]*\}",
            'window: {days: [mon, tue, wed, thu, fri, sat, sun], from: "00:00", to: "23:59"}',
            source,
        )
        assert widened != source, path
        (directory / path.name).write_text(widened, encoding="utf-8")


def _event(
    kind: str, event_id: str, at: datetime, customer: dict[str, Any], data: dict[str, Any]
) -> bytes:
    return as_json(
        {
            "id": event_id,
            "type": kind,
            "occurred_at": at.isoformat(),
            "customer": customer,
            "data": data,
        }
    )


def _purchase_data(order: str, sku: str, name: str, category: str, price: str) -> dict[str, Any]:
    return {
        "order_id": order,
        "currency": "EUR",
        "total": price,
        "items": [
            {"sku": sku, "name": name, "category": category, "quantity": 1, "unit_price": price}
        ],
    }


@pytest.fixture
def production(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[tuple[dict[str, str], str]]:
    amqp = require_rabbitmq()
    campaigns = tmp_path / "campaigns"
    _widened_campaigns(campaigns)
    tag = uuid.uuid4().hex[:8]
    with fresh_postgres_database() as database_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CROSSSELL_")},
            "CROSSSELL_DATABASE_URL": database_url,
            "CROSSSELL_EVENTS_URL": amqp,
            "CROSSSELL_BROKER_URL": amqp,
            "CROSSSELL_EVENTS_QUEUE": f"crosssell.events.path.{tag}",
            "CROSSSELL_DEAD_LETTER_QUEUE": f"crosssell.events.dead.path.{tag}",
            "CROSSSELL_DELIVER_QUEUE": f"crosssell.deliver.path.{tag}",
            "CROSSSELL_EMAIL_PROVIDER": "smtp",
            "CROSSSELL_POSTAL_ADDRESS": "Strada Exemplu 1, 010101 Bucure\u0219ti, Romania",
            "CROSSSELL_SMTP_HOST": "127.0.0.1",
            "CROSSSELL_SMTP_PORT": str(smtp_sink.port),
            "CROSSSELL_UNSUBSCRIBE_KEYS": "k1:a-long-random-test-secret",
            "CROSSSELL_CAMPAIGNS_DIR": str(campaigns),
            "CROSSSELL_VAR_DIR": str(tmp_path / "var"),
            "CROSSSELL_DISPATCH_INTERVAL": "0.2",
            # Quiet hours are the installation's, and like the windows depend on the hour
            # the test runs at (see the module docstring).
            "CROSSSELL_QUIET_HOURS": "off",
        }
        try:
            yield env, database_url
        finally:
            connection = _pika(amqp)
            channel = connection.channel()
            for name in ("EVENTS_QUEUE", "DEAD_LETTER_QUEUE", "DELIVER_QUEUE"):
                channel.queue_delete(env[f"CROSSSELL_{name}"])
            connection.close()
            from worker.core.db import dispose_engines

            dispose_engines()


@pytest.mark.skipif(shutil.which("celery", path=str(BIN)) is None, reason="celery not installed")
def test_readme_production_steps_deliver_the_shipped_campaigns(
    production: tuple[dict[str, str], str], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    env, database_url = production
    commands = readme_production_commands()
    assert [c[:2] for c in commands] == [["crosssell", "migrate"], ["crosssell", "catalog"]]
    outputs = []
    for command in commands:
        done = subprocess.run(
            [str(BIN / command[0]), *command[1:]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stderr == "", done.stderr  # not a terminal: no progress, no warnings
        outputs.append(done.stdout)

    # migrate says what it did: from an empty database to the head revision.
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert f"migrated from an empty database to {head}" in outputs[0], outputs[0]
    with (ROOT / "config" / "demo" / "catalog.csv").open(encoding="utf-8", newline="") as f:
        products = list(csv.DictReader(f))
    assert f"imported {len(products)} product(s)" in outputs[1], outputs[1]
    again = subprocess.run(
        [str(BIN / "crosssell"), "migrate"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert f"already at {head}" in again.stdout and "nothing to do" in again.stdout

    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(env, logs)
    # As in the README's table; the crosssell commands without --log-level (default INFO).
    stack.start("consume", str(BIN / "crosssell"), "consume")
    stack.start("dispatch", str(BIN / "crosssell"), "dispatch")
    stack.start(
        "celery",
        str(BIN / "celery"),
        "-A",
        "worker.outbox.app",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        "2",
        "--loglevel",
        "INFO",
        "--without-mingle",
        "--without-gossip",
    )
    now = datetime.now(UTC).replace(microsecond=0)
    customers = []
    try:
        wait_for(
            lambda: _queue_ready(env["CROSSSELL_EVENTS_URL"], env["CROSSSELL_EVENTS_QUEUE"]), 60
        )
        url = env["CROSSSELL_EVENTS_URL"]
        for n in range(5):
            # laptop-accessories: a laptop bought 3 h ago (the campaign waits 2 h).
            laptop = customer_block(f"C-lap-{n}", email=f"lap{n}@example.ro")
            customers.append(laptop["email"])
            publish_plain(
                url,
                _event(
                    "purchase",
                    f"p-lap-{n}",
                    now - timedelta(hours=3),
                    laptop,
                    _purchase_data(
                        f"O-lap-{n}", "LAP-14-PRO", "Laptop 14 Pro", "laptops", "999.00"
                    ),
                ),
                "purchase",
            )
            # anniversary-loyalty and usage-drop-bundle need a first order (a monitor:
            # no campaign of its own), then their event; usage waits 1 day.
            for kind in ("anniversary", "usage"):
                person = customer_block(
                    f"C-{kind}-{n}",
                    email=f"{kind}{n}@example.it",
                    locale="it-IT",
                    timezone="Europe/Rome",
                )
                customers.append(person["email"])
                publish_plain(
                    url,
                    _event(
                        "purchase",
                        f"p-{kind}-{n}",
                        now - timedelta(days=20),
                        person,
                        _purchase_data(
                            f"O-{kind}-{n}", "MON-24", 'Monitor 24" IPS', "monitors", "179.00"
                        ),
                    ),
                    "purchase",
                )
            publish_plain(
                url,
                _event(
                    "anniversary",
                    f"a-{n}",
                    now - timedelta(minutes=1),
                    {"id": f"C-anniversary-{n}"},
                    {"kind": "membership", "years": 2},
                ),
                "anniversary",
            )
            publish_plain(
                url,
                _event(
                    "usage_change",
                    f"u-{n}",
                    now - timedelta(hours=25),
                    {"id": f"C-usage-{n}"},
                    {"metric": "logins_per_week", "previous": 12, "current": 3, "window_days": 14},
                ),
                "usage_change",
            )

        engine = create_engine(database_url)

        def settled() -> bool:
            with engine.connect() as connection:
                events = connection.execute(text("SELECT count(*) FROM events")).scalar_one()
                open_sends = connection.execute(
                    text(
                        "SELECT count(*) FROM sends"
                        " WHERE status IN ('planned', 'queued', 'sending')"
                    )
                ).scalar_one()
            return events == 25 and open_sends == 0

        wait_for(settled, 120)
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT campaign_id, status, reason FROM sends ORDER BY id")
            ).all()
        engine.dispose()
        sent = [campaign for campaign, status, _ in rows if status == "sent"]
        wait_for(lambda: len(smtp_sink.handler.messages) == len(sent), 30)
    except AssertionError:
        engine = create_engine(database_url)
        with engine.connect() as connection:
            state = connection.execute(
                text("SELECT campaign_id, status, reason, send_at FROM sends ORDER BY id")
            ).all()
            stored = connection.execute(text("SELECT count(*) FROM events")).scalar_one()
        engine.dispose()
        pytest.fail(f"not settled: {stored} events, sends {state}\n" + stack.logs())
    finally:
        stack.stop()

    assert {"laptop-accessories", "anniversary-loyalty", "usage-drop-bundle"} <= set(sent), rows
    assert not [row for row in rows if row.reason in ("no_offer", "out_of_stock")], rows
    messages = smtp_sink.handler.parsed()
    recipients = {str(m["To"]).split("<")[1].rstrip(">") for m in messages}
    assert recipients <= set(customers)
    # The Italian customers' bundle names its products in Italian (catalog name.it).
    italian_names = {row["name.it"] for row in products}
    bodies = [
        m.get_body(("plain",)).get_content() for m in messages if "example.it" in str(m["To"])
    ]  # type: ignore[union-attr]
    assert any(name in body for body in bodies for name in italian_names), bodies

    # Each process said, once, what it connected to, with the password masked.
    logs_text = {path.stem: path.read_text(errors="replace") for path in logs.glob("*.log")}
    amqp = masked(env["CROSSSELL_EVENTS_URL"])  # the run's own vhost, password masked
    assert "guest:**@" in amqp
    expected = {
        "consume": f"consume: events {amqp}, database postgresql+psycopg://",
        "dispatch": "dispatch: database postgresql+psycopg://",
        "celery": f"celery worker: broker {amqp}, database postgresql",
    }
    for name, start in expected.items():
        lines = [line for line in logs_text[name].splitlines() if start in line]
        assert len(lines) == 1, (name, logs_text[name][-2000:])
        shipped = len(list(Path(env["CROSSSELL_CAMPAIGNS_DIR"]).glob("*.yaml")))
        assert f"{shipped} active campaign(s) of {shipped}" in lines[0], lines[0]
        assert f"provider smtp (127.0.0.1:{smtp_sink.port}, none)" in lines[0], lines[0]
    for name, content in logs_text.items():
        assert "guest:guest" not in content and "a-long-random-test-secret" not in content, name
