"""Editing a campaign under a running `crosssell run` changes behaviour within seconds;
a broken edit leaves the previous rules running and logs the file:line:col error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from tests.support.factories import customer_block, purchase
from tests.worker.test_consumer_rabbitmq import wait_for
from worker.db import dispose_engines, transaction
from worker.models import Event

ROOT = Path(__file__).resolve().parents[2]
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

        campaign_file.write_text(CAMPAIGN.format(threshold=1000))
        time.sleep(3)  # the rule store looks at the files every 2 s
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
