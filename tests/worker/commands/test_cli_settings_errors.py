"""A setting that does not validate ends any command with one line naming the variable
and why (exit status 2), never pydantic's traceback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from worker.commands.cli import main
from worker.core.settings import get_settings


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("CROSSSELL_MIN_GAP", "abc", "bad duration 'abc'"),
        ("CROSSSELL_BROKER_URL", "sqlite:///var/broker.db?lease=abc", "bad duration 'abc'"),
        ("CROSSSELL_BROKER_URL", "sqlite:///var/broker.db?lease=-5", "must be positive"),
        ("CROSSSELL_EVENTS_URL", "sqlite:///var/broker.db?lase=10s", "only ?lease=, not lase"),
        ("CROSSSELL_EMAIL_PROVIDER", "pigeon", "pigeon"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, why: str
) -> None:
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("crosssell: invalid settings:\n")
    (line,) = result.output.splitlines()[1:]
    assert line.startswith(f"  {variable}: ") and why in line
    assert "Traceback" not in result.output


def test_a_good_lease_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSSELL_BROKER_URL", "sqlite:///var/broker.db?lease=10s")
    assert get_settings().broker_url.endswith("?lease=10s")
