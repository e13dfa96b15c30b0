"""The test suite leaves the machine's shared services alone.

A test that stops, restarts or cuts off a server must do it to a private one
(``tests/support/private_services.py``); ordinary tests keep to this run's own vhost and
Redis database, so a second run in parallel cannot see their queues or keys.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from amqp.exceptions import NotFound
from kombu.exceptions import OperationalError

from tests.support import services
from tests.support.private_services import PrivateRabbitMQ

TESTS = Path(__file__).resolve().parent
# What breaks a server for everyone using it: RabbitMQ's application stop, PostgreSQL's
# backend termination, Redis's shutdown, a broker-wide purge.
DISRUPTIVE = re.compile(
    r"stop_app|start_app|pg_terminate_backend|pg_cancel_backend|"
    r"\bSHUTDOWN\b|FLUSHALL|flushall\(|rabbitmqctl\s+(?:stop|reset|force_reset)"
)
ALLOWED = {TESTS / "support" / "private_services.py", Path(__file__).resolve()}


def test_only_private_servers_are_stopped_restarted_or_cut_off() -> None:
    """Every test file that stops or cuts off a server takes it from private_services."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path in ALLOWED:
            continue
        source = path.read_text(encoding="utf-8")
        if DISRUPTIVE.search(source) and "tests.support.private_services" not in source:
            offenders.append(str(path.relative_to(TESTS)))
    assert offenders == []


@pytest.mark.parametrize(
    ("source", "disruptive"),
    [
        ('rabbitmqctl("stop_app")', True),
        ("subprocess.run(['rabbitmqctl', 'start_app'])", True),
        ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", True),
        ("client.flushall()", True),
        ("redis-cli SHUTDOWN NOSAVE", True),
        ("rabbitmqctl reset", True),
        ("rabbitmqctl list_vhosts", False),
        ("client.flushdb()", False),
        ("SELECT pg_backend_pid()", False),
    ],
)
def test_the_scan_recognizes_what_disrupts(source: str, disruptive: bool) -> None:
    assert bool(DISRUPTIVE.search(source)) is disruptive


@pytest.mark.integration
def test_the_run_has_its_own_vhost_and_redis_database() -> None:
    """A queue declared by this run is invisible on the broker's default vhost, and the
    Redis database is one no other claimer can take while this run holds it."""
    import redis
    from kombu import Connection

    url = services.require_rabbitmq()
    if url == services.RABBITMQ_URL:
        # Outside CI a skip, with CI=true a failure, like any missing service.
        services.unavailable("a per-run RabbitMQ vhost", "rabbitmqctl cannot reach the node")
    assert "/crosssell-test-" in url
    queue = f"isolation.{secrets.token_hex(4)}"
    with Connection(url) as mine, Connection(services.RABBITMQ_URL) as default:
        mine.default_channel.queue_declare(queue, auto_delete=False)
        try:
            with pytest.raises(NotFound):
                default.default_channel.queue_declare(queue, passive=True)
        finally:
            mine.default_channel.queue_delete(queue)

    redis_url = services.require_redis()
    number = int(redis_url.rsplit("/", 1)[1])
    assert 1 <= number <= 15
    client = redis.Redis.from_url(redis_url)
    try:
        # A second run's claim on the same number fails: the marker is already there.
        assert not client.set(services.CLAIM_KEY, "another-run", nx=True)
    finally:
        client.close()


@pytest.fixture(scope="module")
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    server = PrivateRabbitMQ()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.mark.integration
def test_restarting_the_private_node_leaves_the_shared_one_running(
    private_rabbitmq: PrivateRabbitMQ,
) -> None:
    from kombu import Connection

    shared_url = services.require_rabbitmq()
    assert private_rabbitmq.node.startswith("crosssell-test-")
    with Connection(shared_url, connect_timeout=3) as shared:
        shared.ensure_connection(max_retries=1)
        private_rabbitmq.stop_app()
        try:
            with (
                pytest.raises((OSError, OperationalError)),
                Connection(private_rabbitmq.url, connect_timeout=2) as down,
            ):
                down.ensure_connection(max_retries=1)
            # The shared connection never noticed: same socket, still usable.
            shared.default_channel.queue_declare(f"alive.{secrets.token_hex(4)}", exclusive=True)
        finally:
            private_rabbitmq.start_app()
    with Connection(private_rabbitmq.url, connect_timeout=3) as back:
        back.ensure_connection(max_retries=1)
