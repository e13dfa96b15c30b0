"""``crosssell run`` end to end on the embedded defaults: emails per second.

    python -m bench.embedded [--events 2000] [--concurrency N] [--repeat 3]

In a fresh temporary ``CROSSSELL_VAR_DIR`` (SQLite database, the embedded broker
``var/broker.db``, the ``file`` provider): import the demo catalog, publish ``--events``
purchase events with ``crosssell publish`` (one new customer each, matched by one bench
campaign that sends at once with no holdout), then time ``crosssell run --until-drained``
from its start until the last ``.eml`` file is written (the outbox is watched from this
process; the drain watcher's own idle seconds before it stops are not counted). Prints
emails per second per run, their range, and the same-run floor: the render + MIME build +
``.eml`` write loop alone, in this process, for as many emails (what the run could reach
if moving events and tasks cost nothing). Target: 200 emails per second. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CROSSSELL = str(Path(sys.executable).parent / "crosssell")
TARGET = 200.0

CAMPAIGN = """\
id: bench-accessories
name: Accessories right after a laptop (benchmark)
status: active
kind: cross_sell
priority: 80
trigger:
  event: purchase
offer:
  type: complementary
  max_items: 3
  unavailable: skip_item
schedule:
  expire_after: 1d
frequency: {once_per_customer: false}
experiment:
  holdout_percent: 0
  variants:
    - {id: A, weight: 100, template: accessories}
"""


def midday_zone(now: datetime) -> str:
    """An IANA zone where it is around midday now (``Etc/GMT-3`` is UTC+3), so quiet
    hours never hold the bench's emails back whatever the hour it runs."""
    offset = max(-12, min(14, 12 - now.hour))
    return f"Etc/GMT{-offset:+d}" if offset else "Etc/UTC"


def purchase_lines(count: int, now: datetime, occurred_at: datetime | None = None) -> bytes:
    """``count`` purchases of a laptop, each by a new customer in a zone where it is
    midday, as JSON Lines; ``occurred_at`` default: five minutes before ``now``."""
    zone = midday_zone(now)
    occurred = occurred_at or now - timedelta(minutes=5)
    lines = []
    for number in range(count):
        lines.append(
            json.dumps(
                {
                    "id": f"bench-{number}",
                    "type": "purchase",
                    "occurred_at": occurred.isoformat(),
                    "customer": {
                        "id": f"B-{number}",
                        "email": f"b-{number}@example.com",
                        "first_name": "Ana",
                        "locale": "en",
                        "timezone": zone,
                        "consent": {"email_marketing": True},
                    },
                    "data": {
                        "order_id": f"O-bench-{number}",
                        "currency": "EUR",
                        "total": "999.00",
                        "items": [
                            {
                                "sku": "LAP-14-PRO",
                                "name": "Laptop 14 Pro",
                                "category": "laptops",
                                "quantity": 1,
                                "unit_price": "999.00",
                            }
                        ],
                    },
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


def environment(var_dir: Path, campaigns: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSSELL_")}
    env["CROSSSELL_VAR_DIR"] = str(var_dir)
    env["CROSSSELL_CAMPAIGNS_DIR"] = str(campaigns)
    env["CROSSSELL_UNSUBSCRIBE_KEYS"] = "b1:bench-secret-0123456789"
    return env


def _crosssell(env: dict[str, str], *args: str, stdin: bytes | None = None) -> None:
    done = subprocess.run(
        [CROSSSELL, *args], env=env, cwd=ROOT, input=stdin, capture_output=True, timeout=600
    )
    if done.returncode != 0:
        raise SystemExit(f"crosssell {' '.join(args)} failed:\n{done.stderr.decode()}")


def _children_cpu() -> float:
    """CPU seconds (user + system) of the waited-for child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(events: int, concurrency: int | None) -> tuple[float, int, float, float]:
    """(emails per second, emails written, seconds, CPU seconds of the run process) of
    one fresh run. The CPU time is what a loaded machine does not distort much."""
    with tempfile.TemporaryDirectory(prefix="crosssell-bench-") as tmp:
        var_dir = Path(tmp) / "var"
        campaigns = Path(tmp) / "campaigns"
        campaigns.mkdir()
        (campaigns / "bench.yaml").write_text(CAMPAIGN)
        env = environment(var_dir, campaigns)
        _crosssell(env, "migrate")
        _crosssell(env, "catalog", "import", str(ROOT / "config" / "demo" / "catalog.csv"))
        _crosssell(env, "publish", "-", stdin=purchase_lines(events, datetime.now(UTC)))
        outbox = var_dir / "outbox"
        command = [CROSSSELL, "--log-level", "WARNING", "run", "--until-drained"]
        if concurrency is not None:
            command += ["--concurrency", str(concurrency)]
        cpu_before = _children_cpu()
        started = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        written, last_change, last_count = 0, started, -1
        while process.poll() is None:
            time.sleep(0.05)
            written = len(list(outbox.glob("*.eml"))) if outbox.exists() else 0
            if written != last_count:
                last_count, last_change = written, time.perf_counter()
        _, stderr = process.communicate()
        cpu = _children_cpu() - cpu_before
        if process.returncode != 0:
            raise SystemExit(f"crosssell run failed:\n{stderr.decode()[-3000:]}")
        written = len(list(outbox.glob("*.eml")))
        if written != last_count:
            last_change = time.perf_counter()
        seconds = last_change - started
        return written / seconds, written, seconds, cpu


def floor(count: int) -> tuple[float, float]:
    """Render + MIME build + ``.eml`` write of the bench campaign's email, alone in this
    process, for ``count`` recipients: (emails per second, CPU seconds per email)."""
    from worker.core.settings import Settings
    from worker.decide.rules import load_rules
    from worker.email.email_context import sample_context
    from worker.email.mime import Envelope, build_email, feedback_id_for, message_id_for
    from worker.email.rendering import Renderer

    with tempfile.TemporaryDirectory(prefix="crosssell-floor-") as tmp:
        campaigns = Path(tmp) / "campaigns"
        campaigns.mkdir()
        (campaigns / "bench.yaml").write_text(CAMPAIGN)
        outbox = Path(tmp) / "outbox"
        outbox.mkdir()
        settings = Settings(var_dir=Path(tmp) / "var", campaigns_dir=campaigns)
        renderer = Renderer(settings)
        campaign = load_rules(settings, renderer).campaigns[0].campaign
        variant = campaign.experiment.variants[0]
        context = sample_context(campaign, settings, "en")
        started, cpu_started = time.perf_counter(), time.process_time()
        for number in range(count):
            email = renderer.render(variant.template, context, "en", variant.subject)
            envelope = Envelope(
                send_id=number,
                sender_name="Shop",
                sender_address="shop@example.com",
                recipient_name="Ana",
                recipient_address=f"b-{number}@example.com",
                reply_to=None,
                date=datetime.now(UTC),
                message_id=message_id_for(number, "example.com", b"k" * 32),
                unsubscribe_url=f"https://shop.example/u/{number}",
                unsubscribe_mailto="unsubscribe@example.com",
                feedback_id=feedback_id_for(campaign.id, campaign.kind, "crosssell"),
            )
            (outbox / f"{number}.eml").write_bytes(build_email(envelope, email).data)
        cpu = (time.process_time() - cpu_started) / count
        return count / (time.perf_counter() - started), cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument(
        "--concurrency", type=int, default=None, help="default: crosssell run's own default"
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rates, cpus = [], []
    for attempt in range(1, args.repeat + 1):
        rate, written, seconds, cpu = one_run(args.events, args.concurrency)
        rates.append(rate)
        cpus.append(cpu * 1000 / max(written, 1))
        print(
            f"run {attempt}: {written} emails from {args.events} events in {seconds:.1f} s: "
            f"{rate:.0f} emails/s, {cpus[-1]:.1f} ms CPU per email (all threads)",
            flush=True,
        )
    baseline, baseline_cpu = floor(args.events)
    print(
        f"crosssell run --until-drained (embedded): {min(rates):.0f}-{max(rates):.0f} emails/s, "
        f"{min(cpus):.1f}-{max(cpus):.1f} ms CPU per email, over {len(rates)} run(s) "
        f"(target {TARGET:.0f} emails/s); same-run floor render+build+write alone: "
        f"{baseline:.0f} emails/s, {baseline_cpu * 1000:.1f} ms CPU per email"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
