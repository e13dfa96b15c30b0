"""The import direction between the worker's stages holds (docs/architecture.md).

``[tool.importlinter]`` in pyproject.toml declares the layers; import-linter reads every
import in ``worker/`` and ``triggers/`` (inside functions too, not under
``TYPE_CHECKING``). These tests run it on the repository, prove on a copy that it reports
an injected upward import, and keep every package of ``worker/`` in the contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["importlinter"]


def _stages() -> dict[str, object]:
    return next(c for c in CONFIG["contracts"] if c["id"] == "stages")


def _layer_packages() -> list[str]:
    layers: list[str] = _stages()["layers"]  # type: ignore[assignment]
    return [name.strip() for layer in layers for name in layer.replace(":", "|").split("|")]


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``root``, in a process of its own: in-process,
    import-linter configures logging and disables every logger that exists already
    (``worker.*`` included), which silenced the log assertions of later tests."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command;"
         " sys.exit(lint_imports_command())", "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def _lint_copy(tmp_path: Path, module: str, bad_import: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on a copy of the repository's packages with ``bad_import`` appended
    to ``module``; the copy comes first on the path, ahead of the editable install."""
    for package in ("worker", "triggers"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / Path(*module.split(".")).with_suffix(".py")
    target.write_text(target.read_text("utf-8") + f"\n{bad_import}\n", "utf-8")
    return _lint(tmp_path)


def test_the_repository_keeps_every_contract() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    result = _lint_copy(tmp_path, "worker.core.clock", "import worker.outbox.delivery")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "worker.core is not allowed to import worker.outbox" in result.stdout
    assert "worker.core.clock -> worker.outbox.delivery" in result.stdout


def test_siblings_marked_independent_may_not_import_each_other(tmp_path: Path) -> None:
    result = _lint_copy(tmp_path, "worker.intake.publisher", "import worker.outbox.claims")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "worker.intake is not allowed to import worker.outbox" in result.stdout


def test_the_core_may_not_import_the_worker(tmp_path: Path) -> None:
    result = _lint_copy(tmp_path, "triggers.money", "import worker.core.clock")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "triggers.money -> worker.core.clock" in result.stdout


def test_every_worker_package_is_in_a_layer() -> None:
    """A new package left out of the contract would be unchecked; no module sits beside
    the packages either."""
    packages = sorted(p.name for p in (ROOT / "worker").iterdir() if (p / "__init__.py").exists())
    assert sorted(_layer_packages()) == packages
    assert sorted(p.name for p in (ROOT / "worker").glob("*.py")) == ["__init__.py"]
