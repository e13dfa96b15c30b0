"""``crosssell report`` on a history whose every count is planted, on SQLite and
PostgreSQL: the figures are the planted ones, the intervals those of the definitions
(Wilson bounds found by root-finding, combined as Newcombe prescribes), revenue stays
per currency, and every output format parses."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.support.factories import TUESDAY_MORNING, make_settings, purchase
from tests.triggers.builders import campaign_document
from tests.triggers.test_lift import _wilson_by_root_finding
from triggers.events import validate_event
from worker.commands.cli import main
from worker.commands.report import Comparison, build_report, render_csv, render_json, render_table
from worker.core.clock import ShiftedClock
from worker.core.db import dispose_engines, transaction
from worker.core.models import ConsentRecord, Customer, Send, SendOffer
from worker.decide.attribution import AttributionConfig
from worker.intake.ingest import ingest_event
from worker.process.runtime import Runtime, set_runtime

T = TUESDAY_MORNING
LATER = T + timedelta(days=30)


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    document = campaign_document(
        "alpha",
        event="anniversary",
        offer={"type": "loyalty_bonus", "points": 500, "max_items": 3},
        holdout_percent=10,
        variants=[
            {"id": "A", "weight": 1, "template": "anniversary"},
            {"id": "B", "weight": 1, "template": "anniversary"},
        ],
    )
    (campaigns / "alpha.yaml").write_text(json.dumps(document), encoding="utf-8")
    settings = make_settings(tmp_path, database_url=database_url, campaigns_dir=campaigns)
    runtime = Runtime(settings, clock=ShiftedClock(LATER))
    set_runtime(runtime)
    _plant(runtime)
    yield runtime
    set_runtime(None)
    dispose_engines()


# The planted history: (group, touches, [(sku, currency, amount) per converting touch]).
PLAN: dict[str, tuple[int, list[tuple[str, str, str]]]] = {
    "A": (
        40,
        [("S1", "EUR", "20.00")] * 5
        + [("S1", "RON", "100.00")]
        + [("X9", "EUR", "30.00")] * 2
        + [("X9", "RON", "50.00")] * 2,
    ),
    "B": (30, [("X9", "EUR", "10.00")] * 3),
    "holdout": (20, [("S1", "EUR", "20.00"), ("X9", "EUR", "30.00")]),
}
BOUNCED_A = 2  # of A's 40, reported hard bounces afterwards
QUEUED_A = 3  # planned for A, never handed over: eligible, not sent
SKIPPED_AT_PLANNING = 4  # never eligible


def _plant(runtime: Runtime) -> None:
    url = runtime.settings.resolved_database_url
    serial = 0
    purchases: list[dict[str, Any]] = []
    with transaction(url) as session:
        for group, (count, buys) in PLAN.items():
            for index in range(count):
                serial += 1
                customer = f"C-{group}-{index}"
                session.add(Customer(id=customer, attributes={}, created_at=T, updated_at=T))
                held = group == "holdout"
                bounced = group == "A" and index >= count - BOUNCED_A
                send = Send(
                    campaign_id="alpha",
                    kind="loyalty",
                    variant="A" if held else group,
                    customer_id=customer,
                    event_id=f"evt-trigger-{serial}",
                    status="held_out" if held else "failed" if bounced else "sent",
                    reason="holdout" if held else "hard_bounce" if bounced else None,
                    dedupe_key=f"k-{serial}",
                    send_at=T,
                    sent_at=None if held else T,
                    queued_at=None if held else T,
                    attempts=0 if held else 1,
                    created_at=T,
                    updated_at=T,
                )
                session.add(send)
                session.flush()
                session.add(SendOffer(send_id=send.id, skus=["S1", "S2"], resolved_at=T))
                if index < len(buys):
                    sku, currency, amount = buys[index]
                    document = purchase(
                        f"evt-buy-{serial}",
                        at=T + timedelta(days=1),
                        customer={"id": customer},
                        sku=sku,
                        category="accessories",
                        price=amount,
                    )
                    document["data"]["currency"] = currency
                    purchases.append(document)
        for extra, status in [(QUEUED_A, "queued"), (SKIPPED_AT_PLANNING, "skipped")]:
            for _ in range(extra):
                serial += 1
                session.add(
                    Send(
                        campaign_id="alpha",
                        kind="cross_sell",
                        variant="A",
                        customer_id="C-A-0",
                        event_id=f"evt-trigger-{serial}",
                        status=status,
                        reason="cooldown" if status == "skipped" else None,
                        dedupe_key=f"k-{serial}",
                        send_at=T,
                        queued_at=T if status == "queued" else None,
                        attempts=0,
                        created_at=T,
                        updated_at=T,
                    )
                )
        opt_outs = [
            ("C-A-1", "webhook:postmark", "complaint", T + timedelta(days=1)),
            ("C-A-2", "one-click", None, T + timedelta(days=2)),
            ("C-A-3", "one-click", None, T + timedelta(days=10)),  # after the window
            ("C-holdout-0", "preference-page", None, T + timedelta(days=1)),
        ]
        for customer, source, detail, at in opt_outs:
            session.add(
                ConsentRecord(
                    customer_id=customer,
                    scope="email_marketing",
                    granted=False,
                    source=source,
                    detail=detail,
                    decided_at=at,
                    recorded_at=at,
                )
            )
    rules = runtime.rules.current()
    for document in purchases:
        with transaction(url) as session:
            ingest_event(session, validate_event(document), rules, runtime.policy, LATER)


def _report(runtime: Runtime, **options: Any) -> list[Comparison]:
    with transaction(runtime.settings.resolved_database_url) as session:
        return build_report(
            session,
            runtime.rules.current(),
            AttributionConfig(timedelta(days=7), {}),
            LATER,
            **options,
        ).comparisons


def _newcombe(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    l1, u1 = _wilson_by_root_finding(x1, n1)
    l2, u2 = _wilson_by_root_finding(x2, n2)
    p1, p2 = x1 / n1, x2 / n2
    return (
        p1 - p2 - ((p1 - l1) ** 2 + (u2 - p2) ** 2) ** 0.5,
        p1 - p2 + ((u1 - p1) ** 2 + (p2 - l2) ** 2) ** 0.5,
    )


def test_every_count_is_the_planted_one(runtime: Runtime) -> None:
    a, b = _report(runtime)
    assert (a.variant.label, b.variant.label) == ("A", "B")
    v, h = a.variant, a.holdout
    assert (v.eligible, v.sent, v.delivered, v.bounced) == (43, 40, 38, 2)
    assert (v.complained, v.unsubscribed) == (1, 1)
    assert (v.converted, v.direct, v.influenced) == (10, 6, 4)
    assert (h.eligible, h.sent, h.converted, h.direct, h.influenced) == (20, 20, 2, 1, 1)
    assert (h.complained, h.unsubscribed) == (0, 1)
    assert (b.variant.sent, b.variant.converted, b.variant.direct) == (30, 3, 0)
    assert b.holdout is a.holdout or b.holdout == a.holdout  # one holdout per campaign
    assert v.open == 0 and h.open == 0  # the report's clock is past every window


def test_the_lift_interval_is_newcombes(runtime: Runtime) -> None:
    a, b = _report(runtime)
    for comparison, (x1, n1) in ((a, (10, 40)), (b, (3, 30))):
        lift = comparison.absolute_lift
        assert lift is not None and "Newcombe" in lift.method
        lower, upper = _newcombe(x1, n1, 2, 20)
        assert lift.estimate == pytest.approx(x1 / n1 - 2 / 20)
        assert (lift.lower, lift.upper) == (pytest.approx(lower), pytest.approx(upper))
        relative = comparison.relative_lift
        assert relative is not None
        assert relative.estimate == pytest.approx((x1 / n1) / (2 / 20) - 1)


def test_revenue_is_per_currency_and_never_summed_across(runtime: Runtime) -> None:
    a, _ = _report(runtime)
    by_currency = {r.currency: r for r in a.incremental_revenue}
    assert set(by_currency) == {"EUR", "RON"}
    eur_treated = 5 * Decimal("20.00") + 2 * Decimal("30.00")
    eur_control = Decimal("20.00") + Decimal("30.00")
    assert by_currency["EUR"].estimate == eur_treated - eur_control / 20 * 40
    assert by_currency["RON"].estimate == Decimal("100.00") + 2 * Decimal("50.00")
    for interval in by_currency.values():
        assert interval.lower <= interval.estimate <= interval.upper
        assert "bootstrap" in interval.method and "seed" in interval.method


def test_the_range_selects_touches(runtime: Runtime) -> None:
    assert _report(runtime, since=T + timedelta(seconds=1)) == []
    assert len(_report(runtime, until=T + timedelta(seconds=1))) == 2
    assert _report(runtime, campaign_id="other") == []


def test_offer_rows_count_shown_offers_and_direct_conversions(runtime: Runtime) -> None:
    with transaction(runtime.settings.resolved_database_url) as session:
        report = build_report(
            session, runtime.rules.current(), AttributionConfig(timedelta(days=7), {}), LATER
        )
    assert [(r.key, r.shown, r.direct) for r in report.offer_types] == [("loyalty_bonus", 70, 6)]
    pairs = {r.key: (r.shown, r.direct) for r in report.pairs}
    assert pairs == {"unknown -> S1": (70, 6), "unknown -> S2": (70, 0)}
    # Each purchase is credited to its one email; held-out conversions never are.
    assert report.credited_revenue == {
        "EUR": 5 * Decimal("20.00") + 2 * Decimal("30.00") + 3 * Decimal("10.00"),
        "RON": Decimal("100.00") + 2 * Decimal("50.00"),
    }


def test_every_format_parses_and_names_its_methods(runtime: Runtime, tmp_path: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(main, ["report"])
    assert table.exit_code == 0, table.output
    assert "Newcombe hybrid score interval" in table.output
    assert "alpha / variant A vs holdout" in table.output
    assert "verdict: not enough data yet: about " in table.output

    as_json = runner.invoke(main, ["report", "--format", "json", "--campaign", "alpha"])
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.output)
    first = document["comparisons"][0]
    assert (first["variant"], first["sent"], first["held_out"], first["direct"]) == ("A", 40, 20, 6)
    assert {r["currency"] for r in first["incremental_revenue"]} == {"EUR", "RON"}

    as_csv = runner.invoke(main, ["report", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert [(r["variant"], r["sent"], r["bounced"]) for r in rows] == [
        ("A", "40", "2"),
        ("B", "30", "0"),
    ]
    assert "Newcombe" in rows[0]["absolute_lift_method"]

    out = tmp_path / "out" / "report.html"
    html = runner.invoke(main, ["report", "--format", "html", "--out", str(out)])
    assert html.exit_code == 0, html.output
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in text
    # Aggregates only: the file gets the mode the umask gives new files (not 0600).
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask

    # To standard output by name: written at its place, what was there before kept (a
    # reopened /dev/stdout would have truncated the file the shell redirected to).
    redirected = tmp_path / "redirected.txt"
    redirected.write_bytes(b"")
    descriptor = os.open(redirected, os.O_WRONLY)
    try:
        os.write(descriptor, b"BEFORE\n")
        named = runner.invoke(main, ["report", "--format", "csv", "--out", f"/dev/fd/{descriptor}"])
    finally:
        os.close(descriptor)
    assert named.exit_code == 0, named.output
    written = redirected.read_text(encoding="utf-8")
    assert written.startswith("BEFORE\ncampaign,variant,")
    assert "report written to" not in written
    dash = runner.invoke(main, ["report", "--format", "csv", "--out", "-"])
    assert dash.exit_code == 0 and dash.stdout.startswith("campaign,variant,")
    assert not Path("-").exists()

    bad = runner.invoke(main, ["report", "--since", "yesterday"])
    assert bad.exit_code == 2
    empty = runner.invoke(main, ["report", "--since", (T + timedelta(days=1)).isoformat()])
    assert "no emails or holdout decisions in this range" in empty.output
    future = runner.invoke(main, ["report", "--since", "2999-01-01T00:00Z"])
    assert future.exit_code == 2 and "--since is in the future" in future.output


def test_renderers_agree_on_the_figures(runtime: Runtime) -> None:
    with transaction(runtime.settings.resolved_database_url) as session:
        report = build_report(
            session, runtime.rules.current(), AttributionConfig(timedelta(days=7), {}), LATER
        )
    document = json.loads(render_json(report))
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    for record, row in zip(document["comparisons"], rows, strict=True):
        assert float(row["rate"]) == pytest.approx(record["rate"])
        assert row["verdict"] == record["verdict"]
        assert record["verdict"] in render_table(report)
