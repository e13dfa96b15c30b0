"""The bench's own database and RabbitMQ virtual host on the machine's shared servers.

Like the tests (tests/support/services.py), the bench never stops or restarts a shared
server: it creates a database ``crosssell_bench_<random>`` and a virtual host
``crosssell-bench-<random>`` (with ``rabbitmqctl``, guest granted on it), and drops both
when it ends. The servers are the tests' ones, overridable with the same variables:
``CROSSSELL_TEST_POSTGRES`` and ``CROSSSELL_TEST_RABBITMQ``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

POSTGRES_ADMIN_URL = os.environ.get(
    "CROSSSELL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_URL = os.environ.get("CROSSSELL_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")


def driver_url(url: str) -> str:
    """A SQLAlchemy URL as libpq reads it (``postgresql+psycopg://`` → ``postgresql://``)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def admin_connection() -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(driver_url(POSTGRES_ADMIN_URL), autocommit=True)


@contextmanager
def bench_database() -> Iterator[str]:
    """A new, empty database; yields its SQLAlchemy URL; dropped (WITH FORCE) at the end."""
    name = f"crosssell_bench_{secrets.token_hex(5)}"
    with admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rabbitmqctl(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *arguments], capture_output=True, text=True, timeout=60, check=False
    )


@contextmanager
def bench_vhost() -> Iterator[str]:
    """A new virtual host on the shared node; yields the AMQP URL on it; deleted at the
    end with every queue and exchange in it. Raises RuntimeError when ``rabbitmqctl``
    cannot create it (it needs the node's Erlang cookie: root or the rabbitmq user)."""
    vhost = f"crosssell-bench-{secrets.token_hex(5)}"
    created = _rabbitmqctl("add_vhost", vhost)
    if created.returncode != 0:
        raise RuntimeError(f"rabbitmqctl add_vhost {vhost} failed: {created.stderr.strip()}")
    try:
        user = urlsplit(RABBITMQ_URL).username or "guest"
        granted = _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        if granted.returncode != 0:
            raise RuntimeError(f"cannot grant {user} on {vhost}: {granted.stderr.strip()}")
        yield urlunsplit(urlsplit(RABBITMQ_URL)._replace(path="/" + vhost))
    finally:
        _rabbitmqctl("delete_vhost", vhost)
