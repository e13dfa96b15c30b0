"""The embedded broker (worker.core.embedded_broker) on a real SQLite file, through kombu.

Each case uses kombu's public API as the consumer and Celery do: a message handed out is
leased, deleted on ack, back on requeue, gone on reject, back after its lease when its
consumer vanished; the file stays bounded; kombu's old SQLAlchemy format is upgraded.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.message import Message
from kombu.messaging import Consumer, Producer

import worker.core.topology  # noqa: F401  (registers the sqlite:// transport with kombu)
from tests.support.factories import make_settings
from worker.core.embedded_broker import database_path, lease_seconds

EXCHANGE = Exchange("crm.events", type="topic", durable=True)
QUEUE = Queue("crosssell.events", exchange=EXCHANGE, routing_key="#", durable=True)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'var' / 'broker.db'}?lease=1s"


def _publish(url: str, bodies: list[dict[str, Any]]) -> None:
    with Connection(url) as connection:
        producer = Producer(connection.channel(), exchange=EXCHANGE)
        QUEUE(producer.channel).declare()
        for body in bodies:
            producer.publish(body, routing_key="purchase", serializer="json")


def _receive(connection: Connection, count: int, timeout: float = 10.0) -> list[Message]:
    """``count`` messages off the queue, unsettled, each as kombu hands it to a consumer."""
    received: list[Message] = []
    consumer = Consumer(connection, [QUEUE], on_message=received.append, prefetch_count=100)
    consumer.consume()
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        with suppress(TimeoutError):
            connection.drain_events(timeout=0.2)
    consumer.cancel()
    return received


def _rows(url: str) -> list[tuple[str, float, int]]:
    with closing(sqlite3.connect(database_path(url))) as db:
        return db.execute(
            "SELECT queue, visible_at, deliveries FROM crosssell_broker_message ORDER BY id"
        ).fetchall()


def _waiting(url: str) -> int:
    with Connection(url) as connection:
        return int(QUEUE(connection.default_channel).queue_declare(passive=True).message_count)


def test_an_acknowledged_message_is_deleted(broker: str) -> None:
    _publish(broker, [{"n": 1}, {"n": 2}])
    with Connection(broker) as connection:
        first, second = _receive(connection, 2)
        assert (first.payload, second.payload) == ({"n": 1}, {"n": 2})
        first.ack()
        assert len(_rows(broker)) == 1
        second.ack()
    assert _rows(broker) == []
    assert _waiting(broker) == 0


def test_a_handed_out_message_is_leased_not_lost(broker: str) -> None:
    """Until its lease runs out a handed-out message is hidden from other consumers, and
    still counted as waiting (a drain check must not think the queue done)."""
    _publish(broker, [{"n": 1}])
    with Connection(broker) as holder, Connection(broker) as other:
        (message,) = _receive(holder, 1)
        assert not message.delivery_info["redelivered"]
        assert _receive(other, 1, timeout=0.5) == []
        assert _waiting(broker) == 1
        [(_, visible_at, deliveries)] = _rows(broker)
        assert visible_at > time.time() and deliveries == 1
        message.ack()


def test_requeue_puts_the_message_back_and_reject_drops_it(broker: str) -> None:
    _publish(broker, [{"n": 1}, {"n": 2}])
    with Connection(broker) as connection:
        first, second = _receive(connection, 2)
        first.requeue()
        second.reject()
        (again,) = _receive(connection, 1)
        assert again.payload == {"n": 1}
        assert again.delivery_info["redelivered"]
        again.ack()
    assert _rows(broker) == []


def test_a_clean_close_gives_unacknowledged_messages_back_at_once(broker: str) -> None:
    _publish(broker, [{"n": 1}])
    with Connection(broker) as connection:
        assert len(_receive(connection, 1)) == 1
    [(_, visible_at, _)] = _rows(broker)
    assert visible_at == 0


_HOLD_AND_DIE = """
import os, signal, sys, time
import worker.core.topology
from kombu import Connection, Consumer, Exchange, Queue
queue = Queue("crosssell.events", Exchange("crm.events", type="topic"), routing_key="#")
with Connection(sys.argv[1]) as connection:
    held = []
    with Consumer(connection, [queue], on_message=held.append, prefetch_count=10):
        while not held:
            connection.drain_events(timeout=5)
    print(held[0].payload["n"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_message_held_by_a_killed_consumer_comes_back_after_its_lease(
    broker: str, tmp_path: Path
) -> None:
    """The SIGKILL case: nothing runs at exit, the lease alone brings the message back."""
    _publish(broker, [{"n": 7}])
    died = subprocess.run(
        [sys.executable, "-c", _HOLD_AND_DIE, broker],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert died.returncode == -9, died.stderr
    assert died.stdout.strip() == "7"
    [(_, visible_at, deliveries)] = _rows(broker)
    assert visible_at > 0 and deliveries == 1  # still leased to the dead process
    with Connection(broker) as connection:
        (message,) = _receive(connection, 1, timeout=10)
        assert message.payload == {"n": 7}
        assert message.delivery_info["redelivered"]
        message.ack()
    assert _rows(broker) == []


def test_a_live_consumer_keeps_its_lease(broker: str) -> None:
    """Held past several lease lengths while its connection keeps draining (as Celery's
    loop does while a task runs), a message is not handed to anyone else."""
    _publish(broker, [{"n": 1}])
    with Connection(broker) as holder, Connection(broker) as other:
        (message,) = _receive(holder, 1)
        deadline = time.monotonic() + 3 * lease_seconds(broker)
        while time.monotonic() < deadline:
            with suppress(TimeoutError):
                holder.drain_events(timeout=0.2)
            assert _receive(other, 1, timeout=0.1) == []
        message.ack()
    assert _rows(broker) == []


def _consume_and_ack(url: str, count: int) -> None:
    acked: list[Message] = []

    def ack(message: Message) -> None:
        message.ack()
        acked.append(message)

    with Connection(url) as connection, Consumer(connection, [QUEUE], on_message=ack):
        while len(acked) < count:
            connection.drain_events(timeout=10)


_FORK = """
import os, sys
import worker.core.topology
from kombu import Connection, Producer, Queue
from worker.core.embedded_broker import connection_for, database_path
queue = Queue("forked", routing_key="forked")
url = sys.argv[1]
with Connection(url) as connection:  # the parent has its connection open at the fork
    producer = Producer(connection.channel())
    queue(producer.channel).declare()
    producer.publish({"n": 1}, routing_key="forked")
    parents = connection_for(database_path(url))
    child = os.fork()
    if child == 0:
        if connection_for(database_path(url)) is parents:
            os._exit(4)
        with Connection(url) as own:
            message = queue(own.channel()).get()
            message.ack()
        os._exit(0 if message.payload == {"n": 1} else 3)
    _, status = os.waitpid(child, 0)
    producer.publish({"n": 2}, routing_key="forked")  # the parent's connection still works
    print(os.waitstatus_to_exitcode(status), queue(connection.channel()).get().payload["n"])
"""


def test_a_forked_child_opens_its_own_connection(broker: str) -> None:
    """Celery's prefork pool forks after the parent opened the file: the child must not
    reuse the parent's SQLite connection, and the parent's must survive the child."""
    done = subprocess.run(
        [sys.executable, "-c", _FORK, broker],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "2"]


def _file_size(url: str) -> int:
    path = database_path(url)
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def test_the_file_stays_bounded(broker: str) -> None:
    """Acknowledged messages are deleted and their pages reused: carrying 5,000 messages a
    second time does not grow the file."""
    body = {"pad": "x" * 400}
    sizes = []
    for _ in range(2):
        _publish(broker, [body] * 5000)
        _consume_and_ack(broker, 5000)
        assert _rows(broker) == []
        sizes.append(_file_size(broker))
    assert sizes[1] < sizes[0] * 1.2, sizes


def test_lease_and_path_from_the_url() -> None:
    assert database_path("sqlite:////abs/var/broker.db?lease=5s") == Path("/abs/var/broker.db")
    assert database_path("sqlite:///var/broker.db") == Path("var/broker.db")
    assert lease_seconds("sqlite:///var/broker.db") == 30.0
    assert lease_seconds("sqlite:///var/broker.db?lease=2m") == 120.0
    assert lease_seconds("sqlite:///var/broker.db?lease=0.5") == 0.5
    with pytest.raises(ValueError):
        lease_seconds("sqlite:///var/broker.db?lease=0")
    with pytest.raises(ValueError):
        database_path("sqla+sqlite:///var/broker.db")


def test_earlier_releases_url_is_served_by_the_embedded_broker(tmp_path: Path) -> None:
    legacy = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    settings = make_settings(tmp_path, broker_url=legacy)
    assert settings.resolved_broker_url == f"sqlite:///{tmp_path / 'broker.db'}"
    assert settings.resolved_events_url == settings.resolved_broker_url
    assert make_settings(tmp_path).resolved_broker_url.startswith("sqlite:///")


def test_a_broker_file_of_kombus_sqlalchemy_transport_is_upgraded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A user upgrading has messages waiting in kombu's format: they are carried over, in
    order; what kombu had already handed out (acknowledged or not, it cannot tell) is not
    replayed."""
    path = tmp_path / "var" / "broker.db"
    path.parent.mkdir(parents=True)
    legacy = f"sqla+sqlite:///{path}"
    with Connection(legacy) as connection:  # kombu's own SQLAlchemy transport
        producer = Producer(connection.channel(), exchange=EXCHANGE)
        QUEUE(producer.channel).declare()
        for n in range(5):
            producer.publish({"n": n}, routing_key="purchase", serializer="json")
        consumer = Consumer(connection, [QUEUE], prefetch_count=1)
        handed: list[Message] = []
        consumer.register_callback(lambda _body, message: handed.append(message))
        consumer.consume()
        connection.drain_events(timeout=5)
        handed[0].ack()  # kombu keeps it, invisible
        consumer.cancel()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM kombu_message").fetchone()[0] == 5

    url = make_settings(tmp_path, broker_url=legacy).resolved_broker_url
    with (
        caplog.at_level("WARNING", logger="worker.core.embedded_broker"),
        Connection(url) as connection,
    ):
        received = _receive(connection, 4)
        assert [message.payload["n"] for message in received] == [1, 2, 3, 4]
        for message in received:
            message.ack()
    assert "4 waiting message(s) kept, 1 already handed out dropped" in caplog.text
    with closing(sqlite3.connect(path)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "kombu_message" not in tables and "kombu_queue" not in tables
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert _rows(url) == []
