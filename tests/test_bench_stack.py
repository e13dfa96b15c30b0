"""``make bench`` keeps working: the harness, on a tiny shop and a few events, starts the
production stack, delivers through it to its sink and prints its table.

It asserts what the harness reports about correctness (every email sent reached the sink
once) and that it printed every section, never a time or a rate: those are figures for
docs/performance.md, not something a test can hold.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import port_open, unavailable
from tests.support.untraced import untraced

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("celery", path=str(BIN)) is None, reason="celery not installed")
def test_the_stack_bench_runs_end_to_end(tmp_path: Path) -> None:
    if not port_open("127.0.0.1", 5432) or not port_open("127.0.0.1", 5672):
        unavailable("PostgreSQL and RabbitMQ", "127.0.0.1:5432 / 127.0.0.1:5672 closed")
    if shutil.which("rabbitmqctl") is None:
        unavailable("RabbitMQ", "rabbitmqctl not found (the bench makes its own vhost)")
    figures = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "bench.stack",
            "--events", "40", "--customers", "500", "--warmup-events", "5",
            "--ingest-events", "20", "--paced-seconds", "2", "--sink-messages", "0",
            "--skip-floor", "--skip-embedded", "--timeout", "120", "--json", str(figures),
            "--stats-settle", "1.5",  # the database figures are not under test here
            "--workers", "1",  # the harness, not the per-core layout, is under test
        ],
        cwd=ROOT,
        # Untraced: tracing cost most of this test's time; the production-stack tests
        # (test_production_stack.py, test_production_path.py) measure the same processes.
        env=untraced(),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads(figures.read_text())
    labels = [delivery["label"] for delivery in results["deliveries"]]
    assert labels[0] == "warm-up", labels  # more waves only if a worker stayed cold
    timed = [label for label in labels if not label.startswith("warm-up")]
    bursts = ["burst 1 of 3", "burst 2 of 3", "burst 3 of 3"]
    assert timed[:3] == bursts and timed[3].startswith("paced"), labels
    # The table reports the median burst by emails/s; each burst has its own event ids.
    rates = {d["label"]: d["emails_per_s"] for d in results["deliveries"] if d["label"] in bursts}
    assert results["burst"] == sorted(rates, key=rates.__getitem__)[1], (results["burst"], rates)
    prefixes = [d["event_prefix"] for d in results["deliveries"] if d["label"] in bursts]
    assert prefixes == ["bench-burst-", "bench-burst2-", "bench-burst3-"], prefixes
    burst = next(d for d in results["deliveries"] if d["label"] == results["burst"])
    assert burst["events"] == 40
    # 60 % of the mix matches a campaign; a tenth of those is held out: some are sent.
    assert burst["emails"] > 0, burst
    for delivery in results["deliveries"]:
        assert (delivery["lost"], delivery["duplicates"], delivery["unexpected"]) == (0, 0, 0)
    assert [ingest["events"] > 0 for ingest in results["ingest"]] == [True, True]
    assert set(results["peak_rss_mb"]) >= {"consume", "dispatch", "celery-0", "sink"}
    assert "verdicts:" in done.stdout
    assert "delivered emails/s end to end (burst)" in done.stdout
