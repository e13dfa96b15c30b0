"""`crosssell explain` and `crosssell simulate`: they tell, and they write nothing."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from tests.support.factories import TUESDAY_MORNING, customer_block, purchase
from worker.commands.cli import main
from worker.core.db import dispose_engines, transaction
from worker.core.models import Event, Send
from worker.core.settings import get_settings


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "CROSSSELL_VAR_DIR": str(tmp_path / "var"),
        "CROSSSELL_UNSUBSCRIBE_KEYS": "k:dry-run-test-secret",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    from worker.process import runtime

    runtime.set_runtime(None)
    yield env
    get_settings.cache_clear()
    runtime.set_runtime(None)
    dispose_engines()


def test_explain_shows_every_leaf_with_its_value(tmp_path: Path, cli_env: dict[str, str]) -> None:
    event = purchase(customer=customer_block("C-x"), price="250.00")
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event, indent=2))
    result = CliRunner().invoke(
        main, ["explain", "--event", str(path), "--campaign", "laptop-accessories"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "customer data from: this event only" in lines[1]
    assert "trigger.where: NO" in result.output
    assert any("yes trigger.where.all[0]: event.categories contains_any" in line for line in lines)
    assert any(
        "NO  trigger.where.all[1]: event.total gte 300  (actual: Decimal('250.00'))" in line
        for line in lines
    )
    assert lines[-1] == "decision: not matched (trigger_conditions)"


def test_explain_of_a_matching_event_tells_when_it_would_go(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    event = purchase(customer=customer_block("C-1003"), at=TUESDAY_MORNING)
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    result = CliRunner().invoke(
        main, ["explain", "--event", str(path), "--campaign", "laptop-accessories"]
    )
    assert result.exit_code == 0, result.output
    last = result.output.splitlines()[-1]
    # Delay 2h from 10:30 UTC = 14:30 in Bucharest (UTC+2 in November): inside 09-19.
    assert "Europe/Bucharest" in last and "14:30" in last and "(12:30 UTC)" in last, last


def test_explain_unknown_campaign_is_a_clear_error(tmp_path: Path, cli_env: dict[str, str]) -> None:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(purchase()))
    result = CliRunner().invoke(main, ["explain", "--event", str(path), "--campaign", "nope"])
    assert result.exit_code != 0
    assert "no campaign 'nope'" in result.output


def test_simulate_reports_per_campaign_and_day_and_writes_nothing(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    lines = []
    for n in range(6):
        at = TUESDAY_MORNING - timedelta(days=n)
        lines.append(
            json.dumps(purchase(f"evt-sim-{n}", at=at, customer=customer_block(f"C-sim-{n % 3}")))
        )
    lines.append("{broken")
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", "--events", str(events)])
    assert result.exit_code == 0, result.output
    assert "events replayed: 6" in result.output
    assert "laptop-accessories" in result.output
    assert "emails per day" in result.output
    assert "skipped line: " in result.output and ":7: not_json" in result.output
    # Nothing was written to the live tables.
    database = Path(cli_env["CROSSSELL_VAR_DIR"]) / "crosssell.db"
    if database.exists():
        with transaction(f"sqlite:///{database}") as session:
            assert session.scalar(select(func.count()).select_from(Event)) == 0
            assert session.scalar(select(func.count()).select_from(Send)) == 0


def test_explain_and_simulate_refuse_an_attribute_of_another_type_as_intake_does(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The consumer dead-letters an event whose declared attribute has another type
    (config/attributes.yaml: ``b2b`` is a boolean); explain refuses it and simulate
    counts it a bad event, so neither predicts what the worker never decides."""
    wrong = purchase("evt-attr-1", customer=customer_block("C-attr", attributes={"b2b": "yes"}))
    path = tmp_path / "event.json"
    path.write_text(json.dumps(wrong))
    explained = CliRunner().invoke(
        main, ["explain", "--event", str(path), "--campaign", "laptop-accessories"]
    )
    assert explained.exit_code == 1
    assert "wrong_schema: customer.attributes.b2b: must be true or false" in explained.output
    right = purchase("evt-attr-2", customer=customer_block("C-attr", attributes={"b2b": True}))
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(wrong) + "\n" + json.dumps(right) + "\n")
    simulated = CliRunner().invoke(main, ["simulate", "--events", str(events)])
    assert simulated.exit_code == 0, simulated.output
    assert "events replayed: 1" in simulated.output
    assert ":1: wrong_schema: customer.attributes.b2b: must be true or false" in simulated.output


def test_simulate_reads_a_file_as_publish_does(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A giant line is cut and reported with the size publish reports (without its line
    ending), a BOM before the first line is dropped, and the events around it count."""
    from worker.intake.publisher import bounded_lines

    giant = purchase("evt-giant", customer=customer_block("C-g", first_name="x" * 300_000))
    good = [purchase(f"evt-ok-{n}", customer=customer_block(f"C-ok-{n}")) for n in range(2)]
    body = (
        b"\xef\xbb\xbf"
        + json.dumps(good[0]).encode()
        + b"\r\n"
        + json.dumps(giant).encode()
        + b"\r\n"
        + json.dumps(good[1]).encode()
        + b"\n"
    )
    events = tmp_path / "events.jsonl"
    events.write_bytes(body)
    result = CliRunner().invoke(main, ["simulate", "--events", str(events)])
    assert result.exit_code == 0, result.output
    assert "events replayed: 2" in result.output
    size = len(json.dumps(giant).encode())
    assert f":2: oversize: {size} bytes exceeds" in result.output
    with events.open("rb") as stream:
        cut = list(bounded_lines(stream))[1]
    assert getattr(cut, "size", None) == size, "publish's reader counts the same size"


def _forget(customer_id: str) -> dict[str, object]:
    return {
        "id": f"forget-{customer_id}",
        "type": "forget",
        "occurred_at": TUESDAY_MORNING.isoformat(),
        "customer": {"id": customer_id},
    }


def test_explain_and_simulate_say_a_forget_request_is_not_theirs_to_judge(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """They refused a ``forget`` line as ``unknown_type`` with a message that listed
    ``forget`` among the accepted types. A malformed forget is still what it is."""
    runner = CliRunner()
    request = tmp_path / "forget.json"
    request.write_text(json.dumps(_forget("C-f")))
    explained = runner.invoke(
        main, ["explain", "--event", str(request), "--campaign", "laptop-accessories"]
    )
    assert explained.exit_code != 0
    assert "forget_request: an erasure request, not a marketing event: explain judges" in (
        explained.output
    )
    malformed = {**_forget("C-f"), "customer": {"id": "C-f", "email": "x@example.ro"}}
    lines = [json.dumps(purchase("evt-a")), json.dumps(_forget("C-f")), json.dumps(malformed)]
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n")
    simulated = runner.invoke(main, ["simulate", "--events", str(events)])
    assert simulated.exit_code == 0, simulated.output
    assert "events replayed: 1" in simulated.output
    assert ":2: forget_request: an erasure request, not a marketing event: simulate" in (
        simulated.output
    )
    assert ":3: wrong_schema: customer" in simulated.output


class _Endless(io.RawIOBase):
    """A stream of zero bytes without end, as ``/dev/zero`` reads."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        buffer[:] = bytes(len(buffer))
        return len(buffer)


def test_a_line_without_end_is_reported_not_read_forever() -> None:
    """``publish /dev/zero`` (also ``explain --event`` and ``simulate --events``) read
    the over-long line to its end, which never came: 100 % of a core, no answer."""
    from worker.intake.publisher import MAX_SCANNED_BYTES, CutLine, bounded_lines

    stream = io.BufferedReader(_Endless())
    lines = list(bounded_lines(stream))  # ends: that is the point
    assert len(lines) == 1 and isinstance(lines[0], CutLine)
    assert lines[0].endless and lines[0].size >= MAX_SCANNED_BYTES
    assert "no line end within 64 MiB" in str(lines[0].invalid())
    # A runaway line that does end within the scan is measured, and reading goes on.
    finite = io.BytesIO(b"x" * 300_000 + b"\n" + b'{"next": 1}\n')
    cut, following = list(bounded_lines(finite))
    assert isinstance(cut, CutLine) and not cut.endless and cut.size == 300_000
    assert following == b'{"next": 1}\n'
