"""What a new user mistypes ends a command with one clear line and a non-zero status,
never a Python traceback: invalid campaign files for any command that loads the rule
set, a time option that is not an ISO time with a zone, a broker that refuses the
connection or the login, a byte-order mark or a giant line in a published file, an
output path that is a file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import pytest
from click.testing import CliRunner, Result

from tests.support.factories import purchase
from tests.support.services import require_rabbitmq
from triggers.events import MAX_EVENT_BYTES
from worker.commands.cli import main
from worker.core.settings import PROJECT_ROOT, get_settings
from worker.process import runtime as runtime_module


@pytest.fixture(autouse=True)
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Embedded defaults under tmp_path: no shared database, broker or var/ touched."""
    monkeypatch.setenv("CROSSSELL_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CROSSSELL_EVENTS_URL", f"sqlite:///{tmp_path / 'broker.db'}")
    get_settings.cache_clear()
    runtime_module.set_runtime(None)
    yield
    get_settings.cache_clear()
    runtime_module.set_runtime(None)


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(purchase("evt-cli-1")) + "\n", encoding="utf-8")
    return path


def _no_traceback(result: Result) -> None:
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.output


# --- 1: every command that loads the rule set --------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        ["simulate", "--events", "{events}"],
        ["explain", "--event", "{events}", "--campaign", "laptop-accessories"],
        ["preview", "laptop-accessories"],
        ["report"],
    ],
    ids=["simulate", "explain", "preview", "report"],
)
def test_invalid_campaign_files_are_the_lint_lines_run_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, events: Path, arguments: list[str]
) -> None:
    """These commands let the loader's RuleSetError escape as a traceback; they now print
    what ``run`` prints, from the one handler in the CLI group."""
    campaigns = tmp_path / "campaigns"
    shutil.copytree(PROJECT_ROOT / "config" / "campaigns", campaigns)
    with (campaigns / "laptop-accessories.yaml").open("a", encoding="utf-8") as file:
        file.write("colour: red\n")
    monkeypatch.setenv("CROSSSELL_CAMPAIGNS_DIR", str(campaigns))
    argv = [a.replace("{events}", str(events)) for a in arguments]
    result = CliRunner().invoke(main, argv)
    _no_traceback(result)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Error: the campaign files are not valid:", result.output
    assert "laptop-accessories.yaml" in lines[1] and "error[unknown-key]" in lines[1]


# --- 2: one time type for every time option -----------------------------------------------


TIME_OPTIONS = [
    (["explain", "--event", "{events}", "--campaign", "laptop-accessories", "--now"], "--now"),
    (["simulate", "--events", "{events}", "--at"], "--at"),
    (["simulate", "--since"], "--since"),
    (["report", "--since"], "--since"),
    (["report", "--until"], "--until"),
]


@pytest.mark.parametrize(("arguments", "option"), TIME_OPTIONS)
def test_a_time_that_is_not_iso_is_one_usage_line(
    events: Path, arguments: list[str], option: str
) -> None:
    """``explain --now tomorrow`` was a ValueError traceback."""
    argv = [a.replace("{events}", str(events)) for a in arguments] + ["tomorrow"]
    result = CliRunner().invoke(main, argv)
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}': 'tomorrow' is not an ISO 8601 time" in result.output


@pytest.mark.parametrize(("arguments", "option"), TIME_OPTIONS)
@pytest.mark.parametrize(
    "moment",
    [
        "0001-01-01T00:00Z",
        "0001-01-01T00:00+01:00",
        "9999-12-31T23:59-01:00",
        "9999-12-31T23:59Z",
        "1969-12-31T23:59Z",
        "9001-01-01T00:00Z",
    ],
)
def test_a_time_at_the_edge_of_the_calendar_is_one_usage_line(
    events: Path, arguments: list[str], option: str, moment: str
) -> None:
    """The commands add days and windows to a time: one at datetime's edges was an
    OverflowError traceback."""
    argv = [a.replace("{events}", str(events)) for a in arguments] + [moment]
    result = CliRunner().invoke(main, argv)
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert "is not between 1970 and 9000" in result.output


@pytest.mark.parametrize(
    "arguments",
    [
        ["explain", "--event", "{events}", "--campaign", "laptop-accessories", "--now"],
        ["simulate", "--events", "{events}", "--at"],
    ],
    ids=["explain", "simulate"],
)
def test_a_time_without_a_zone_is_refused_alike(events: Path, arguments: list[str]) -> None:
    """``explain --now 2026-11-24T10:30`` was a naive/aware TypeError traceback; it now
    gets the message ``simulate --at`` gets."""
    argv = [a.replace("{events}", str(events)) for a in arguments] + ["2026-11-24T10:30"]
    result = CliRunner().invoke(main, argv)
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    assert "'2026-11-24T10:30' has no time zone" in result.output


# --- 3: explain reads the first line only -------------------------------------------------


def test_explain_reads_only_the_first_line_of_a_jsonl_file(tmp_path: Path) -> None:
    """Its help promises the first line; the whole file was read, so a later line that
    is not UTF-8 failed the command (``not_utf8``)."""
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(json.dumps(purchase("evt-first")).encode() + b"\n" + b"\xff\xfe junk\n")
    result = CliRunner().invoke(
        main, ["explain", "--event", str(path), "--campaign", "laptop-accessories"]
    )
    assert result.exit_code == 0, result.output
    assert "event evt-first (purchase)" in result.output
    # One event written over several lines is still read whole.
    path.write_text(json.dumps(purchase("evt-pretty"), indent=2), encoding="utf-8")
    result = CliRunner().invoke(
        main, ["explain", "--event", str(path), "--campaign", "laptop-accessories"]
    )
    assert result.exit_code == 0, result.output
    assert "event evt-pretty (purchase)" in result.output


# --- 4: broker failures of publish ----------------------------------------------------------


def _one_broker_line(result: Result, secret: str | None = None) -> str:
    _no_traceback(result)
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("crosssell: cannot connect to the message broker "), line
    if secret:
        assert secret not in line
    return line


def test_publish_to_a_refused_redis_is_one_line(
    monkeypatch: pytest.MonkeyPatch, events: Path
) -> None:
    """redis-py's ConnectionError is not the builtin one: it escaped as a traceback."""
    monkeypatch.setenv("CROSSSELL_EVENTS_URL", "redis://:s3cret-pw@127.0.0.1:1/0")
    line = _one_broker_line(CliRunner().invoke(main, ["publish", str(events)]), "s3cret-pw")
    assert "127.0.0.1:1" in line


def test_publish_with_a_wrong_rabbitmq_password_is_one_line(
    monkeypatch: pytest.MonkeyPatch, events: Path
) -> None:
    """amqp raises the 403 as a channel error (AccessRefused), which kombu does not wrap."""
    parts = urlsplit(require_rabbitmq())
    netloc = f"{parts.username}:wrong-pw-xyz@{parts.hostname}:{parts.port or 5672}"
    monkeypatch.setenv("CROSSSELL_EVENTS_URL", urlunsplit(parts._replace(netloc=netloc)))
    line = _one_broker_line(CliRunner().invoke(main, ["publish", str(events)]), "wrong-pw-xyz")
    assert "ACCESS_REFUSED" in line


# --- 5: what publish reads ----------------------------------------------------------------


def test_publish_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    """``catalog import`` accepts a BOM; publish reported line 1 as ``not_json``."""
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(purchase("evt-bom")).encode() + b"\n")
    result = CliRunner().invoke(main, ["publish", str(path)])
    assert result.exit_code == 0, result.output
    assert "published 1 event(s)" in result.output


def test_publish_reports_the_real_size_of_a_giant_line(tmp_path: Path) -> None:
    """The line is cut at the limit to bound memory; the report gave the cut's size."""
    path = tmp_path / "giant.jsonl"
    size = 300_000
    path.write_bytes(b'{"x": "' + b"a" * (size - 9) + b'"}\n' + json.dumps(purchase("e")).encode())
    result = CliRunner().invoke(main, ["publish", str(path)])
    assert result.exit_code == 1, result.output
    assert f"line 1: oversize: {size} bytes exceeds the {MAX_EVENT_BYTES} limit" in result.output
    assert "published 1 event(s)" in result.output


def test_publish_warns_about_an_event_id_an_earlier_line_had(tmp_path: Path) -> None:
    """The consumer keeps the first event of an id and drops the rest as duplicates: a
    file that repeats an id (a copy-paste, an export joined twice) loses those lines
    silently unless publish says so. They are still published: a redelivery looks the
    same, and the consumer is what decides."""
    changed = purchase("evt-1")
    changed["data"]["order_id"] = "O-other"
    lines = [
        json.dumps(purchase("evt-1")),
        json.dumps(purchase("evt-2")),
        "",
        json.dumps(changed),  # the same id, other content
        '{"id": "evt-1", "type": "purchase"}',  # invalid: reported as such, not as repeated
        json.dumps(purchase("evt-2")),
        json.dumps(purchase("evt-3")),
    ]
    path = tmp_path / "repeats.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["publish", str(path)])
    assert result.exit_code == 1, result.output  # for the invalid line, as before
    warnings = result.stderr.splitlines()
    assert warnings[0] == (
        "line 4: warning: event id 'evt-1' repeats line 1's; the consumer stores the first "
        "and drops this one as a duplicate"
    )
    assert warnings[1].startswith("line 5: wrong_schema: ")
    assert warnings[2:] == [
        "line 6: warning: event id 'evt-2' repeats line 2's; the consumer stores the first "
        "and drops this one as a duplicate",
    ]
    assert result.stdout.strip() == (
        "published 5 event(s), 2 repeating an earlier id, 1 invalid line(s) not published"
    )


# --- 6: an output directory that is a file --------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [["schema", "--output"], ["preview", "laptop-accessories", "--out"]],
    ids=["schema", "preview"],
)
def test_an_output_directory_that_is_a_file_is_one_line(
    tmp_path: Path, arguments: list[str]
) -> None:
    """``schema --output /etc/passwd`` was a FileExistsError traceback."""
    existing = tmp_path / "a-file"
    existing.write_text("not a directory\n", encoding="utf-8")
    result = CliRunner().invoke(main, [*arguments, str(existing)])
    _no_traceback(result)
    assert result.exit_code == 2, result.output
    assert f"Directory '{existing}' is a file" in result.output


# --- lint with nothing to lint -------------------------------------------------------------


@pytest.mark.parametrize("where", ["argument", "setting"])
def test_lint_of_a_directory_without_campaign_files_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """ "0 campaign(s) OK" for an empty or mistyped directory would pass a CI check that
    checked nothing."""
    empty = tmp_path / "campaigns"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a campaign", encoding="utf-8")
    arguments = ["lint", str(empty)] if where == "argument" else ["lint"]
    if where == "setting":
        monkeypatch.setenv("CROSSSELL_CAMPAIGNS_DIR", str(empty))
        get_settings.cache_clear()
    result = CliRunner().invoke(main, arguments)
    _no_traceback(result)
    assert result.exit_code == 1
    assert f"no campaign files (*.yaml, *.yml) in {empty}" in result.output


# --- a mistyped SQLite path -----------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["sends", "list"], ["report"]])
def test_a_command_that_reads_leaves_no_database_behind_a_mistyped_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Reading commands neither create the directory nor an empty database: they say
    where they looked and that ``crosssell migrate`` creates it; migrate then does."""
    missing = tmp_path / "typo" / "deeper" / "crosssell.db"
    monkeypatch.setenv("CROSSSELL_DATABASE_URL", f"sqlite:///{missing}")
    get_settings.cache_clear()
    result = CliRunner().invoke(main, command)
    _no_traceback(result)
    assert result.exit_code == 1
    assert f"no database at {missing}" in result.output
    assert "crosssell migrate" in result.output
    assert not (tmp_path / "typo").exists()
    migrated = CliRunner().invoke(main, ["migrate"])
    assert migrated.exit_code == 0, migrated.output
    assert missing.is_file()


def test_a_campaign_file_named_twice_is_linted_once() -> None:
    """``lint a.yaml a.yaml`` (or a file and its directory) reported the campaign's id
    as a duplicate of itself."""
    shipped = PROJECT_ROOT / "config" / "campaigns"
    one = shipped / "laptop-accessories.yaml"
    for arguments in ([str(one), str(one)], [str(one), str(shipped)]):
        result = CliRunner().invoke(main, ["lint", *arguments])
        _no_traceback(result)
        assert result.exit_code == 0, result.output
        assert "duplicate-id" not in result.output


# --- 7: an output that cannot be written ----------------------------------------------------


def _crosssell_writing_to(
    stdout: IO[str], tmp_path: Path, arguments: list[str]
) -> subprocess.CompletedProcess[str]:
    """The installed ``crosssell`` run with ``arguments``, its standard output ``stdout``."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "crosssell"), *arguments],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CROSSSELL_VAR_DIR": str(tmp_path / "var")},
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
@pytest.mark.parametrize("arguments", [["--help"], ["schema", "--help"], ["lint"]])
def test_a_full_output_is_one_line_not_a_traceback(tmp_path: Path, arguments: list[str]) -> None:
    """``crosssell lint > /dev/full`` (a full disk) ended in a traceback."""
    with open("/dev/full", "w") as full:
        done = _crosssell_writing_to(full, tmp_path, arguments)
    assert done.returncode == 1
    assert done.stderr == "crosssell: cannot write standard output: No space left on device\n"


def test_an_output_that_is_no_writable_descriptor_is_one_line(tmp_path: Path) -> None:
    """``crosssell lint 1<file`` (standard output opened for reading: EBADF) ended in a
    traceback; any error raised writing the output is said in one line."""
    readable = tmp_path / "readable.txt"
    readable.write_text("not for writing\n", encoding="utf-8")
    with readable.open("r") as read_only:
        done = _crosssell_writing_to(read_only, tmp_path, ["lint"])
    assert done.returncode == 1
    assert done.stderr == "crosssell: cannot write standard output: Bad file descriptor\n"
    assert readable.read_text(encoding="utf-8") == "not for writing\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_change_stays_made_when_its_confirmation_cannot_be_written(tmp_path: Path) -> None:
    """``suppressions add`` printed inside its transaction: a full output rolled the
    suppression back while the command said it could not write."""
    crosssell = str(Path(sys.executable).parent / "crosssell")
    env = {**os.environ, "CROSSSELL_VAR_DIR": str(tmp_path / "var")}
    subprocess.run([crosssell, "migrate"], env=env, check=True, capture_output=True, timeout=120)
    with open("/dev/full", "w") as full:
        added = _crosssell_writing_to(full, tmp_path, ["suppressions", "add", "ana@example.ro"])
    assert added.returncode == 1
    assert added.stderr == "crosssell: cannot write standard output: No space left on device\n"
    listed = subprocess.run(
        [crosssell, "suppressions", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.stdout.startswith("ana@example.ro\tmanual\tcli\t"), listed.stdout
