"""The ``integration`` marker, on every test that needs a service of the machine.

``pytest -m "not integration"`` must run on a laptop with no PostgreSQL, RabbitMQ or
Redis (and none of their server binaries). Two halves keep the marker honest:

* **at collection** a test gets the marker when its module or itself says so
  (``pytestmark = pytest.mark.integration``), when one of its fixtures takes a service
  parameter (``database_url[postgresql]``, a broker ``[rabbitmq]``/``[redis]``), or when
  its function, its fixtures or the test helpers they call name a service entry point
  (``postgres_url``, ``require_rabbitmq``, ``require_redis``, ``fresh_postgres_database``,
  the private servers): a static walk of the names their code uses;
* **while it runs** a test without the marker fails if it connects to one of the
  services' ports, opens a PostgreSQL connection, or starts a server binary
  (``rabbitmqctl``, ``initdb``, ``redis-server`` …): whatever the static walk missed
  shows up here, on the test that needs fixing, in every ``make test``.

Loaded by ``tests/conftest.py``; ``tests/test_integration_marker.py`` shows the guard
fails a test that hides a service.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from collections.abc import Generator, Iterable
from pathlib import PurePath
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support import services

MARKER = "integration"
# What a test calls or requests to reach a service: the shared servers' entry points and
# the private servers of the fault tests (their binaries are services too).
SERVICE_NAMES = frozenset(
    {
        "postgres_url",
        "fresh_postgres_database",
        "require_rabbitmq",
        "require_redis",
        "PrivateRabbitMQ",
        "PrivatePostgres",
        "PrivateRedis",
    }
)
# Fixture parameters that pick a real service (``database_url``, broker fixtures).
SERVICE_PARAMS = frozenset({"postgresql", "rabbitmq", "redis"})
SERVER_BINARIES = frozenset(
    {
        "rabbitmq-server",
        "rabbitmqctl",
        "initdb",
        "pg_ctl",
        "postgres",
        "psql",
        "redis-server",
        "redis-cli",
    }
)


def service_ports() -> frozenset[int]:
    """The TCP ports of the shared services this run is configured with."""
    defaults = (
        (services.POSTGRES_ADMIN_URL, 5432),
        (services.RABBITMQ_URL, 5672),
        (services.REDIS_URL, 6379),
    )
    return frozenset(urlsplit(url).port or default for url, default in defaults)


# --- at collection -----------------------------------------------------------------------


def _codes(code: types.CodeType) -> Iterable[types.CodeType]:
    """The code object and those nested in it (inner functions, comprehensions)."""
    yield code
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _codes(constant)


class _NameWalk:
    """Does a function, or a test helper it calls, name a service entry point?

    Follows names through the function's globals, and attributes of test-support modules
    (``fleet.Fleet``), into functions and classes defined under ``tests.``; library code
    is not followed (it reaches a service only through a URL a test gave it)."""

    def __init__(self, test_modules: set[str]) -> None:
        self._memo: dict[object, bool] = {}
        self._test_modules = test_modules

    def _is_test_code(self, module: str) -> bool:
        return module.startswith("tests.") or module in self._test_modules

    def _is_test_helper(self, value: object) -> bool:
        return self._is_test_code(getattr(value, "__module__", None) or "")

    def function_uses_service(self, function: object) -> bool:
        function = getattr(function, "__func__", function)
        function = getattr(function, "__wrapped__", function)
        if function in self._memo:
            return self._memo[function]
        self._memo[function] = False  # a cycle adds nothing
        code = getattr(function, "__code__", None)
        found = False
        if isinstance(code, types.CodeType):
            namespace: dict[str, Any] = getattr(function, "__globals__", {})
            found = self._code_uses_service(code, namespace)
        self._memo[function] = found
        return found

    def _code_uses_service(self, code: types.CodeType, namespace: dict[str, Any]) -> bool:
        names: set[str] = set()
        for inner in _codes(code):
            names.update(inner.co_names)
        if names & SERVICE_NAMES:
            return True
        modules = [
            value
            for name in names
            if isinstance(value := namespace.get(name), types.ModuleType)
            and self._is_test_code(value.__name__)
        ]
        for name in names:
            candidates = [namespace.get(name), *(getattr(m, name, None) for m in modules)]
            for value in candidates:
                if value is None or not self._is_test_helper(value):
                    continue
                if isinstance(value, type):
                    members = [m for m in vars(value).values() if callable(m) or _wraps(m)]
                    if any(self.function_uses_service(m) for m in members):
                        return True
                elif callable(value) and self.function_uses_service(value):
                    return True
        return False


def _wraps(member: object) -> bool:
    return isinstance(member, staticmethod | classmethod | property)


def _fixture_functions(item: pytest.Item) -> list[object]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    return [
        definition.func
        for definitions in info.name2fixturedefs.values()
        for definition in definitions
    ]


def _service_param(item: pytest.Item) -> bool:
    """A fixture of the test runs with a service parameter (``database_url[postgresql]``)."""
    callspec = getattr(item, "callspec", None)
    info = getattr(item, "_fixtureinfo", None)
    if callspec is None or info is None:
        return False
    for name, value in callspec.params.items():
        picks_service = isinstance(value, str) and SERVICE_PARAMS & set(value.split("+"))
        if name in info.name2fixturedefs and picks_service:
            return True
    return False


def needs_service(item: pytest.Item, walk: _NameWalk) -> bool:
    if item.get_closest_marker(MARKER) is not None or _service_param(item):
        return True
    if SERVICE_NAMES & set(getattr(item, "fixturenames", ())):
        return True
    functions = [getattr(item, "function", None), *_fixture_functions(item)]
    return any(walk.function_uses_service(f) for f in functions if f is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: needs the PostgreSQL, RabbitMQ, Redis services of the machine"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark before ``-m`` deselects (``tryfirst``: ahead of pytest's own mark plugin)."""
    walk = _NameWalk({item.module.__name__ for item in items if isinstance(item, pytest.Function)})
    for item in items:
        if item.get_closest_marker(MARKER) is None and needs_service(item, walk):
            item.add_marker(MARKER)


# --- while it runs -----------------------------------------------------------------------


class ServiceGuard:
    """Records what the running test reached: service sockets, PostgreSQL connections,
    server binaries. Only the test's own threads count (the main one and those started
    since its setup), so a thread an earlier test left behind cannot blame this one."""

    def __init__(self, ports: frozenset[int]) -> None:
        self.ports = ports
        self.touched: list[str] = []
        self._watching = False
        self._threads_before: set[int] = set()

    def start(self) -> None:
        self.touched = []
        self._threads_before = {t.ident for t in threading.enumerate() if t.ident}
        self._threads_before.discard(threading.main_thread().ident)
        self._watching = True

    def stop(self) -> list[str]:
        self._watching = False
        return self.touched

    def _record(self, what: str) -> None:
        if not self._watching or threading.get_ident() in self._threads_before:
            return
        if what not in self.touched:
            self.touched.append(what)

    def audit(self, event: str, arguments: tuple[Any, ...]) -> None:
        if not self._watching:
            return
        if event == "socket.connect":
            address = arguments[1]
            if isinstance(address, tuple) and len(address) >= 2 and address[1] in self.ports:
                self._record(f"a connection to {address[0]}:{address[1]}")
        elif event == "subprocess.Popen":
            argv = arguments[1]
            if isinstance(argv, str | bytes):
                words = os.fsdecode(argv).split()
            else:
                words = [os.fsdecode(w) if isinstance(w, str | bytes) else str(w) for w in argv]
            # The first few words: a wrapper (``runuser -u postgres initdb …``) comes first.
            for name in {PurePath(word).name for word in words[:4]} & SERVER_BINARIES:
                self._record(f"the server binary {name}")

    def postgres_connected(self, dbapi_connection: object, record: object) -> None:
        if type(dbapi_connection).__module__.startswith("psycopg"):
            self._record("a PostgreSQL connection")


GUARD = ServiceGuard(service_ports())


def _install() -> None:
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    sys.addaudithook(GUARD.audit)
    event.listen(Pool, "connect", GUARD.postgres_connected)


_install()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    GUARD.start()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Teardown is not watched: session and module fixtures end in whichever test
    happens to be last, marked or not."""
    item.stash[_TOUCHED] = GUARD.stop()


_TOUCHED = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    touched = item.stash.get(_TOUCHED, [])
    if call.when == "teardown" and touched and item.get_closest_marker(MARKER) is None:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} reached {', '.join(touched)} without the `{MARKER}` marker: "
            "request the service through its fixture (postgres_url, database_url) or put "
            f"`pytestmark = pytest.mark.{MARKER}` in the module "
            "(tests/support/integration.py)"
        )
    return report
