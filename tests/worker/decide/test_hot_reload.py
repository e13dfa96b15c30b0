"""Editing a campaign under a running `crosssell run` changes behaviour within seconds;
a broken edit leaves the previous rules running and logs the file:line:col error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from tests.support.factories import customer_block, make_settings, purchase
from tests.worker.intake.test_consumer_rabbitmq import wait_for
from worker.commands.demo import seed_catalog
from worker.core.db import dispose_engines, transaction
from worker.core.models import Event

ROOT = Path(__file__).resolve().parents[3]
CROSSSELL = str(Path(sys.executable).parent / "crosssell")

CAMPAIGN = """\
id: big-orders
name: Thank-you accessories for big orders
kind: cross_sell
trigger:
  event: purchase
  where: {{field: event.total, op: gte, value: {threshold}}}
offer: {{type: complementary}}
schedule: {{delay: 0m}}
experiment:
  variants:
    - {{id: A, template: accessories}}
"""


def _outcome(database_url: str, event_id: str) -> Any:
    try:
        with transaction(database_url) as session:
            return session.scalar(select(Event.outcome).where(Event.event_id == event_id))
    except OperationalError:  # `crosssell run` is still creating the schema
        return None


def reloads(log_path: Path) -> int:
    """How many times ``crosssell run`` has logged a reload that took new rules."""
    return log_path.read_text(errors="replace").count("campaigns reloaded: ")


def test_edit_reloads_and_a_broken_edit_keeps_the_last_good_rules(tmp_path: Path) -> None:
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    campaign_file = campaigns / "big-orders.yaml"
    campaign_file.write_text(CAMPAIGN.format(threshold=100))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSSELL_")}
    env |= {
        "CROSSSELL_VAR_DIR": str(tmp_path / "var"),
        "CROSSSELL_CAMPAIGNS_DIR": str(campaigns),
        "CROSSSELL_QUIET_HOURS": "off",
        "CROSSSELL_DISPATCH_INTERVAL": "0.2",
    }
    database_url = f"sqlite:///{tmp_path / 'var' / 'crosssell.db'}"
    log_path = tmp_path / "run.log"

    def publish(total: str) -> str:
        event = purchase(at=datetime.now(UTC), customer=customer_block("C-reload"), price=total)
        subprocess.run(
            [CROSSSELL, "publish", "-"],
            input=json.dumps(event).encode(),
            env=env,
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        return str(event["id"])

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [CROSSSELL, "--log-level", "INFO", "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        first = publish("150.00")
        wait_for(lambda: _outcome(database_url, first) is not None, 60)
        assert _outcome(database_url, first) == {"big-orders": "planned"}

        before = reloads(log_path)
        campaign_file.write_text(CAMPAIGN.format(threshold=1000))
        # The process's one rule store looks at the files every 2 s and logs each reload.
        wait_for(lambda: reloads(log_path) > before, 30)
        second = publish("150.00")
        wait_for(lambda: _outcome(database_url, second) is not None, 30)
        assert _outcome(database_url, second) == {"big-orders": "trigger_conditions"}

        broken = CAMPAIGN.format(threshold=1000).replace("event.total", "event.totl")
        campaign_file.write_text(broken)
        wait_for(lambda: "event.totl" in log_path.read_text(errors="replace"), 30)
        third = publish("2000.00")
        wait_for(lambda: _outcome(database_url, third) is not None, 30)
        # Still the last good rules (threshold 1000), not the broken file.
        assert _outcome(database_url, third) == {"big-orders": "planned"}
        text = log_path.read_text(errors="replace")
        assert f"{campaign_file}:6:" in text and "error[unknown-field]" in text
        assert "previous rules keep running" in text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        dispose_engines()


TEMPLATE_CAMPAIGN = CAMPAIGN.format(threshold=100).replace("template: accessories", "template: t")
BOMB = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def test_a_template_bomb_is_refused_on_reload_and_a_fix_recovers(tmp_path: Path) -> None:
    """An edit that makes a template loop for ever is refused by the reload (the sandbox's
    step limit stops it in milliseconds), the last good templates keep sending, a fixed
    file is taken at the next look, and SIGTERM still stops the process."""
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "big-orders.yaml").write_text(TEMPLATE_CAMPAIGN)
    body = tmp_path / "templates" / "t" / "body.html"
    body.parent.mkdir(parents=True)
    (body.parent / "subject.txt").write_text("Hello {{ customer.first_name }}")
    body.write_text("<p>good</p>")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSSELL_")}
    env |= {
        "CROSSSELL_VAR_DIR": str(tmp_path / "var"),
        "CROSSSELL_CAMPAIGNS_DIR": str(campaigns),
        "CROSSSELL_TEMPLATES_DIR": str(tmp_path / "templates"),
        "CROSSSELL_QUIET_HOURS": "off",
        "CROSSSELL_DISPATCH_INTERVAL": "0.2",
    }
    log_path = tmp_path / "run.log"

    def publish(customer: str) -> str:
        event = purchase(at=datetime.now(UTC), customer=customer_block(customer), price="150.00")
        subprocess.run(
            [CROSSSELL, "publish", "-"],
            input=json.dumps(event).encode(),
            env=env,
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        return str(event["id"])

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    outbox = tmp_path / "var" / "outbox"

    def emails() -> list[bytes]:
        files = sorted(outbox.glob("*.eml"), key=lambda p: int(p.stem)) if outbox.is_dir() else []
        return [p.read_bytes() for p in files]

    # The offer needs products: the schema first, then the demo catalog.
    subprocess.run([CROSSSELL, "migrate"], env=env, check=True, capture_output=True, cwd=ROOT)
    seed_catalog(make_settings(tmp_path), datetime.now(UTC))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [CROSSSELL, "--log-level", "INFO", "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        publish("C-bomb-1")
        wait_for(lambda: len(emails()) == 1, 60)
        assert b"good" in emails()[0]

        body.write_text(f"<p>bad</p>\n{BOMB}")
        wait_for(lambda: "error[template-runtime]" in log_text(), 30)
        assert f"{body}:2:1: error[template-runtime] render limit: " in log_text()
        assert "previous rules keep running" in log_text()
        publish("C-bomb-2")
        wait_for(lambda: len(emails()) == 2, 30)
        assert b"good" in emails()[1]  # the last good templates, not the bomb

        before = reloads(log_path)
        body.write_text("<p>fixed</p>")
        # The process's one rule store looks at the files every 2 s and logs each reload
        # that took new rules (not the refused bomb).
        wait_for(lambda: reloads(log_path) > before, 30)
        publish("C-bomb-3")
        wait_for(lambda: len(emails()) == 3, 30)
        assert b"fixed" in emails()[2]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)  # raises TimeoutExpired if SIGTERM did not stop it
        dispose_engines()
