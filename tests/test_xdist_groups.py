"""``make test``'s two processes keep a module with module-scoped fixtures on one process.

``tests/conftest.py`` puts such a module's tests in one ``xdist_group`` and ``--dist
loadgroup`` is to run the group on one process. Nothing fails when that stops working:
each process just builds the module's fixtures again (the delivery fault module's private
servers and seeded database, 65 s under load). It stopped twice, silently: the conftest's
hook ran after pytest-xdist had read the markers, and pytest 9.2 ignores the node id
pytest-xdist 3.8 rewrites (pytest-xdist issue #1386). This runs a small sample through
both processes and reads which one ran each test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.untraced import untraced

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = """
import pytest

@pytest.fixture(scope="module")
def shared():
    return object()

@pytest.mark.parametrize("n", range(6))
def test_uses_the_module_fixture(shared, n):
    pass

@pytest.mark.parametrize("n", range(6))
def test_alone(n):
    pass
"""


def test_a_module_with_a_module_fixture_runs_on_one_process(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n"
    )
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    # Not measured: coverage's subprocess patch would trace this second pytest too.
    env = untraced()
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v",
            "-p", "no:cacheprovider", "-p", "no:randomly", "--rootdir", str(tmp_path),
            "-c", os.devnull, str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    ran = re.findall(r"\[(gw\d)\] .*PASSED \S*::(test_\w+)\[", done.stdout)
    assert len(ran) == 12, done.stdout[-4000:]
    grouped = {worker for worker, test in ran if test == "test_uses_the_module_fixture"}
    assert len(grouped) == 1, f"the module fixture's tests ran on {sorted(grouped)}"
