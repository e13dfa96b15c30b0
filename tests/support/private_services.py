"""Private broker and database servers for the tests that break them.

A fault test that stops RabbitMQ, restarts Redis or terminates PostgreSQL connections
must never do it to the machine's shared services: on a laptop or a CI host other
programs (and other test runs) use them. Each class here starts its own server in its own
temporary directory, on free loopback ports, and removes everything on ``close()``:

* ``PrivateRabbitMQ``: a node ``crosssell-test-<random>@localhost`` with its own AMQP and
  distribution ports, Mnesia, log and config files, no plugins (management off) and its
  own Erlang cookie in a private ``HOME``, so ``rabbitmqctl`` reaches only this node.
  Boot takes about 5 s, so tests start one per module.
* ``PrivatePostgres``: a cluster from ``initdb`` on its own port with its Unix socket in
  the temporary directory; durability is off (``fsync``), it is thrown away anyway.
  PostgreSQL refuses to run as root, so under root the server runs as the ``postgres``
  system user (``runuser -u postgres``), which owns the directory.
* ``PrivateRedis``: a ``redis-server`` on its own port that keeps nothing on disk, like a
  cache-configured production Redis: a restart loses every key.

A missing binary skips the test (fails it with ``CI=true``), see ``services.unavailable``.

The module-scoped ``private_postgres`` fixture (one cluster per test module) is loaded for
every test by ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import unavailable
from tests.support.smtp_sink import free_port

BOOT_SECONDS = 90.0  # two shared cores under load: RabbitMQ usually boots in 5-10 s


def _private_folder(kind: str) -> Path:
    """A fresh directory directly under the system temp dir (pytest's own tmp tree is
    mode 0700 for root, which the ``postgres`` user could not enter)."""
    return Path(tempfile.mkdtemp(prefix=f"crosssell-test-{kind}-"))


def _stop_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL what is left of a server started in its own session (it is thrown away)."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class PrivateRabbitMQ:
    """A RabbitMQ node of the test's own; ``stop_app``/``start_app`` are safe on it."""

    def __init__(self) -> None:
        self.folder = _private_folder("rabbitmq")
        self.node = f"crosssell-test-{secrets.token_hex(5)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Kombu/Celery form: guest on the default vhost ``/``."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @staticmethod
    def _binary(name: str) -> str:
        # Debian's /usr/sbin wrappers switch to the rabbitmq user under root and drop the
        # environment; the scripts behind them run as the caller with our variables.
        packaged = Path("/usr/lib/rabbitmq/bin") / name
        if packaged.exists():
            return str(packaged)
        found = shutil.which(name)
        if found is None:
            unavailable(name, "not installed")
        assert found is not None
        return found

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.folder),  # holds this node's .erlang.cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.folder / "rabbitmq.pid"),
        }

    def start(self) -> None:
        binary = self._binary("rabbitmq-server")
        cookie = self.folder / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        (self.folder / "enabled_plugins").write_text("[].\n")
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
        )
        with (self.folder / "server.out").open("wb") as out:
            self.process = subprocess.Popen(
                [binary],
                env=self.environment(),
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.await_startup()

    def ctl(self, *arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self._binary("rabbitmqctl"), "-n", self.node, *arguments],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def await_startup(self) -> None:
        """Poll until the node runs its application (``await_startup`` fails at once while
        the Erlang node is not yet up)."""
        deadline = time.monotonic() + BOOT_SECONDS
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited:\n{self.log_tail()}")
            if self.ctl("await_startup", "--timeout", "30").returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"rabbitmq-server did not start:\n{self.log_tail()}")
            time.sleep(0.5)

    def stop_app(self) -> None:
        completed = self.ctl("stop_app")
        assert completed.returncode == 0, completed.stderr

    def start_app(self) -> None:
        completed = self.ctl("start_app")
        assert completed.returncode == 0, completed.stderr
        self.await_startup()

    def log_tail(self, characters: int = 4000) -> str:
        return "\n".join(
            path.read_text(errors="replace")[-characters:]
            for path in [self.folder / "server.out", *sorted(self.folder.glob("log/*.log"))]
            if path.exists()
        )

    def close(self) -> None:
        """SIGKILL, as ``PrivatePostgres`` stops with ``-m immediate``: the node and its
        Mnesia are thrown away. A ``rabbitmqctl shutdown`` first took 2.6 s a node
        (measured 2026-11-30, load 3-5) for nothing kept."""
        _stop_group(self.process)
        self.process = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _postgres_bin(name: str) -> str:
    """The newest server binaries: Debian keeps them off PATH in /usr/lib/postgresql/N/bin."""
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    found = candidates[-1] if candidates else shutil.which(name)
    if found is None:
        unavailable(name, "not installed (looked in /usr/lib/postgresql/*/bin and PATH)")
    assert found is not None
    return found


class PrivatePostgres:
    """A throw-away PostgreSQL cluster; terminating its backends disturbs nobody."""

    def __init__(self) -> None:
        self.folder = _private_folder("postgres")
        self.port = free_port()
        self.data = self.folder / "data"
        self.user: str | None = None

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        completed = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=120, cwd=self.folder
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"{command[0]} failed: {completed.stderr.strip() or completed.stdout.strip()}\n"
                + self.log_tail()
            )

    def start(self) -> None:
        initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root.
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("PostgreSQL", "running as root and no 'postgres' user to run as")
            self.user = "postgres"
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        self._run(
            initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-sync", "--no-instructions",
        )  # fmt: skip
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off "
            "-c max_connections=200"
        )
        self._run(
            pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"),
            "-w", "-t", str(int(BOOT_SECONDS)), "start",
        )  # fmt: skip

    def log_tail(self, characters: int = 3000) -> str:
        log = self.folder / "server.log"
        return log.read_text(errors="replace")[-characters:] if log.exists() else ""

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


class PrivateRedis:
    """A ``redis-server`` of the test's own on a free port, restartable at will; nothing
    on disk, so a restart loses every queued task."""

    def __init__(self) -> None:
        self.folder = _private_folder("redis")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server", "not installed")
        assert binary is not None
        self.process = subprocess.Popen(
            [
                binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Kill it outright: a crash, not a shutdown (which would not matter, nothing is
        saved either way)."""
        _stop_group(self.process)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    """The test module's own PostgreSQL cluster: its backends may be terminated freely.
    One ``initdb`` and boot per module (a few seconds), shared by its tests."""
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()
