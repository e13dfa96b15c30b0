"""Operations at a glance: the dashboard names only exported metrics, every metric is
documented, the outbox gauges and ``crosssell status`` count what the database holds,
``crosssell sends list`` says why sends wait, and JSON logs carry the structured fields."""

from __future__ import annotations

import io
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY
from sqlalchemy import delete

from tests.support.factories import TUESDAY_MORNING
from tests.worker.end_to_end.test_pipeline import (
    _close_runtimes,
    _dispatch,
    _planned_send,
    _runtime,
)
from worker.commands.migrate import upgrade
from worker.commands.status import list_sends, outbox_status
from worker.core.clock import ShiftedClock
from worker.core.db import dispose_engines, transaction
from worker.core.log_format import CrosssellJsonFormatter, configure_logging, fields
from worker.core.metrics import outbox_snapshot
from worker.core.models import Customer, Send
from worker.core.settings import get_settings
from worker.outbox.delivery import deliver_send

__all__ = ["_close_runtimes"]
ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "config" / "grafana" / "crosssell.json"
OPERATIONS = ROOT / "docs" / "operations.md"

# --- the dashboard's queries name exported metrics only ----------------------------------

_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_KEYWORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def exported_names() -> set[str]:
    """Every series name the crosssell metric families expose, from the registry."""
    # The modules that define metrics: worker.core.metrics, and the webhook counter's module.
    import worker.core.metrics
    import worker.webhooks.apply

    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("crosssell_"):
            names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    assert worker.core.metrics.SENDS is not None
    assert worker.webhooks.apply.WEBHOOK_EVENTS is not None
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: identifiers that are not functions,
    keywords, label names (in matchers or groupings) or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", text)
    for match in re.finditer(r"(?<![0-9A-Za-z_:.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group(0).lower() in _KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def _queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for value in node.values():
            yield from _queries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _queries(value)


def test_the_name_finder_sees_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, provider) (rate(x_seconds_bucket{a="b{c}"}[5m])))'
        " / on (job) group_left max without (instance) (y_total offset 5m) > bool 1"
    )
    assert metric_names(expr) == {"x_seconds_bucket", "y_total"}
    assert metric_names("max(crosssell_nope)") - exported_names() == {"crosssell_nope"}


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = list(_queries(dashboard["panels"]))
    assert len(queries) >= 10
    exported = exported_names()
    for expr in queries:
        named = metric_names(expr)
        assert named, f"no metric in {expr!r}"
        assert named <= exported, f"{expr!r} names {sorted(named - exported)}"


def test_every_metric_is_in_the_operations_table() -> None:
    table = [line for line in OPERATIONS.read_text(encoding="utf-8").splitlines() if "|" in line]
    documented = set(re.findall(r"`(crosssell_[a-z_]+)`", "\n".join(table)))
    families = set()
    for family in REGISTRY.collect():
        if family.name.startswith("crosssell_"):
            families.add(family.name + ("_total" if family.type == "counter" else ""))
    exported_names()  # imports every module that defines metrics
    assert families - documented == set()


# --- the outbox gauges and `crosssell status` against a brute-force count ----------------

STATUSES = ("planned", "queued", "sending", "sent", "failed", "skipped")
REASONS = (None, "retry", "ambiguous", "hard_bounce", "retries_exhausted", "expired")


def _scenario(rng: random.Random, now: datetime) -> list[dict[str, Any]]:
    sends = []
    for number in range(rng.randint(0, 25)):
        status = rng.choice(STATUSES)
        sends.append(
            {
                "id": number + 1,
                "status": status,
                "reason": rng.choice(REASONS),
                "send_at": now + timedelta(minutes=rng.randint(-600, 600)),
                "updated_at": now - timedelta(minutes=rng.randint(0, 180)),
            }
        )
    return sends


def _store(url: str, sends: list[dict[str, Any]], now: datetime) -> None:
    with transaction(url) as session:
        session.execute(delete(Send))
        session.execute(delete(Customer))
        session.add(Customer(id="C-ops", attributes={}, created_at=now, updated_at=now))
        session.flush()
        for spec in sends:
            session.add(
                Send(
                    **spec,
                    campaign_id=f"camp-{spec['id'] % 3}",
                    kind="cross_sell",
                    customer_id="C-ops",
                    event_id=f"evt-{spec['id']}",
                    dedupe_key=f"k-{spec['id']}",
                    attempts=1,
                    created_at=now,
                    detail=None,
                )
            )


@pytest.mark.parametrize("seed", range(6))
def test_gauges_and_status_match_a_brute_force_count(database_url: str, seed: int) -> None:
    upgrade(database_url)
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    sends = _scenario(random.Random(seed), now)
    _store(database_url, sends, now)
    due = [s for s in sends if s["status"] == "planned" and s["send_at"] <= now]
    queued = sum(s["status"] == "queued" for s in sends)
    oldest_age = max(((now - s["send_at"]).total_seconds() for s in due), default=0.0)

    snapshot = outbox_snapshot(database_url, now)
    assert (snapshot.due, snapshot.queued) == (len(due), queued)
    assert snapshot.oldest_due_age == pytest.approx(oldest_age)

    with transaction(database_url) as session:
        status = outbox_status(session, now, limit=100)
    failed_hour = Counter(
        s["reason"] or "-"
        for s in sends
        if s["status"] == "failed" and s["updated_at"] >= now - timedelta(hours=1)
    )
    ambiguous = [s for s in sends if s["status"] == "failed" and s["reason"] == "ambiguous"]
    assert status.due == len(due)
    assert status.queued == queued
    assert status.sending == sum(s["status"] == "sending" for s in sends)
    assert status.planned_later == sum(
        s["status"] == "planned" and s["send_at"] > now for s in sends
    )
    assert status.failed_last_hour == dict(failed_hour)
    assert status.ambiguous_total == len(ambiguous)
    assert sorted(a.send_id for a in status.ambiguous) == sorted(s["id"] for s in ambiguous)

    with transaction(database_url) as session:
        planned = list_sends(session, "planned", "camp-1", 100)
    expected = sorted(
        (s for s in sends if s["status"] == "planned" and s["id"] % 3 == 1),
        key=lambda s: (s["send_at"], s["id"]),
    )
    assert [row.id for row in planned] == [s["id"] for s in expected]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("CROSSSELL_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    upgrade(get_settings().resolved_database_url)
    yield CliRunner()
    get_settings.cache_clear()
    dispose_engines()
    for handler in list(logging.getLogger().handlers):
        if getattr(handler, "_crosssell", False):
            logging.getLogger().removeHandler(handler)


def test_status_and_sends_list_commands(cli: CliRunner) -> None:
    from worker.commands.cli import main

    now = datetime.now(UTC)
    url = get_settings().resolved_database_url
    _store(
        url,
        [
            {
                "id": 1,
                "status": "planned",
                "reason": "retry",
                "send_at": now - timedelta(minutes=5),
                "updated_at": now,
            },
            {
                "id": 2,
                "status": "planned",
                "reason": None,
                "send_at": now + timedelta(hours=2),
                "updated_at": now,
            },
            {
                "id": 3,
                "status": "failed",
                "reason": "ambiguous",
                "send_at": now,
                "updated_at": now - timedelta(minutes=10),
            },
            {
                "id": 4,
                "status": "failed",
                "reason": "hard_bounce",
                "send_at": now,
                "updated_at": now - timedelta(minutes=3),
            },
        ],
        now,
    )
    with transaction(url) as session:
        bounced = session.get(Send, 4)
        assert bounced is not None
        bounced.detail = "550 5.1.1 <ana.pop@example.ro>: no such user"
    result = cli.invoke(main, ["status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "sends due, not yet queued:    1 (oldest waiting " in "\n".join(lines)
    assert "failed in the last hour:      2 (ambiguous 1, hard_bounce 1)" in lines
    assert "ambiguous sends (all time):   1" in lines
    assert any(line.startswith("  send 3  camp-0  Message-ID") for line in lines)
    shipped = len(list(Path(__file__).resolve().parents[3].glob("config/campaigns/*.yaml")))
    assert any(line.startswith(f"rules: {shipped} campaign(s), valid") for line in lines)

    planned = cli.invoke(main, ["sends", "list", "--status", "planned"]).output.splitlines()
    assert [line.split("\t")[0] for line in planned[1:]] == ["1", "2"]
    assert planned[1].endswith("retry after a transient provider error")
    assert planned[2].endswith("scheduled by the campaign (its delay, send window or quiet hours)")
    failed = cli.invoke(main, ["sends", "list", "--status", "failed", "--campaign", "camp-1"])
    rows = failed.output.splitlines()[1:]
    assert [row.split("\t")[0] for row in rows] == ["4"]
    assert "ana.pop@example.ro" not in failed.output and "addr:" in rows[0]


# --- JSON logs -----------------------------------------------------------------------------


def test_json_logs_carry_the_send_fields_and_nothing_personal(
    tmp_path: Path, database_url: str
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CrosssellJsonFormatter())
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("worker")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        runtime = _runtime(tmp_path, database_url)
        send_id = _planned_send(runtime, "C-json")
        runtime.clock = ShiftedClock(TUESDAY_MORNING + timedelta(hours=3))
        assert _dispatch(runtime) == [send_id]
        assert deliver_send(runtime, send_id) == "sent"
        logging.getLogger("worker.test").info(
            "with an unknown extra", extra={**fields(event_id="e-1"), "email": "x@example.ro"}
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert records, "nothing was logged"
    with transaction(database_url) as session:
        send = session.get(Send, send_id)
    assert send is not None
    sent = [r for r in records if r.get("send_id") == send_id and r.get("outcome") == "sent"]
    assert len(sent) == 1
    assert sent[0]["campaign"] == send.campaign_id
    assert sent[0]["level"] == "INFO" and sent[0]["logger"] == "worker.outbox.delivery"
    assert datetime.fromisoformat(sent[0]["timestamp"]).tzinfo is not None
    extra = [r for r in records if r["message"] == "with an unknown extra"]
    assert extra == [{**extra[0], "event_id": "e-1"}] and "email" not in extra[0]
    allowed = {"timestamp", "level", "logger", "message", "exc_info", "stack_info"}
    allowed |= {"event_id", "send_id", "campaign", "customer_id", "outcome", "reason"}
    assert all(set(r) <= allowed for r in records)


def test_the_cli_switch_selects_the_format(cli: CliRunner) -> None:
    from worker.commands.cli import main

    for choice, kind in (("json", CrosssellJsonFormatter), ("text", logging.Formatter)):
        assert cli.invoke(main, ["--log-format", choice, "sends", "list"]).exit_code == 0
        ours = [h for h in logging.getLogger().handlers if getattr(h, "_crosssell", False)]
        assert len(ours) == 1 and type(ours[0].formatter) is kind
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    logging.getLogger("worker.x").warning("send %s failed", 7, extra=fields(send_id=7))
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert (line["message"], line["send_id"], line["level"]) == ("send 7 failed", 7, "WARNING")
    configure_logging("WARNING", "text")


def test_the_celery_worker_serves_metrics_with_the_outbox_gauges(
    tmp_path: Path, sqlite_url: str
) -> None:
    import socket
    import urllib.request

    from tests.support.factories import make_settings
    from worker.core.metrics import OLDEST_DUE_AGE, SENDS_DUE, SENDS_QUEUED
    from worker.outbox.app import MetricsServer
    from worker.process.runtime import Runtime, set_runtime

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    now = datetime.now(UTC)
    _store(
        sqlite_url,
        [{"id": 1, "status": "queued", "reason": None, "send_at": now, "updated_at": now}],
        now,
    )
    set_runtime(Runtime(make_settings(tmp_path, database_url=sqlite_url, worker_metrics_port=port)))
    try:
        MetricsServer(None)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            body = answer.read().decode()
    finally:
        set_runtime(None)
        for gauge in (SENDS_DUE, SENDS_QUEUED, OLDEST_DUE_AGE):
            gauge.set_function(lambda: 0.0)
    assert "crosssell_sends_queued 1.0" in body.splitlines()
    assert "crosssell_sends_due 0.0" in body.splitlines()
    assert "# TYPE crosssell_provider_send_seconds histogram" in body


@pytest.mark.parametrize(("stored", "limit", "shown"), [(5, 2, 2), (3, 2, 2), (2, 2, 2), (1, 2, 1)])
def test_sends_list_says_when_more_sends_match_than_it_shows(
    cli: CliRunner, stored: int, limit: int, shown: int
) -> None:
    """A list cut at --limit must not read as everything that waits; the note goes to
    stderr so that a script reading the rows gets rows only."""
    from worker.commands.cli import main

    now = datetime.now(UTC)
    url = get_settings().resolved_database_url
    _store(
        url,
        [
            {"id": n, "status": "planned", "reason": None, "send_at": now, "updated_at": now}
            for n in range(1, stored + 1)
        ],
        now,
    )
    result = cli.invoke(main, ["sends", "list", "--limit", str(limit)])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1 + shown  # the header, then the rows
    if stored > limit:
        assert result.stderr.splitlines() == [
            f"(the first {limit} planned sends; more are not shown: --limit N shows up to N, "
            "at most 10,000)"
        ]
    else:
        assert result.stderr == ""
    # Send n is camp-(n % 3)'s: camp-1 holds sends 1 and 4; the note names the campaign.
    one = cli.invoke(main, ["sends", "list", "--campaign", "camp-1", "--limit", "1"])
    assert one.exit_code == 0, one.output
    assert len(one.stdout.splitlines()) == 2
    assert (one.stderr != "") == (stored >= 4)  # camp-1 holds sends 1 and 4
    if one.stderr:
        assert one.stderr.startswith("(the first 1 planned sends of campaign camp-1; ")


@pytest.mark.parametrize(
    ("campaign", "exit_code"),
    [
        ("camp-1", 0),  # in the sends, none in this status: an empty list
        ("laptop-accessories", 0),  # in the campaign files, no sends yet: an empty list
        ("camp-l", 2),  # a typo: a usage error naming the known ones
        ("nope", 2),
        ("", 2),  # an unset shell variable: not "every campaign"
    ],
)
def test_sends_list_of_an_unknown_campaign_is_a_usage_error(
    cli: CliRunner, campaign: str, exit_code: int
) -> None:
    """An empty list for a mistyped campaign would read as "nothing waits"."""
    from worker.commands.cli import main

    now = datetime.now(UTC)
    url = get_settings().resolved_database_url
    failed = {"id": 1, "status": "failed", "reason": "ambiguous", "send_at": now, "updated_at": now}
    _store(url, [failed], now)
    result = cli.invoke(main, ["sends", "list", "--status", "planned", "--campaign", campaign])
    assert result.exit_code == exit_code, result.output
    if exit_code:
        assert f"unknown campaign {campaign!r}" in result.output
        assert "camp-1" in result.output and "laptop-accessories" in result.output
    else:
        assert result.output.splitlines()[1:] == []
