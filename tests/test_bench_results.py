"""The table ``make bench`` prints (``bench.stack.final_table``) and its options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.stack import (
    Bench,
    Delivery,
    Ingest,
    Results,
    _unwritable,
    final_table,
    parse,
    write_figures,
)


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
        ("--stats-settle", "inf"),
        ("--stats-settle", "1"),  # under the 1.5 s the CPU figure waits anyway
        ("--events", "1.5"),
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
    bench.next_customer, bench.customers_used_up = 0, False
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


def test_a_burst_that_delivered_nothing_is_missed_however_short() -> None:
    empty = _burst("burst", 1.0)
    empty.emails, empty.emails_per_s, empty.seconds = 0, 0.0, 1e-9
    lines = final_table(Results(machine="test", settings={}, deliveries=[empty], burst="burst"))
    assert _row(lines, "delivered emails/s end to end").endswith("MISSED")


def test_an_embedded_rate_over_less_than_a_second_is_not_judged() -> None:
    results = Results(machine="test", settings={})
    results.embedded = {"concurrency_1": 506.0, "concurrency_4": 437.0}
    results.embedded_seconds = {"concurrency_1": 0.72, "concurrency_4": 0.84}
    assert _row(final_table(results), "embedded crosssell run, concurrency 1").endswith("short")
    results.embedded_seconds["concurrency_1"] = 1.8
    assert _row(final_table(results), "embedded crosssell run, concurrency 1").endswith("met")


def test_the_warning_comes_with_the_first_event_past_the_shop(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = Bench.__new__(Bench)
    bench.options = parse(["--customers", "100"])
    bench.next_customer, bench.customers_used_up = 0, False
    bench.events("burst", 60)
    bench.events("burst2", 40)  # customers 60-99: the last fresh ones
    assert "WARNING" not in capsys.readouterr().out
    bench.events("paced", 1)  # customer 0 again
    assert "WARNING: paced:" in capsys.readouterr().out


def test_the_json_path_is_checked_without_creating_anything(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "figures.json"
    assert _unwritable(deep) is None
    assert not (tmp_path / "a").exists()
    assert _unwritable(tmp_path) == "is a directory"
    (tmp_path / "file").write_text("x")
    assert (
        _unwritable(tmp_path / "file" / "figures.json") == f"{tmp_path / 'file'} is not a directory"
    )


def test_the_figures_are_written_whole(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "bench.json"
    write_figures(target, Results(machine="test", settings={"events": 40}, burst="burst"))
    assert json.loads(target.read_text())["settings"] == {"events": 40}
    assert [p.name for p in target.parent.iterdir()] == ["bench.json"]  # no temporary left
