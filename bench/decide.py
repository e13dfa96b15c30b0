"""How long one ``triggers.decide.decide`` call takes against 200 active campaigns.

Writes 200 generated campaign files (mixed triggers, 2-8 condition leaves each, segments,
priorities, cooldowns, windows, holdouts) to a temporary directory, loads them through
``worker.decide.rule_files.load_rule_set`` (the real YAML parser and compiler), builds a varied set
of events and customers, and times single decisions with ``time.perf_counter_ns``.

Printed, each as median / p95 / p99 in microseconds per decision:

* ``decide()``: the call alone, facts already built: the figure the target is about;
* ``build_facts + decide()``: what the worker does per event, facts included;
* the floor: ``build_facts`` plus iterating ``rules.active_for(event_type)`` without
  evaluating anything, so the reader sees what the engine adds on top;
* ``build_facts`` alone;
* the ``decide()`` samples split by event type.

All lines are measured in interleaved rounds over the same event sequence, so a machine
that slows down for a while slows every line alike. Run ``python -m bench.decide``
(``--help`` for the knobs; ``--profile`` adds a cProfile of ``decide()``).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.corpus import DEFAULT_SEED, EVENT_TYPES, Case, generate_cases, write_corpus
from bench.timing import (
    Summary,
    machine_line,
    print_profile,
    timer_overhead_ns,
    verdict,
    workdir,
)
from triggers.decide import PastSend, Policy, Subject, decide
from triggers.facts import build_facts
from triggers.rule_set import RuleSet
from worker.decide.rule_files import load_definitions, load_rule_set

TARGET_MEDIAN_US = 50.0
CUSTOMERS = 500

# A measure times calls number ``start`` .. ``start + count - 1`` (modulo the event set)
# and returns one sample in nanoseconds per call.
Measure = Callable[[int, int], list[int]]


@dataclass(frozen=True, slots=True)
class Call:
    """The arguments of one decision, unpacked before the clock starts."""

    event_type: str
    event_id: str
    triggered_at: datetime
    facts: Mapping[str, object]
    subject: Subject
    history: Sequence[PastSend]
    now: datetime


def load_bench_rules(root: Path, seed: int, count: int) -> RuleSet:
    """Write ``count`` active campaigns as YAML and load them through the real loader."""
    corpus = write_corpus(root, seed, count, templates=False)
    definitions = load_definitions(corpus.attributes_file, corpus.segments_file)
    rules = load_rule_set(
        [corpus.campaigns_dir],
        segments=definitions.segments,
        attributes=definitions.attributes,
    )
    if len(rules.campaigns) != count:
        raise SystemExit(f"expected {count} campaigns, loaded {len(rules.campaigns)}")
    return rules


def make_calls(cases: Sequence[Case]) -> list[Call]:
    return [
        Call(
            case.event.type,
            case.event.id,
            case.event.occurred_at,
            build_facts(case.event, case.profile, case.now),
            case.subject,
            case.history,
            case.now,
        )
        for case in cases
    ]


def decide_measure(rules: RuleSet, calls: Sequence[Call], policy: Policy) -> Measure:
    def measure(start: int, count: int) -> list[int]:
        clock = time.perf_counter_ns
        size = len(calls)
        samples = [0] * count
        for offset in range(count):
            call = calls[(start + offset) % size]
            began = clock()
            decide(
                rules=rules,
                event_type=call.event_type,
                event_id=call.event_id,
                triggered_at=call.triggered_at,
                facts=call.facts,
                subject=call.subject,
                history=call.history,
                policy=policy,
                now=call.now,
            )
            samples[offset] = clock() - began
        return samples

    return measure


def facts_and_decide_measure(
    rules: RuleSet, cases: Sequence[Case], calls: Sequence[Call], policy: Policy
) -> Measure:
    def measure(start: int, count: int) -> list[int]:
        clock = time.perf_counter_ns
        size = len(calls)
        samples = [0] * count
        for offset in range(count):
            case = cases[(start + offset) % size]
            call = calls[(start + offset) % size]
            began = clock()
            decide(
                rules=rules,
                event_type=call.event_type,
                event_id=call.event_id,
                triggered_at=call.triggered_at,
                facts=build_facts(case.event, case.profile, case.now),
                subject=call.subject,
                history=call.history,
                policy=policy,
                now=call.now,
            )
            samples[offset] = clock() - began
        return samples

    return measure


def floor_measure(rules: RuleSet, cases: Sequence[Case], calls: Sequence[Call]) -> Measure:
    """``build_facts`` and a walk over the event type's active campaigns, nothing evaluated."""

    def measure(start: int, count: int) -> list[int]:
        clock = time.perf_counter_ns
        size = len(calls)
        samples = [0] * count
        for offset in range(count):
            case = cases[(start + offset) % size]
            event_type = calls[(start + offset) % size].event_type
            began = clock()
            build_facts(case.event, case.profile, case.now)
            for _compiled in rules.active_for(event_type):
                pass
            samples[offset] = clock() - began
        return samples

    return measure


def build_facts_measure(cases: Sequence[Case]) -> Measure:
    def measure(start: int, count: int) -> list[int]:
        clock = time.perf_counter_ns
        size = len(cases)
        samples = [0] * count
        for offset in range(count):
            case = cases[(start + offset) % size]
            began = clock()
            build_facts(case.event, case.profile, case.now)
            samples[offset] = clock() - began
        return samples

    return measure


def run_interleaved(
    measures: Mapping[str, Measure], warmup: int, iterations: int, rounds: int
) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """Warm every measure up, then run them in turn, ``rounds`` times, on consecutive
    slices of the event sequence; returns all samples and each round's median (µs)."""
    for measure in measures.values():
        measure(0, warmup)
    per_round = max(1, iterations // rounds)
    samples: dict[str, list[int]] = {name: [] for name in measures}
    round_medians: dict[str, list[float]] = {name: [] for name in measures}
    for index in range(rounds):
        start = warmup + index * per_round
        for name, measure in measures.items():
            gc.collect()
            chunk = measure(start, per_round)
            samples[name] += chunk
            round_medians[name].append(statistics.median(chunk) / 1000)
    return samples, round_medians


def workload_lines(rules: RuleSet, calls: Sequence[Call], policy: Policy) -> list[str]:
    """What one decision does on average: how many campaigns it weighs and how they end."""
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    considered = planned_events = 0
    for call in calls:
        decisions = decide(
            rules=rules,
            event_type=call.event_type,
            event_id=call.event_id,
            triggered_at=call.triggered_at,
            facts=call.facts,
            subject=call.subject,
            history=call.history,
            policy=policy,
            now=call.now,
        )
        considered += len(decisions)
        planned_events += any(d.outcome in ("planned", "held_out") for d in decisions)
        for decision in decisions:
            outcomes[decision.outcome] += 1
            if decision.reason:
                reasons[f"{decision.outcome}:{decision.reason}"] += 1
    n = len(calls)
    matched = outcomes["planned"] + outcomes["held_out"] + outcomes["skipped"]
    skipped = ", ".join(
        f"{reason.split(':', 1)[1]} {count / n:.2f}"
        for reason, count in reasons.most_common()
        if reason.startswith("skipped:")
    )
    return [
        f"  campaigns weighed per decision (mean): {considered / n:.1f}; trigger conditions "
        f"false {reasons['not_matched:trigger_conditions'] / n:.1f}, audience false "
        f"{reasons['not_matched:audience'] / n:.2f}, matched {matched / n:.2f}",
        f"    of the matched: planned {outcomes['planned'] / n:.2f}, held_out "
        f"{outcomes['held_out'] / n:.2f}, skipped {outcomes['skipped'] / n:.2f} ({skipped})",
        f"    events planning at least one send (or holdout): {planned_events / n:.0%}",
    ]


def _row(label: str, summary: Summary, rounds: Sequence[float] = (), note: str = "") -> str:
    spread = f"{min(rounds):>7.1f} - {max(rounds):<7.1f}" if rounds else " " * 17
    line = (
        f"  {label:<46} {summary.median:>8.1f} {summary.p95:>8.1f} {summary.p99:>8.1f}   {spread}"
    )
    return f"{line}  {note}".rstrip()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.decide",
        description="Time one decide() call against 200 generated active campaigns.",
    )
    parser.add_argument("--campaigns", type=int, default=200, help="active campaigns (200)")
    parser.add_argument("--events", type=int, default=2000, help="distinct events (2000)")
    parser.add_argument("--iterations", type=int, default=20_000, help="timed calls/line (20000)")
    parser.add_argument("--warmup", type=int, default=2000, help="untimed calls/line (2000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (10)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=None, help="keep the campaign files here")
    parser.add_argument("--profile", action="store_true", help="also run decide() under cProfile")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with workdir(args.out, "decide") as root:
        started = time.perf_counter()
        rules = load_bench_rules(root, args.seed, args.campaigns)
        load_seconds = time.perf_counter() - started
    cases = generate_cases(args.seed, args.events, [c.id for c in rules.campaigns], CUSTOMERS)
    calls = make_calls(cases)
    policy = Policy()  # the settings' defaults: 3 emails / 7 days, 1 campaign / event, quiet 21-08
    per_type: Counter[str] = Counter(
        compiled.campaign.trigger.event for compiled in rules.campaigns
    )
    event_mix: Counter[str] = Counter(call.event_type for call in calls)
    rounds = max(1, args.rounds)
    iterations = max(1, args.iterations // rounds) * rounds

    print("bench.decide: one triggers.decide.decide() call per event, 200 active campaigns")
    print(f"  {machine_line()}")
    print(
        f"  rule set: {len(rules.campaigns)} active campaigns "
        f"({', '.join(f'{per_type[t]} {t}' for t in EVENT_TYPES)}), seed {args.seed}, "
        f"written as YAML and loaded by load_rule_set in {load_seconds:.2f} s"
        + (f" (files kept in {args.out})" if args.out else "")
    )
    print(
        f"  events: {len(calls)} distinct ({', '.join(f'{event_mix[t]} {t}' for t in EVENT_TYPES)})"
        f" from {CUSTOMERS} customers with send histories; policy: Policy() defaults"
    )
    print(*workload_lines(rules, calls, policy), sep="\n")
    print(
        f"  method: {iterations} timed calls per line after {args.warmup} warm-up calls, in "
        f"{rounds} interleaved rounds; perf_counter_ns around each call (timer overhead "
        f"{timer_overhead_ns():.0f} ns); GC on"
    )

    main_measures: dict[str, Measure] = {
        "decide()  [facts prebuilt]": decide_measure(rules, calls, policy),
        "build_facts + decide()": facts_and_decide_measure(rules, cases, calls, policy),
        "floor: build_facts + iterate active_for(type)": floor_measure(rules, cases, calls),
        "build_facts alone": build_facts_measure(cases),
    }
    measures = main_measures
    samples, round_medians = run_interleaved(measures, args.warmup, iterations, rounds)
    summaries = {name: Summary.of_ns(values) for name, values in samples.items()}

    decide_name, full_name, floor_name = list(main_measures)[:3]
    only = summaries[decide_name]
    target = (
        f"target: median ≤ {TARGET_MEDIAN_US:.0f} µs -> "
        f"{verdict(only.median, TARGET_MEDIAN_US, inclusive=True)}"
    )
    print()
    header = f"  {'µs per decision':<46} {'median':>8} {'p95':>8} {'p99':>8}"
    print(f"{header}   {'round medians':^17}")
    for name in main_measures:
        note = target if name == decide_name else ""
        print(_row(name, summaries[name], round_medians[name], note))
    engine = summaries[full_name].median - summaries[floor_name].median
    print(f"  engine adds over the floor (difference of medians): {engine:.1f} µs per decision")

    print("  decide() by event type:")
    size = len(calls)
    decide_samples = samples[decide_name]
    for event_type in EVENT_TYPES:
        mine = [
            sample
            for position, sample in enumerate(decide_samples)
            if calls[(args.warmup + position) % size].event_type == event_type
        ]
        if mine:
            label = f"  {event_type} ({per_type[event_type]} campaigns, n={len(mine)})"
            print(_row(label, Summary.of_ns(mine)))

    print(
        f"  decide(): min {only.minimum:.1f} µs, max {only.maximum:.1f} µs, "
        f"mean {statistics.fmean(decide_samples) / 1000:.1f} µs"
    )

    if args.profile:
        profiler = cProfile.Profile()
        measure = measures[decide_name]
        profiler.enable()
        measure(0, min(iterations, 5000))
        profiler.disable()
        print(f"\n  cProfile of {min(iterations, 5000)} decide() calls (profiling inflates times):")
        print_profile(profiler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
