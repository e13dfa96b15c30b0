"""``crosssell report``'s offer figures are shares of one population (emails), every
table section has column headers, and an unknown ``--campaign`` is an error naming the
known ones."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.factories import TUESDAY_MORNING, make_settings
from tests.triggers.builders import campaign_document
from worker.commands.cli import main
from worker.commands.report import (
    OfferRow,
    Report,
    StepRow,
    build_report,
    check_campaign,
    render_table,
)
from worker.core.clock import ShiftedClock
from worker.core.db import dispose_engines, transaction
from worker.core.models import Conversion, Customer, Order, OrderLine, Send, SendOffer
from worker.decide.attribution import AttributionConfig
from worker.process.runtime import Runtime, set_runtime

T = TUESDAY_MORNING
LATER = T + timedelta(days=30)
OFFERED = ("S1", "S2")


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    document = campaign_document(
        "alpha",
        event="anniversary",
        offer={"type": "loyalty_bonus", "points": 500, "max_items": 3},
        holdout_percent=10,
        variants=[{"id": "A", "weight": 1, "template": "anniversary"}],
    )
    (campaigns / "alpha.yaml").write_text(json.dumps(document), encoding="utf-8")
    settings = make_settings(tmp_path, database_url=database_url, campaigns_dir=campaigns)
    runtime = Runtime(settings, clock=ShiftedClock(LATER))
    set_runtime(runtime)
    yield runtime
    set_runtime(None)
    dispose_engines()


def _plant(runtime: Runtime, sends: list[list[list[str]]], campaign: str = "alpha") -> None:
    """One email per entry, offering S1 and S2; each followed by its orders (each order a
    list of order lines, by SKU; a SKU may repeat, as one line per size or colour)."""
    with transaction(runtime.settings.resolved_database_url) as session:
        for n, orders in enumerate(sends):
            customer = f"C-{campaign}-{n}"
            session.add(Customer(id=customer, attributes={}, created_at=T, updated_at=T))
            send = Send(
                campaign_id=campaign,
                kind="loyalty",
                variant="A",
                customer_id=customer,
                event_id=f"evt-{campaign}-{n}",
                status="sent",
                dedupe_key=f"k-{campaign}-{n}",
                send_at=T,
                sent_at=T,
                queued_at=T,
                attempts=1,
                created_at=T,
                updated_at=T,
            )
            session.add(send)
            session.flush()
            session.add(SendOffer(send_id=send.id, skus=list(OFFERED), resolved_at=T))
            for m, lines in enumerate(orders):
                at = T + timedelta(days=1, hours=m)
                order_id = f"O-{campaign}-{n}-{m}"
                session.add(
                    Order(
                        id=order_id,
                        customer_id=customer,
                        event_id=f"evt-buy-{order_id}",
                        currency="EUR",
                        total=Decimal("10.00") * len(lines),
                        ordered_at=at,
                    )
                )
                session.flush()
                for sku in lines:
                    session.add(
                        OrderLine(
                            order_id=order_id,
                            sku=sku,
                            category="c",
                            quantity=1,
                            unit_price=Decimal("10.00"),
                        )
                    )
                direct = any(sku in OFFERED for sku in lines)
                session.add(
                    Conversion(
                        order_id=order_id,
                        campaign_id=campaign,
                        send_id=send.id,
                        variant="A",
                        arm="treated",
                        kind="direct" if direct else "influenced",
                        credited=True,
                        revenue=Decimal("10.00") * len(lines),
                        currency="EUR",
                        ordered_at=at,
                        touched_at=T,
                        attributed_at=at,
                    )
                )


# Per email, its orders' lines. The first is the tryout's: one email, two purchases of
# the offered product (200 % before); the others mix repeated lines, several orders per
# email, purchases of other products and emails without purchases.
SCENARIOS = {
    "two-orders-one-email": [[["S1"], ["S1"]]],
    "repeated-lines": [[["S1", "S1", "S1"]], []],
    "many-orders-mixed": [[["S1"], ["S1", "S2"], ["X9"]], [["S2"], ["S2"]], [["X9"]], []],
    "only-other-products": [[["X9"], ["X8"]], [["X9"]]],
    "each-email-buys-all": [[["S1", "S2"], ["S2", "S1"], ["S1"]]] * 3,
}


@pytest.mark.parametrize("sends", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_offer_rates_count_emails_never_purchases_or_lines(
    runtime: Runtime, sends: list[list[list[str]]]
) -> None:
    _plant(runtime, sends)
    with transaction(runtime.settings.resolved_database_url) as session:
        report = build_report(
            session, runtime.rules.current(), AttributionConfig(timedelta(days=7), {}), LATER
        )
    emails = len(sends)

    def with_direct_purchase(of: tuple[str, ...]) -> int:
        return sum(1 for orders in sends if any(set(lines) & set(of) for lines in orders))

    assert [(r.key, r.shown, r.direct) for r in report.offer_types] == [
        ("loyalty_bonus", emails, with_direct_purchase(OFFERED))
    ]
    # No trigger event is stored, so the trigger category is "unknown".
    assert {r.key: (r.shown, r.direct) for r in report.pairs} == {
        f"unknown -> {sku}": (emails, with_direct_purchase((sku,))) for sku in OFFERED
    }
    for row in report.offer_types + report.pairs:
        assert row.rate is not None and 0 <= row.rate <= 1, row
    text = render_table(report)
    rates = [float(rate) for rate in re.findall(r"(\d+\.\d+) %", text)]
    assert rates and all(0 <= rate <= 100 for rate in rates)


def _report(offer_types: list[OfferRow], pairs: list[OfferRow], steps: list[StepRow]) -> Report:
    return Report(
        since=None,
        until=None,
        generated_at=LATER,
        comparisons=[],
        offer_types=offer_types,
        pairs=pairs,
        days=[],
        credited_revenue={},
        steps=steps,
    )


TYPES = [OfferRow("complementary", 40, 3), OfferRow("loyalty_bonus", 7, 0)]
PAIRS = [OfferRow("chargers -> CASE-CLEAR", 2, 1)]
STEPS = [StepRow("welcome", "day-1", sent=5, held_out=1, direct=1)]


@pytest.mark.parametrize(
    ("offer_types", "pairs", "steps"),
    [(TYPES, [], []), ([], PAIRS, []), (TYPES, PAIRS, STEPS), ([], [], STEPS)],
    ids=["types", "pairs", "all", "steps"],
)
def test_every_table_section_has_column_headers(
    offer_types: list[OfferRow], pairs: list[OfferRow], steps: list[StepRow]
) -> None:
    """Each block of rows (lines starting with a key, then numbers) is preceded by a
    header line that names every one of its number columns."""
    lines = render_table(_report(offer_types, pairs, steps)).splitlines()
    rows = [r.key for r in (*offer_types, *pairs, *steps)]
    assert rows
    for key in rows:
        (at,) = [n for n, line in enumerate(lines) if line.strip().startswith(key + " ")]
        start = at
        while start > 0 and lines[start - 1].strip().split()[0] in rows:
            start -= 1  # the first row of the block
        header = lines[start - 1].split()
        numbers = [cell for cell in lines[at].split() if re.fullmatch(r"[\d.%-]+", cell)]
        assert len(header) >= len(numbers) + 1, (lines[start - 1], lines[at])
        assert not any(re.fullmatch(r"[\d.]+", cell) for cell in header)
        assert {"shown", "direct", "rate"} <= set(header) or {"sent", "held"} <= set(header)


@pytest.mark.parametrize(
    ("campaign_id", "error"),
    [
        ("alpha", None),  # in the campaign files
        ("retired", None),  # no longer in the files, still has sends to report
        ("alpa", "did you mean 'alpha'"),
        ("retierd", "did you mean 'retired'"),
        ("nope", "known campaigns: alpha, retired"),
        ("", "known campaigns: alpha, retired"),
        ("ALPHA", "unknown campaign 'ALPHA'"),
    ],
)
def test_only_known_campaigns_are_reported(
    runtime: Runtime, campaign_id: str, error: str | None
) -> None:
    _plant(runtime, [[]], campaign="retired")
    with transaction(runtime.settings.resolved_database_url) as session:
        if error is None:
            check_campaign(session, (c.id for c in runtime.rules.current().campaigns), campaign_id)
            return
        with pytest.raises(ValueError, match=re.escape(error)) as caught:
            check_campaign(session, (c.id for c in runtime.rules.current().campaigns), campaign_id)
    assert "known campaigns: alpha, retired" in str(caught.value)


def test_the_command_refuses_an_unknown_campaign(runtime: Runtime) -> None:
    _plant(runtime, [[["S1"], ["S1"]]])
    runner = CliRunner()
    for options in (["--campaign", "nope"], ["--campaign", "nope", "--no-reconcile"]):
        result = runner.invoke(main, ["report", *options])
        assert result.exit_code == 2, result.output
        assert "unknown campaign 'nope'" in result.output
        assert "known campaigns: alpha" in result.output
        assert "no emails" not in result.output
    known = runner.invoke(main, ["report", "--campaign", "alpha"])
    assert known.exit_code == 0, known.output
    assert "100.00 %" in known.output and "200.00 %" not in known.output
