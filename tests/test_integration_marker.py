"""The ``integration`` marker is where it must be, and its guard fails a test that hides a
service (tests/support/integration.py).

Each check runs pytest in a subprocess on a small test file of its own, with the plugin
loaded and the "service" a listening socket of this test named as the Redis address: no
real service is needed, so these run under ``-m "not integration"`` too.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = """
import socket
import subprocess

import pytest

from tests.support import services

PORT = {port}


@pytest.fixture
def postgres_url():
    return "postgresql+psycopg://nowhere/none"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    return request.param


def _helper_reaching_redis():
    return services.require_redis()


def test_pure():
    assert 1 + 1 == 2


def test_with_the_postgres_fixture(postgres_url):
    assert postgres_url


def test_on_each_database(database_url):
    assert database_url


def test_through_a_helper():
    assert callable(_helper_reaching_redis)


def test_hides_a_connection():
    with socket.create_connection(("127.0.0.1", PORT), timeout=5):
        pass


@pytest.mark.integration
def test_marked_connection():
    with socket.create_connection(("127.0.0.1", PORT), timeout=5):
        pass


def test_hides_a_server_binary(tmp_path):
    subprocess.run([{binary!r}], check=True)
"""


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback port that accepts connections, standing in for Redis."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


@pytest.fixture
def sample(tmp_path: Path, listener: int) -> Path:
    # An executable named like a server binary: the guard looks at the name only.
    binary = tmp_path / "bin" / "redis-server"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    path = tmp_path / "test_sample.py"
    path.write_text(textwrap.dedent(SAMPLE.format(port=listener, binary=str(binary))))
    return path


def _pytest(sample: Path, port: int, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CROSSSELL_TEST_REDIS": f"redis://127.0.0.1:{port}/0",
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.support.integration",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "-q",
            *arguments,
            str(sample),
        ],
        cwd=sample.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_collection_marks_what_names_or_picks_a_service(sample: Path, listener: int) -> None:
    done = _pytest(sample, listener, "--collect-only", "-m", "integration")
    selected = {line.split("::", 1)[1] for line in done.stdout.splitlines() if "::" in line}
    assert selected == {
        "test_with_the_postgres_fixture",
        "test_on_each_database[postgresql]",
        "test_through_a_helper",
        "test_marked_connection",
    }, done.stdout + done.stderr


def test_the_guard_fails_only_the_unmarked_tests_that_reach_a_service(
    sample: Path, listener: int
) -> None:
    done = _pytest(sample, listener, "-rA", "-k", "hides or marked or pure")
    output = done.stdout
    assert done.returncode == 1, output + done.stderr
    assert "ERROR test_sample.py::test_hides_a_connection" in output
    assert f"reached a connection to 127.0.0.1:{listener} without the `integration`" in output
    assert "ERROR test_sample.py::test_hides_a_server_binary" in output
    assert "reached the server binary redis-server without" in output
    assert "PASSED test_sample.py::test_marked_connection" in output
    assert "PASSED test_sample.py::test_pure" in output


def test_the_suite_loads_the_marker_plugin(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("tests.support.integration")
