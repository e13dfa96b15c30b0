"""Reach the real services of the machine; with CI=true a missing one fails the run.

Tests share these servers with everything else on the machine (and with a second test run
in parallel), so each run keeps to names of its own and never stops or restarts them:

* PostgreSQL: a fresh database per session or test (``crosssell_test_<random>``), dropped
  afterwards;
* RabbitMQ: a virtual host per run (``crosssell-test-<random>``) created with
  ``rabbitmqctl`` and deleted when the run ends, so even the default queue and exchange
  names (``crosssell.events``, ``crm.events``) are private to the run;
* Redis: a database number (1-15) claimed per run with an atomic ``SET NX`` marker and
  released when the run ends.

Tests that break a server use a private one instead (``tests/support/private_services.py``).
"""

from __future__ import annotations

import atexit
import os
import secrets
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_ADMIN_URL = os.environ.get(
    "CROSSSELL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_URL = os.environ.get("CROSSSELL_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("CROSSSELL_TEST_REDIS", "redis://127.0.0.1:6379/0")


def unavailable(service: str, error: object) -> None:
    message = f"{service} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message + " (CI=true: a missing service is a failure)")
    pytest.skip(message)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


@contextmanager
def fresh_postgres_database(
    template: str | None = None, admin_url: str = POSTGRES_ADMIN_URL
) -> Iterator[str]:
    """A new database on the PostgreSQL server of ``admin_url`` (the shared one unless a
    private server's is given), dropped afterwards: empty, or a copy of ``template`` (a
    database nobody is connected to)."""
    from sqlalchemy import create_engine, text

    name = f"crosssell_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    copy = f' TEMPLATE "{template}"' if template else ""
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    except Exception as exc:
        admin.dispose()
        unavailable("PostgreSQL", exc)
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from worker.core.db import dispose_engines

        dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


_RUN_VHOST: str | None = None
_RUN_REDIS_DB: int | None = None


def _rabbitmqctl(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *arguments], capture_output=True, text=True, timeout=60, check=False
    )


def _with_vhost(url: str, vhost: str) -> str:
    """The URL with its path replaced by the vhost (kombu and pika both read a name
    without ``/`` or ``%`` as it is)."""
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path="/" + vhost))


def _delete_run_vhost(vhost: str) -> None:
    _rabbitmqctl("delete_vhost", vhost)


def _run_vhost() -> str:
    """This run's virtual host on the shared node: created on first use, deleted at exit.

    ``rabbitmqctl`` needs the node's Erlang cookie (root or the rabbitmq user on a
    packaged install). Where it cannot run, the tests fall back to the URL's own vhost
    and rely on their per-test queue names (fixed-name consumer tests may then meet a
    parallel run's messages)."""
    global _RUN_VHOST
    if _RUN_VHOST is None:
        vhost = f"crosssell-test-{secrets.token_hex(5)}"
        created = _rabbitmqctl("add_vhost", vhost)
        user = RABBITMQ_URL.split("://", 1)[1].split(":", 1)[0]
        if created.returncode == 0:
            atexit.register(_delete_run_vhost, vhost)
            granted = _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
            if granted.returncode != 0:
                unavailable("RabbitMQ", f"cannot grant {user} on {vhost}: {granted.stderr}")
            _RUN_VHOST = vhost
        else:
            _RUN_VHOST = ""
    return _RUN_VHOST


def require_rabbitmq() -> str:
    """The shared RabbitMQ, on this run's own virtual host."""
    from kombu.connection import Connection

    host, port = _host_port(RABBITMQ_URL, 5672)
    # rabbitmqctl reaches the node of this host only: a remote broker keeps its vhost.
    local = host in ("127.0.0.1", "localhost", "::1")
    vhost = _run_vhost() if local and port_open(host, port) else ""
    url = _with_vhost(RABBITMQ_URL, vhost) if vhost else RABBITMQ_URL
    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        unavailable("RabbitMQ", exc)
    return url


def _host_port(url: str, default: int) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default


CLAIM_KEY = "crosssell-test:claimed-by"


def _release_redis_db(number: int, token: str) -> None:
    """Empty the database again (it was empty when claimed, so all in it is this run's:
    queues, kombu bindings, rate-limit keys) and give it up."""
    import redis

    client = redis.Redis.from_url(_redis_url(number), socket_timeout=3)
    try:
        if client.get(CLAIM_KEY) == token.encode():
            client.flushdb()
    except redis.RedisError:
        pass
    finally:
        client.close()


def _redis_url(number: int) -> str:
    return REDIS_URL.rsplit("/", 1)[0] + f"/{number}"


def require_redis() -> str:
    """The shared Redis, on a database number this run claimed: the first of 1-15 (db 0 is
    left to whatever else uses the server) that is empty. ``SET NX`` of a marker key makes
    the claim atomic between parallel runs; the marker expires after a day should a run
    die without releasing. A database holding anything besides the marker is someone
    else's and skipped."""
    import redis

    global _RUN_REDIS_DB
    if _RUN_REDIS_DB is None:
        token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        try:
            for number in range(1, 16):
                client = redis.Redis.from_url(_redis_url(number), socket_timeout=3)
                try:
                    if not client.set(CLAIM_KEY, token, nx=True, ex=86400):
                        continue
                    if client.dbsize() > 1:
                        client.delete(CLAIM_KEY)
                        continue
                    _RUN_REDIS_DB = number
                    atexit.register(_release_redis_db, number, token)
                    break
                finally:
                    client.close()
        except Exception as exc:
            unavailable("Redis", exc)
        if _RUN_REDIS_DB is None:
            unavailable("Redis", "databases 1-15 are all in use (claimed or not empty)")
    assert _RUN_REDIS_DB is not None
    return _redis_url(_RUN_REDIS_DB)
