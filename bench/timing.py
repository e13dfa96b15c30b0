"""Small, dependency-free helpers shared by the benchmarks: percentiles and reporting."""

from __future__ import annotations

import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def percentile(sorted_values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (p99 of 20 000 = 19 800th)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, -(-len(sorted_values) * percent // 100))  # ceil without floats drifting
    return sorted_values[int(rank) - 1]


@dataclass(frozen=True, slots=True)
class Summary:
    """Distribution of per-call times, in microseconds."""

    count: int
    median: float
    p95: float
    p99: float
    minimum: float
    maximum: float

    @classmethod
    def of_ns(cls, samples_ns: Sequence[int]) -> Summary:
        values = sorted(sample / 1000 for sample in samples_ns)
        return cls(
            count=len(values),
            median=statistics.median(values),
            p95=percentile(values, 95),
            p99=percentile(values, 99),
            minimum=values[0],
            maximum=values[-1],
        )


def timer_overhead_ns(rounds: int = 20_000) -> float:
    """Median cost of an empty ``perf_counter_ns`` pair: the resolution floor of a sample."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(rounds):
        start = clock()
        samples.append(clock() - start)
    return statistics.median(samples)


def machine_line() -> str:
    cpus = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = cpus
    try:
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        load = "unknown"
    return (
        f"Python {platform.python_version()} ({platform.python_implementation()}) on "
        f"{platform.system()} {platform.machine()}, {cpus} CPUs ({usable} usable), "
        f"load average {load} at start"
    )


def verdict(value: float, limit: float, inclusive: bool) -> str:
    met = value <= limit if inclusive else value < limit
    return "met" if met else "MISSED"


def print_profile(profiler: cProfile.Profile, limit: int = 25) -> None:
    """Top functions by own time, then by cumulative time."""
    for order in ("tottime", "cumulative"):
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer)
        stats.strip_dirs().sort_stats(order).print_stats(limit)
        print(f"\n--- cProfile, top {limit} by {order} ---")
        print(buffer.getvalue().split("\n", 4)[-1].rstrip())
    sys.stdout.flush()


@contextmanager
def workdir(out: Path | None, label: str) -> Iterator[Path]:
    """``out`` when given (files kept for inspection), else a temporary directory."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        yield out
        return
    with tempfile.TemporaryDirectory(prefix=f"crosssell-bench-{label}-") as name:
        yield Path(name)
