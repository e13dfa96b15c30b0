"""End to end on the production stack, each part in its own process as in production:
``crosssell consume``, ``crosssell dispatch`` and ``celery -A worker.outbox.app worker`` on
PostgreSQL, RabbitMQ for events, RabbitMQ or Redis for Celery, SMTP to a loopback sink.
The CRM is played by pika, a plain AMQP client.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from tests.support.factories import as_json, customer_block, purchase
from tests.support.fleet import CAMPAIGN
from tests.support.services import fresh_postgres_database, require_rabbitmq, require_redis
from tests.support.smtp_sink import SmtpSink
from tests.worker.intake.test_consumer_rabbitmq import wait_for
from worker.commands.migrate import upgrade

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def _pika(url: str) -> pika.BlockingConnection:
    """pika reads the URL path percent-decoded as the vhost; kombu's ``//`` (the default
    vhost ``/``) must be spelled ``/%2F`` for it, a named vhost is the same for both."""
    if url.endswith("//"):
        url = url[:-2] + "/%2F"
    return pika.BlockingConnection(pika.URLParameters(url))


def publish_plain(url: str, body: bytes, routing_key: str) -> None:
    connection = _pika(url)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            "crm.events",
            routing_key,
            body,
            pika.BasicProperties(content_type="application/json", delivery_mode=2),
        )
    finally:
        connection.close()


class Stack:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *command: str) -> None:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            self.processes.append(
                subprocess.Popen(
                    command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
                )
            )

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )


@pytest.fixture(params=["rabbitmq", "redis"])
def stack(
    request: pytest.FixtureRequest, tmp_path: Path, smtp_sink: SmtpSink
) -> Iterator[tuple[Stack, str, SmtpSink]]:
    amqp = require_rabbitmq()
    broker = amqp if request.param == "rabbitmq" else require_redis()
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "instant.yaml").write_text(CAMPAIGN)
    tag = uuid.uuid4().hex[:8]
    with fresh_postgres_database() as database_url:
        upgrade(database_url)
        env = {
            **os.environ,
            "CROSSSELL_DATABASE_URL": database_url,
            "CROSSSELL_EVENTS_URL": amqp,
            "CROSSSELL_BROKER_URL": broker,
            "CROSSSELL_EVENTS_QUEUE": f"crosssell.events.e2e.{tag}",
            "CROSSSELL_DEAD_LETTER_QUEUE": f"crosssell.events.dead.e2e.{tag}",
            "CROSSSELL_DELIVER_QUEUE": f"crosssell.deliver.e2e.{tag}",
            "CROSSSELL_EMAIL_PROVIDER": "smtp",
            "CROSSSELL_POSTAL_ADDRESS": "1 Test Street, Testville",
            "CROSSSELL_SMTP_PORT": str(smtp_sink.port),
            "CROSSSELL_CAMPAIGNS_DIR": str(campaigns),
            "CROSSSELL_QUIET_HOURS": "off",
            "CROSSSELL_VAR_DIR": str(tmp_path / "var"),
            "CROSSSELL_DISPATCH_INTERVAL": "0.2",
        }
        logs = tmp_path / "logs"
        logs.mkdir()
        running = Stack(env, logs)
        from tests.support.factories import make_settings
        from worker.commands.demo import seed_catalog

        seed_catalog(make_settings(tmp_path, database_url=database_url), _now())
        running.start("consume", str(BIN / "crosssell"), "--log-level", "INFO", "consume")
        running.start("dispatch", str(BIN / "crosssell"), "--log-level", "INFO", "dispatch")
        running.start(
            "celery",
            str(BIN / "celery"),
            "-A",
            "worker.outbox.app",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        )
        try:
            yield running, amqp, smtp_sink
        finally:
            running.stop()
            connection = _pika(amqp)
            channel = connection.channel()
            for queue in (env["CROSSSELL_EVENTS_QUEUE"], env["CROSSSELL_DEAD_LETTER_QUEUE"]):
                channel.queue_delete(queue)
            if request.param == "rabbitmq":
                channel.queue_delete(env["CROSSSELL_DELIVER_QUEUE"])
            connection.close()
            from worker.core.db import dispose_engines

            dispose_engines()


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _queue_ready(amqp: str, queue: str) -> bool:
    connection = _pika(amqp)
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


@pytest.mark.skipif(shutil.which("celery", path=str(BIN)) is None, reason="celery not installed")
def test_one_event_one_email_duplicate_none_bad_dead_lettered(
    stack: tuple[Stack, str, SmtpSink],
) -> None:
    running, amqp, sink = stack
    try:
        wait_for(lambda: _queue_ready(amqp, running.env["CROSSSELL_EVENTS_QUEUE"]), 30)
        event = purchase(at=_now(), customer=customer_block("C-e2e-1"))
        publish_plain(amqp, as_json(event), "purchase")
        wait_for(lambda: len(sink.handler.messages) == 1, 60)

        publish_plain(amqp, as_json(event), "purchase")  # the CRM retries: same id
        publish_plain(amqp, b"\xff\xfe not even utf-8", "purchase")
        second = purchase(at=_now(), customer=customer_block("C-e2e-2"))
        publish_plain(amqp, as_json(second), "purchase")
        wait_for(lambda: len(sink.handler.messages) == 2, 60)
        time.sleep(2)  # give a duplicate every chance to show up
    except AssertionError:
        pytest.fail("pipeline did not deliver in time\n" + running.logs())
    messages = sink.handler.parsed()
    assert sorted(str(m["To"]).split("<")[1].rstrip(">") for m in messages) == [
        "c-e2e-1@example.ro",
        "c-e2e-2@example.ro",
    ]
    assert len({m["Message-ID"] for m in messages}) == 2

    connection = _pika(amqp)
    method, properties, body = connection.channel().basic_get(
        running.env["CROSSSELL_DEAD_LETTER_QUEUE"], auto_ack=True
    )
    connection.close()
    assert method is not None, running.logs()
    assert properties.headers["x-crosssell-error"] == "not_utf8"
    assert body == b"\xff\xfe not even utf-8"
