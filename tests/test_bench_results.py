"""The table ``make bench`` prints (``bench.stack.final_table``) and its options."""

from __future__ import annotations

import json

import pytest

from bench.stack import Bench, Delivery, Ingest, Results, final_table, parse


def _burst(label: str, rate: float, lost: int = 0, duplicates: int = 0) -> Delivery:
    return Delivery(
        label=label,
        events=2000,
        emails=1000,
        seconds=1000 / rate,
        emails_per_s=rate,
        events_per_s=2 * rate,
        latency_p50=1.0,
        latency_p99=2.0,
        latency_max=2.0,
        lost=lost,
        duplicates=duplicates,
        unexpected=0,
        outcomes={"sent": 1000},
        cpu={"consume": 0.5, "celery-0": 1.5, "sink": 0.1},
        database={},
        event_prefix=f"bench-{label}-",
    )


def _row(lines: list[str], figure: str) -> str:
    return next(line for line in lines if line.strip().startswith(figure))


def test_the_table_reports_the_chosen_burst_and_counts_every_bursts_losses() -> None:
    results = Results(machine="test", settings={}, burst="burst 2 of 3")
    results.deliveries = [
        _burst("burst 1 of 3", 500.0, lost=1),
        _burst("burst 2 of 3", 560.0),
        _burst("burst 3 of 3", 600.0, duplicates=2),
    ]
    lines = final_table(results)
    assert "560.00 /s" in _row(lines, "delivered emails/s end to end")
    losses = _row(lines, "lost + duplicated at the sink (every burst)")
    assert "3.00" in losses and "MISSED" in losses, losses


def test_a_soak_has_no_burst_row() -> None:
    lines = final_table(Results(machine="test", settings={}))
    assert not any("delivered emails/s end to end" in line for line in lines)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--bursts", "0"),
        ("--bursts", "-1"),
        ("--events", "0"),
        ("--warmup-events", "0"),
        ("--customers", "-5"),
        ("--workers", "0"),
        ("--paced-seconds", "0"),
        ("--paced-seconds", "nan"),
        ("--timeout", "soon"),
    ],
)
def test_a_count_or_duration_that_leaves_nothing_to_time_is_refused(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        parse([option, value])
    assert refused.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err


def test_the_defaults_parse() -> None:
    options = parse([])
    assert (options.events, options.bursts, options.ingest_events) == (2000, 3, 6000)
    assert parse(["--sink-messages", "0"]).sink_messages == 0  # 0: skip the sink's check


def test_phases_that_come_round_to_used_customers_say_so_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = Bench.__new__(Bench)  # only the customer bookkeeping: no servers
    bench.options = parse(["--customers", "100"])
    bench.next_customer = 0
    first = bench.events("burst", 60)
    assert "WARNING" not in capsys.readouterr().out
    second = bench.events("burst2", 60)  # customers 60-99, then 0-19 again
    warned = capsys.readouterr().out
    assert "WARNING: burst2: the shop's 100 customers are used up" in warned, warned
    bench.events("burst3", 60)
    assert "WARNING" not in capsys.readouterr().out  # said once
    customer = [json.loads(e.body)["customer"]["id"] for e in first + second]
    assert len(set(customer[:100])) == 100  # every customer once
    assert customer[100:] == customer[:20]  # then round to the first again


def test_a_rate_measured_over_less_than_a_second_is_printed_but_not_judged() -> None:
    results = Results(machine="test", settings={})
    results.ingest = [
        Ingest("nothing matching (consumer alone)", 100, 0.2, 500.0, {"consume": 0.3}),
        Ingest("one campaign matching (consumer alone)", 6000, 3.0, 2000.0, {"consume": 0.3}),
    ]
    lines = final_table(results)
    short = _row(lines, "ingest events/s, nothing matching")
    assert short.endswith("short") and "500.00 /s" in short, short
    assert _row(lines, "ingest events/s, one campaign matching").endswith("met")
    verdicts = lines[lines.index("verdicts:") + 1 :]
    assert any(v.startswith("  short  ingest events/s, nothing") for v in verdicts), verdicts
    assert not any("MISSED" in v for v in verdicts), verdicts
