"""Every setting is checked for what it means when the process starts: a number that is
not finite or out of its range, an unknown time zone or locale, a public URL that is no
absolute http(s) URL, a SQLite URL naming a host instead of a file. Each is refused with
``crosssell: invalid settings:`` and exit 2, not met later as a dead letter or a thread's
traceback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from worker.core.settings import Settings, get_settings

FLOAT_SETTINGS = sorted(
    name for name, info in Settings.model_fields.items() if info.annotation is float
)


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _one(name: str, value: Any) -> dict[str, Any]:
    """``Settings(**...)`` keywords for one setting (typed for mypy)."""
    return {name: value}


def _refused(name: str, value: Any) -> str:
    """The message of the one problem ``name=value`` makes."""
    with pytest.raises(ValidationError) as caught:
        Settings(**_one(name, value))
    (problem,) = caught.value.errors()
    assert problem["loc"] == (name,)
    return str(problem["msg"])


def test_the_float_settings_are_the_known_ones() -> None:
    """The table below is derived from the model; this keeps it from going empty."""
    assert {
        "smtp_timeout",
        "http_timeout",
        "http_connect_timeout",
        "ingest_linger",
        "dispatch_interval",
        "rate_limit_per_second",
        "rate_limit_max_wait",
        "retry_base_seconds",
    } <= set(FLOAT_SETTINGS)


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity", float("inf"), float("nan")])
def test_every_float_setting_must_be_finite(name: str, value: object) -> None:
    assert "finite" in _refused(name, value)


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", ["-1", "-0.001", "1e300", "1e12"])
def test_every_float_setting_has_a_range(name: str, value: str) -> None:
    """Negative is meaningless for seconds and rates; a huge one overflows timestamps."""
    _refused(name, value)


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
def test_every_float_setting_takes_its_default_and_a_small_value(name: str) -> None:
    default = Settings.model_fields[name].default
    assert getattr(Settings(**_one(name, str(default))), name) == default
    assert getattr(Settings(**_one(name, "0.5")), name) == 0.5


@pytest.mark.parametrize("name", [n for n in FLOAT_SETTINGS if n not in {"rate_limit_per_second"}])
def test_a_duration_of_zero_seconds_is_refused(name: str) -> None:
    """Timeouts, waits and intervals of 0 s spin or fail every call; only the rate's 0
    means something (no limit)."""
    _refused(name, "0")


def test_a_rate_of_zero_means_no_limit() -> None:
    assert Settings(rate_limit_per_second="0").rate_limit_per_second == 0


@pytest.mark.parametrize(
    "value",
    [
        "Mars/Base",
        "Europe/",
        "../../etc/passwd",
        "",
        "utc/x",
        "localtime",
        "posixrules",
        "Factory",
        "posix/Europe/Rome",
        "right/UTC",
    ],
)
def test_an_unknown_default_timezone_is_refused(value: str) -> None:
    assert "IANA time zone" in _refused("default_timezone", value)


@pytest.mark.parametrize("value", ["UTC", "Europe/Bucharest", "America/Argentina/Buenos_Aires"])
def test_a_known_default_timezone_is_taken(value: str) -> None:
    assert Settings(default_timezone=value).default_timezone == value


@pytest.mark.parametrize(
    "value", ["klingon", "", "en US", "xx-YY", "en/../ro", "ro-RO.UTF-8", "C", "POSIX", "c"]
)
def test_an_unknown_default_locale_is_refused(value: str) -> None:
    assert "unknown locale" in _refused("default_locale", value)


@pytest.mark.parametrize("value", ["en", "ro-RO", "ro_RO", "pt-BR", "it-IT", "de"])
def test_a_default_locale_events_may_carry_is_taken(value: str) -> None:
    assert Settings(default_locale=value).default_locale == value


@pytest.mark.parametrize(
    "value",
    [
        "not a url",
        "shop.example",
        "/shop",
        "ftp://shop.example",
        "mailto:shop@shop.example",
        "https://",
        "https://shop.example/?ref=mail",
        "https://shop.example/#top",
        "",
    ],
)
def test_a_public_url_must_be_an_absolute_http_url(value: str) -> None:
    assert "absolute http(s) URL" in _refused("public_url", value)


@pytest.mark.parametrize(
    "value", ["https://shop.example", "http://localhost:8080/", "https://shop.example/store/"]
)
def test_an_absolute_public_url_is_kept_as_given(value: str) -> None:
    assert Settings(public_url=value).public_url == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("database_url", "sqlite://relative.db"),
        ("database_url", "sqlite+pysqlite://relative.db"),
        ("database_url", "SQLITE://var/crosssell.db"),
        ("broker_url", "sqlite://relative.db"),
        ("broker_url", "sqla+sqlite://broker.db"),
        ("broker_url", "sqlite://broker.db?lease=30s"),
        ("events_url", "sqlite://relative.db"),
        ("events_url", "sqla+sqlite://var/broker.db"),
    ],
)
def test_a_sqlite_url_naming_a_host_shows_the_right_form(name: str, value: str) -> None:
    message = _refused(name, value)
    assert "names a host, not a file" in message
    assert ":///relative/path.db" in message and ":////abs/path.db" in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("database_url", "sqlite:///relative.db"),
        ("database_url", "sqlite:////abs/path.db"),
        ("broker_url", "sqlite:///var/broker.db?lease=30s"),
        ("events_url", "sqla+sqlite:////abs/broker.db"),
    ],
)
def test_a_sqlite_url_with_a_path_is_taken(name: str, value: str) -> None:
    assert getattr(Settings(**_one(name, value)), name) == value


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("smtp_port", "0"),
        ("smtp_port", "65536"),
        ("smtp_host", ""),
        ("events_exchange", ""),
        ("events_queue", ""),
        ("dead_letter_queue", ""),
        ("deliver_queue", ""),
    ],
)
def test_ports_and_names_are_checked(name: str, value: str) -> None:
    _refused(name, value)
