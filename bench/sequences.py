"""Sequence entry at ingest and step planning: CPU and statements per step, two trees.

``python -m bench.sequences [--enrollments N] [--batch B] [--repeat R] [--against PATH]``
makes its own PostgreSQL database (``CROSSSELL_BENCH_POSTGRES``, as ``bench.delivery``)
with the demo catalog and the shipped post-purchase journey (first step
``after_entry: 0m``), ingests N camera purchases by N new customers in batches of B
through ``ingest_batch`` (each purchase enrolls its customer), then runs ``plan_due``
passes of the default ``CROSSSELL_DISPATCH_BATCH`` until every first step is planned,
held out or skipped, as the dispatcher's housekeeping does. The clock is fixed on a
Tuesday morning, so every step is due and inside its window.

Printed per run: ingest's CPU and statements per event, and the planner's CPU and
statements per planned step (this process's CPU, ``time.process_time``: the database
server's is not counted; statements counted with SQLAlchemy's ``before_cursor_execute``,
an executemany counting once). ``--against PATH`` runs the same measurement on the tree
at PATH (a checkout of another commit) in alternation with this one, each run in a
fresh process with that tree first on the path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
JOURNEY = "config/campaigns/post-purchase-journey.yaml"


def measure(enrollments: int, batch: int) -> dict[str, Any]:
    """One run in this interpreter, with whatever ``worker`` the path gives; the figures
    as a dict (CPU in ms, statements as counts)."""
    from sqlalchemy import event

    from bench.delivery import own_database
    from tests.support.factories import TUESDAY_MORNING, customer_block, make_settings, purchase
    from triggers.events import validate_event
    from worker.commands.demo import seed_catalog
    from worker.commands.migrate import upgrade
    from worker.core.db import engine_for, transaction
    from worker.decide.sequences import plan_due
    from worker.intake.ingest import ingest_batch
    from worker.process.runtime import Runtime

    class FixedClock:
        def now(self) -> Any:
            return TUESDAY_MORNING

    now = TUESDAY_MORNING
    with own_database() as url, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        upgrade(url)
        campaigns = folder / "campaigns"
        campaigns.mkdir()
        shutil.copy(Path.cwd() / JOURNEY, campaigns)
        settings = make_settings(
            folder, database_url=url, campaigns_dir=campaigns, quiet_hours="off"
        )
        seed_catalog(settings, now)
        runtime = Runtime(settings, clock=FixedClock())
        rules, policy = runtime.rules.current(), runtime.policy
        statements = [0]

        def count(*_: Any) -> None:
            statements[0] += 1

        engine = engine_for(url)
        events = [
            validate_event(
                purchase(
                    f"bench-{number}",
                    at=now - timedelta(minutes=1),
                    customer=customer_block(f"C-{number}"),
                    sku="CAM-MIRRORLESS",
                    category="cameras",
                    price="899.00",
                )
            )
            for number in range(enrollments)
        ]
        event.listen(engine, "before_cursor_execute", count)
        started = time.process_time()
        for first in range(0, len(events), batch):
            with transaction(url) as session:
                ingest_batch(session, events[first : first + batch], rules, policy, now)
        ingest_cpu = time.process_time() - started
        ingest_statements = statements[0]
        event.remove(engine, "before_cursor_execute", count)
        with transaction(url) as session:
            # The re-time after loading the rules (once per rule set) is not a pass's.
            plan_due(session, rules, policy, now - timedelta(days=1), 1)
        statements[0] = 0
        steps = passes = 0
        event.listen(engine, "before_cursor_execute", count)
        started = time.process_time()
        while True:
            with transaction(url) as session:
                report = plan_due(session, rules, policy, now, settings.dispatch_batch)
            made = report.planned + report.held_out + report.skipped + report.exited
            if not made:
                break
            steps += made
            passes += 1
        plan_cpu = time.process_time() - started
        event.remove(engine, "before_cursor_execute", count)
        runtime.close()
        return {
            "enrollments": enrollments,
            "steps": steps,
            "passes": passes,
            "ingest_ms_per_event": ingest_cpu / enrollments * 1000,
            "ingest_statements_per_event": ingest_statements / enrollments,
            "plan_ms_per_step": plan_cpu / max(steps, 1) * 1000,
            "plan_statements_per_step": statements[0] / max(steps, 1),
            "plan_statements": statements[0],
        }


def _run_in(tree: Path, enrollments: int, batch: int) -> dict[str, Any]:
    """:func:`measure` in a fresh process whose ``worker`` (and ``bench``, ``tests``)
    come from ``tree``; this file is run by path, so it needs nothing of the tree."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    child = subprocess.run(
        [sys.executable, __file__, "--child", str(enrollments), str(batch)],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def _line(name: str, result: dict[str, Any]) -> str:
    return (
        f"  {name}: {result['steps']} steps in {result['passes']} passes; plan "
        f"{result['plan_ms_per_step']:.3f} ms CPU and "
        f"{result['plan_statements_per_step']:.2f} statements per step "
        f"({result['plan_statements']} in all); ingest {result['ingest_ms_per_event']:.3f} ms "
        f"CPU and {result['ingest_statements_per_event']:.2f} statements per event"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--enrollments", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200, help="events per ingest batch")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--against", type=Path, help="another tree to measure alike")
    options = parser.parse_args(argv)
    trees = [("this tree", ROOT)]
    if options.against is not None:
        trees.append((str(options.against), options.against.resolve()))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for _ in range(options.repeat):
        for name, tree in trees:
            result = _run_in(tree, options.enrollments, options.batch)
            results[name].append(result)
            print(_line(name, result), flush=True)
    if options.repeat > 1:
        print("medians:")
        for name, runs in results.items():
            median = {
                key: statistics.median(run[key] for run in runs)
                for key in runs[0]
                if isinstance(runs[0][key], float | int)
            }
            print(_line(name, median))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        # Run by path in the tree being measured: its own packages come first.
        sys.path[0] = os.getcwd()
        print(json.dumps(measure(int(sys.argv[2]), int(sys.argv[3]))))
        raise SystemExit(0)
    raise SystemExit(main())
