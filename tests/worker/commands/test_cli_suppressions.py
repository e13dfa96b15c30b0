"""`crosssell suppressions list|add|remove` on the configured database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.commands.cli import main
from worker.commands.migrate import upgrade
from worker.core.db import dispose_engines
from worker.core.settings import get_settings


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("CROSSSELL_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    upgrade(get_settings().resolved_database_url)
    yield CliRunner()
    get_settings.cache_clear()
    dispose_engines()


def test_add_list_remove(cli: CliRunner) -> None:
    assert cli.invoke(main, ["suppressions", "add", "Ana.Pop@Example.ro"]).exit_code == 0
    again = cli.invoke(main, ["suppressions", "add", "ana.pop@example.ro"])
    assert "already suppressed" in again.output
    cli.invoke(main, ["suppressions", "add", "x@example.it", "--reason", "complaint"])
    listed = cli.invoke(main, ["suppressions", "list"]).output.splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == ["ana.pop@example.ro", "x@example.it"]
    only = cli.invoke(main, ["suppressions", "list", "--reason", "complaint"]).output
    assert only.startswith("x@example.it\tcomplaint")
    assert cli.invoke(main, ["suppressions", "remove", "ANA.POP@example.ro"]).exit_code == 0
    missing = cli.invoke(main, ["suppressions", "remove", "ana.pop@example.ro"])
    assert missing.exit_code == 1 and "is not suppressed" in missing.output


def test_add_refuses_what_is_not_an_address(cli: CliRunner) -> None:
    result = cli.invoke(main, ["suppressions", "add", "not an address"])
    assert result.exit_code == 2 and "is not an email address" in result.output


@pytest.mark.parametrize("given", ["a" * 70_000, "x@" + "y" * 10_000, "é" * 5000 + "@example.ro"])
def test_a_huge_non_address_is_quoted_short(cli: CliRunner, given: str) -> None:
    """The refusal names the start of what was given and its length, not 70 KB of it."""
    result = cli.invoke(main, ["suppressions", "add", given])
    assert result.exit_code == 2 and "is not an email address" in result.output
    assert len(result.output) < 600, len(result.output)
    assert f"({len(given)} characters)" in result.output
