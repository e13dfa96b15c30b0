"""A setting that does not validate ends any command with one line naming the variable
and why (exit status 2), never pydantic's traceback; a database or broker that cannot be
reached ends a command with one line naming it (exit status 1)."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.commands.cli import main
from worker.commands.migrate import upgrade
from worker.core.settings import PROJECT_ROOT, Settings, get_settings, unknown_variables


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
        ("CROSSSELL_UNSUBSCRIBE_KEYS", "nokid", "look like 'k1:secret"),
        ("CROSSSELL_UNSUBSCRIBE_KEYS", "k1:", "look like 'k1:secret"),
        ("CROSSSELL_UNSUBSCRIBE_KEYS", "k1:fifteen-bytes!!", "15 bytes; use at least 16"),
        ("CROSSSELL_UNSUBSCRIBE_KEYS", "k2:sixteen-bytes!!!,k1:short", "'k1' is 5 bytes"),
        ("CROSSSELL_UNSUBSCRIBE_KEYS", "k.1:sixteen-bytes!!!", "only letters, digits"),
        ("CROSSSELL_UNSUBSCRIBE_KEYS", "k:sixteen-bytes!!!,k:sixteen-bytes???", "twice"),
        ("CROSSSELL_DATABASE_URL", "nonsense://", "scheme 'nonsense'"),
        ("CROSSSELL_DATABASE_URL", "mysql://db/x", "scheme 'mysql'"),
        ("CROSSSELL_DATABASE_URL", "var/crosssell.db", "scheme 'var/crosssell.db'"),
        ("CROSSSELL_EVENTS_URL", "kafka://x", "scheme 'kafka'"),
        ("CROSSSELL_BROKER_URL", "ftp://x", "scheme 'ftp'"),
        ("CROSSSELL_RATE_LIMIT_URL", "http://x", "scheme 'http'"),
        ("CROSSSELL_RATE_LIMIT_URL", "postgresql://db/x", "use one of redis, rediss"),
        ("CROSSSELL_CAP_WINDOW", "0", "must be longer than 0"),
        ("CROSSSELL_CAP_WINDOW", "0d0h", "must be longer than 0"),
        ("CROSSSELL_REQUEUE_AFTER", "0s", "must be longer than 0"),
        ("CROSSSELL_DELIVERY_LEASE", "0m", "must be longer than 0"),
        ("CROSSSELL_QUIET_HOURS", "08:00-08:00", "write 'off'"),
        ("CROSSSELL_SENDING_TIMEOUT", "0s", "must be longer than 0"),
        ("CROSSSELL_RECOMMENDATIONS_REBUILD_EVERY", "0s", "must be longer than 0"),
        ("CROSSSELL_ATTRIBUTION_WINDOW", "0", "must be longer than 0"),
        ("CROSSSELL_ACTIVITY_RETENTION", "0d", "must be longer than 0"),
        ("CROSSSELL_DATABASE_URL", "postgresql://u:pw@127.0.0.1:0/x", "1 to 65535"),
        ("CROSSSELL_DATABASE_URL", "postgresql+psycopg://app:Xy@secret9@db:5432/x", "%40"),
        ("CROSSSELL_DATABASE_URL", "postgresql://u:secret@[::1", "host or port cannot be read"),
        ("CROSSSELL_DATABASE_URL", "postgresql://u:secret@db:99999/x", "1 to 65535"),
        ("CROSSSELL_DATABASE_URL", "postgresql+psycopg://db:abc/x", "host or port cannot be"),
        ("CROSSSELL_BROKER_URL", "amqp://guest:secret@rabbit:70000//", "1 to 65535"),
        ("CROSSSELL_EVENTS_URL", "amqp://h1:5672//;amqp://h2:-1//", "host or port cannot be"),
        ("CROSSSELL_EVENTS_URL", "redis://[fe80::1/0", "in brackets"),
        ("CROSSSELL_RATE_LIMIT_URL", "redis://cache:123456/0", "1 to 65535"),
        ("CROSSSELL_BROKER_URL", "amqp://u:se/cret@rabbit//", "host or port cannot be read"),
        ("CROSSSELL_CAMPAIGNS_DIR", "/nonexistent-crosssell/campaigns", "no such directory"),
        ("CROSSSELL_EVENTS_URL", "sqlite:///", "names no file"),
        ("CROSSSELL_CAMPAIGNS_DIR", "", "is empty"),
        ("CROSSSELL_VAR_DIR", " ", "is empty"),
        ("CROSSSELL_SEGMENTS_FILE", "", "is empty"),
        ("CROSSSELL_DATABASE_URL", "sqlite:///", "names no file"),
        ("CROSSSELL_DATABASE_URL", "sqlite://", "names no file"),
        ("CROSSSELL_PUBLIC_URL", " https://shop.example", "absolute http(s) URL"),
        ("CROSSSELL_PUBLIC_URL", "https://bücher.example", "xn-- form"),
        ("CROSSSELL_PUBLIC_URL", "https:///foo", "absolute http(s) URL"),
        ("CROSSSELL_PUBLIC_URL", "https://shop.example/<x>", "absolute http(s) URL"),
        ("CROSSSELL_BROKER_URL", "sqlite://", "names no file"),
        ("CROSSSELL_EVENTS_URL", "sqlite:///?lease=30s", "names no file"),
        ("CROSSSELL_TEMPLATES_DIR", "/nonexistent-crosssell/templates", "no such directory"),
        ("CROSSSELL_SEGMENTS_FILE", "/nonexistent-crosssell/segments.yaml", "no such file"),
        ("CROSSSELL_ATTRIBUTES_FILE", "/nonexistent-crosssell/attributes.yaml", "no such file"),
        ("CROSSSELL_COMPLEMENTS_FILE", "/nonexistent-crosssell/complements.yaml", "no such file"),
        ("CROSSSELL_SEGMENTS_FILE", "/tmp", "no such file"),
        ("CROSSSELL_TEMPLATES_DIR", "/etc/hostname", "no such directory"),
        ("CROSSSELL_DEFAULT_TIMEZONE", "Mars/Base", "unknown IANA time zone 'Mars/Base'"),
        ("CROSSSELL_DEFAULT_LOCALE", "klingon", "unknown locale 'klingon'"),
        ("CROSSSELL_PUBLIC_URL", "not a url", "absolute http(s) URL"),
        ("CROSSSELL_DISPATCH_INTERVAL", "inf", "finite"),
        ("CROSSSELL_SMTP_TIMEOUT", "nan", "finite"),
        ("CROSSSELL_RETRY_BASE_SECONDS", "nan", "finite"),
        ("CROSSSELL_HTTP_TIMEOUT", "inf", "finite"),
        ("CROSSSELL_HTTP_CONNECT_TIMEOUT", "inf", "finite"),
        ("CROSSSELL_RATE_LIMIT_PER_SECOND", "inf", "finite"),
        ("CROSSSELL_RATE_LIMIT_MAX_WAIT", "inf", "finite"),
        ("CROSSSELL_DISPATCH_INTERVAL", "1e12", "less than or equal to 3600"),
        ("CROSSSELL_EVENTS_URL", "sqlite://relative.db", "sqlite:///relative/path.db"),
        ("CROSSSELL_DATABASE_URL", "sqlite://relative.db", "sqlite:////abs/path.db"),
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
    if variable.endswith("_URL"):
        assert "secret" not in result.output, "no piece of a password is ever shown"


def test_a_good_lease_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSSELL_BROKER_URL", "sqlite:///var/broker.db?lease=10s")
    assert get_settings().broker_url.endswith("?lease=10s")


@pytest.mark.parametrize(
    ("environment", "why"),
    [
        ({"CROSSSELL_EMAIL_PROVIDER": "smtp", "CROSSSELL_DELIVERY_LEASE": "1s"}, "SMTP_TIMEOUT"),
        ({"CROSSSELL_EMAIL_PROVIDER": "smtp", "CROSSSELL_DELIVERY_LEASE": "30s"}, "= 30 s"),
        (
            {
                "CROSSSELL_EMAIL_PROVIDER": "smtp",
                "CROSSSELL_SMTP_TIMEOUT": "120",
                "CROSSSELL_DELIVERY_LEASE": "60s",
            },
            "= 120 s",
        ),
        (
            {"CROSSSELL_EMAIL_PROVIDER": "postmark", "CROSSSELL_DELIVERY_LEASE": "40s"},
            "HTTP_CONNECT_TIMEOUT + CROSSSELL_HTTP_TIMEOUT = 40 s",
        ),
    ],
)
def test_a_lease_within_the_provider_timeout_is_refused(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], why: str
) -> None:
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()[1:]
    assert line.startswith("  CROSSSELL_DELIVERY_LEASE: ") and why in line


@pytest.mark.parametrize(
    "values",
    [
        {"email_provider": "smtp", "smtp_timeout": 3, "delivery_lease": "8s"},
        {"email_provider": "postmark", "delivery_lease": "41s"},
        {"email_provider": "file", "delivery_lease": "1s"},  # writes files: no timeout
        {"unsubscribe_keys": "k2:sixteen-bytes!!!,k1:an-older-secret-key"},
        {"database_url": "postgresql+psycopg://u:p@db/crosssell"},
        {"database_url": "postgresql://u@db/crosssell", "broker_url": "redis://:p@r:6379/0"},
        {"events_url": "amqps://u:p@rabbit:5671//", "broker_url": "sqla+sqlite:///var/b.db"},
        {"rate_limit_url": "rediss://r:6380/1"},
        {"rate_limit_url": "database"},
        {"database_url": "postgresql+psycopg://u:p@[::1]:5432/crosssell"},
        # SQLAlchemy reads a password up to the last "@": "/", "?", "#", ";", "[" in it.
        {"database_url": "postgresql+psycopg://app:ab/cd#e?f;g[h@db:5432/crosssell"},
        {"database_url": "postgresql+psycopg://app@/crosssell?host=/run/postgresql"},
        {"broker_url": "amqp://g:g@h1:5672//;amqp://g:g@h2:5672//"},
        {"rate_limit_url": "unix:///run/redis.sock"},
        {"database_url": "postgresql+psycopg://app:Xy%40Zz9@db:5432/crosssell"},
        {"quiet_hours": None},
    ],
)
def test_supported_values_are_accepted(values: dict[str, object]) -> None:
    settings = Settings(**values)  # type: ignore[arg-type]
    for name, value in values.items():
        shown = getattr(settings, name)
        assert (shown.get_secret_value() if hasattr(shown, "get_secret_value") else shown) == value


def test_the_readme_settings_are_accepted() -> None:
    """The production example of the README (its ``export CROSSSELL_…`` lines) validates."""
    exports = [
        line.removeprefix("export ").split("#")[0].split()
        for line in (PROJECT_ROOT / "README.md").read_text().splitlines()
        if line.startswith("export CROSSSELL_")
    ]
    values = {
        name.removeprefix("CROSSSELL_").lower(): value
        for words in exports
        for name, _, value in (word.partition("=") for word in words)
        if name.startswith("CROSSSELL_")
    }
    assert {"database_url", "events_url", "broker_url", "unsubscribe_keys"} <= set(values)
    Settings(**values)  # type: ignore[arg-type]


def test_an_unknown_variable_is_a_warning_with_the_closest_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CROSSSELL_MAX_CLAIM", "3")
    monkeypatch.setenv("CROSSSELL_ZZZ", "1")
    with caplog.at_level(logging.WARNING, logger="worker.core.settings"):
        settings = get_settings()
    assert settings.max_claims == 5  # ignored, not read as max_claims
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        text.startswith("CROSSSELL_MAX_CLAIM is not a crosssell setting")
        and text.endswith("did you mean CROSSSELL_MAX_CLAIMS?")
        for text in warnings
    )
    unrelated = [text for text in warnings if text.startswith("CROSSSELL_ZZZ ")]
    assert unrelated and "did you mean" not in unrelated[0]


def test_variables_read_elsewhere_are_not_warned_about() -> None:
    environ = {
        "CROSSSELL_MAX_CLAIMS": "5",
        "CROSSSELLER": "x",
        "PATH": "/bin",
        "CROSSSELL_MIGRATION_LOCK_WAIT": "1min",
        "CROSSSELL_TEST_POSTGRES": "postgresql://…",
        "CROSSSELL_TOY_API_KEY": "k",
    }
    assert unknown_variables(environ, ["CROSSSELL_TOY_API_KEY"]) == []
    (text,) = unknown_variables(environ)
    assert text.startswith("CROSSSELL_TOY_API_KEY is not a crosssell setting")


def test_an_unreachable_database_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CROSSSELL_DATABASE_URL", "postgresql+psycopg://postgres:pw@127.0.0.1:1/x")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(
        "crosssell: cannot connect to the database postgresql+psycopg://postgres:**@127.0.0.1:1/x: "
    )
    assert "pw" not in line.split("@", 1)[0] and "refused" in line.lower()


def test_an_unreachable_events_broker_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CROSSSELL_EVENTS_URL", "amqp://guest:secretpw@127.0.0.1:1//")
    events = tmp_path / "events.jsonl"
    events.write_text("")
    result = CliRunner().invoke(main, ["publish", str(events)])
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("crosssell: cannot connect to the message broker amqp://guest:**@")
    assert "secretpw" not in line and "refused" in line.lower()


@pytest.mark.parametrize(
    ("revision", "command"),
    [
        (None, ["status"]),
        (None, ["sends", "list"]),
        (None, ["suppressions", "list"]),
        ("0005", ["status"]),
        ("0013", ["sends", "list"]),  # reads sends.claims, added by 0014
    ],
)
def test_a_database_behind_the_code_is_one_line_saying_to_migrate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str], revision: str | None
) -> None:
    """An empty SQLite file, or one a migration behind, connects: a missing table or
    column is neither a connection problem nor a traceback, but one line to migrate (a
    command that reads nothing the newer schema added still works on the older one)."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    if revision is not None:
        upgrade(url, revision)
    monkeypatch.setenv("CROSSSELL_DATABASE_URL", url)
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line == (
        f"crosssell: the database {url} is not at the latest schema revision: "
        "run `crosssell migrate` first"
    )


def test_a_failed_statement_on_a_current_schema_is_raised_as_it_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A statement failing on a migrated database is a bug to see in full, not 'migrate'."""
    url = f"sqlite:///{tmp_path / 'current.db'}"
    upgrade(url)
    with sqlite3.connect(tmp_path / "current.db") as connection:
        connection.execute("DROP TABLE sends")
    monkeypatch.setenv("CROSSSELL_DATABASE_URL", url)
    result = CliRunner().invoke(main, ["status"])
    assert result.exception is not None and not isinstance(result.exception, SystemExit)
    assert "migrate" not in result.output and "cannot connect" not in result.output


@pytest.mark.parametrize("program", ["worker", "beat"])
def test_celery_refuses_bad_settings_with_one_line(program: str, tmp_path: Path) -> None:
    environment = {**os.environ, "CROSSSELL_MAX_CLAIMS": "0", "CROSSSELL_VAR_DIR": str(tmp_path)}
    celery = [sys.executable, "-m", "celery", "-A", "worker.outbox.app", program]
    done = subprocess.run(
        celery, env=environment, capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "crosssell: invalid settings:",
        "  CROSSSELL_MAX_CLAIMS: Input should be greater than or equal to 1",
    ]
