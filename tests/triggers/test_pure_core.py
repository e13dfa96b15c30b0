"""``triggers/`` is the pure core: no file system, processes, network, database or shell.

Checked two ways: no module imports what I/O needs (read from each module's syntax tree),
and every module imports with the file system closed (``file_guard``); the other tests
in this directory run with it closed too (``conftest.py``).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.triggers.file_guard import FileSystemClosed

REPO = Path(__file__).resolve().parents[2]
# Read at import, before any test closes the file system.
SOURCES = {path.stem: path.read_text("utf-8") for path in sorted((REPO / "triggers").glob("*.py"))}
MODULES = sorted(f"triggers.{stem}" if stem != "__init__" else "triggers" for stem in SOURCES)

# Top-level packages the core must not import: files and directories, processes and
# threads, the network, the database, and the shell (``worker``).
FORBIDDEN = frozenset(
    {
        "os",
        "io",
        "pathlib",
        "shutil",
        "tempfile",
        "glob",
        "fileinput",
        "importlib",
        "concurrent",
        "multiprocessing",
        "threading",
        "subprocess",
        "socket",
        "ssl",
        "http",
        "urllib",
        "smtplib",
        "sqlalchemy",
        "worker",
    }
)


def forbidden_uses(source: str) -> list[str]:
    """Forbidden imports (anywhere in the module, functions included) and calls of the
    ``open`` and ``__import__`` builtins, as ``line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.stmt | ast.expr):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [f"{node.lineno}: import {name}" for name in names if _root(name) in FORBIDDEN]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("open", "__import__")
        ):
            found.append(f"{node.lineno}: {node.func.id}()")
    return found


def _root(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("stem", sorted(SOURCES))
def test_no_module_of_the_core_imports_what_io_needs(stem: str) -> None:
    assert forbidden_uses(SOURCES[stem]) == []


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import os\n", ["1: import os"]),
        ("from pathlib import Path\n", ["1: import pathlib"]),
        (
            "def f():\n    from concurrent.futures import ProcessPoolExecutor\n",
            ["2: import concurrent.futures"],
        ),
        ("import multiprocessing.pool\n", ["1: import multiprocessing.pool"]),
        ("from worker.decide.rules import load_rules\n", ["1: import worker.decide.rules"]),
        ("import sqlalchemy as sa\n", ["1: import sqlalchemy"]),
        ("text = open('x').read()\n", ["1: open()"]),
        ("from triggers.os_names import x\nimport osmosis\n", []),
    ],
)
def test_the_import_check_finds_what_it_forbids(source: str, found: list[str]) -> None:
    assert forbidden_uses(source) == found


def test_every_module_imports_with_the_file_system_closed() -> None:
    """In a fresh interpreter, so that nothing is imported (or cached) already.

    pydantic looks for its plugins in the installed packages' metadata the first time a
    model is built, which lists every ``sys.path`` entry, the working directory included:
    that is pydantic's reading, not the core's, so it is switched off with pydantic's
    documented ``PYDANTIC_DISABLE_PLUGINS``."""
    script = (
        "import importlib, sys\n"
        "from tests.triggers.file_guard import closed_file_system\n"
        "with closed_file_system() as attempts:\n"
        "    for name in sys.argv[1:]:\n"
        "        importlib.import_module(name)\n"
        "assert attempts == [], attempts\n"
        "print(len(sys.argv) - 1, 'modules')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *MODULES],
        cwd=REPO,
        env={**os.environ, "PYDANTIC_DISABLE_PLUGINS": "__all__"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{len(MODULES)} modules"


def test_the_file_system_is_closed_during_these_tests(closed_files: list[str]) -> None:
    with pytest.raises(FileSystemClosed):
        open(REPO / "README.md")  # noqa: SIM115 - the open itself is refused
    with pytest.raises(FileSystemClosed):
        (REPO / "config" / "segments.yaml").read_text("utf-8")
    with pytest.raises(FileSystemClosed):
        list((REPO / "config" / "campaigns").iterdir())
    assert len(closed_files) == 3
    closed_files.clear()  # refused on purpose: the fixture's own check is for the core
