"""CPU seconds and memory of the benchmarked processes, read from Linux's ``/proc``.

A *group* is a named set of processes: one started command and its descendants (Celery's
prefork children), or processes found another way (the PostgreSQL backends serving the
bench database, the RabbitMQ node). A sampler thread reads every process of every group
every ``interval`` seconds, so that a process which exits mid-phase (a backend, a
recycled child) still counts with its last reading, and keeps an RSS series per group
for the soak.

Units: CPU in seconds (user + system, ``/proc/PID/stat`` fields 14-15 over
``SC_CLK_TCK``; a parent's reaped children, fields 16-17, are added to it), memory in
bytes (``VmRSS``; the peak is ``VmHWM``, the kernel's high-water mark). A PostgreSQL
backend's RSS includes the shared buffers it touched, so the group's figure is the
largest backend, not a sum.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Reading:
    cpu: float  # seconds, this process and its reaped children
    rss: int  # bytes
    peak_rss: int  # bytes


def read(pid: int) -> Reading | None:
    """One process's counters, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rsplit(b")", 1)[1].split()
    # After the command: state is field 3, so utime (14) is index 11.
    cpu = sum(int(value) for value in fields[11:15]) / _TICK
    rss = peak = 0
    for line in status.splitlines():
        if line.startswith(b"VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith(b"VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return Reading(cpu, rss, peak)


def children_of(roots: Iterable[int]) -> set[int]:
    """The roots and all their descendants alive now."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(parents.get(pid, ()))
    return found


def find_by_command(word: str, exclude: str = "") -> list[int]:
    """Processes whose command line contains ``word`` (and not ``exclude``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if word in command and not (exclude and exclude in command):
            pids.append(int(entry))
    return pids


@dataclass
class Group:
    """Processes counted together; ``members`` is asked for the current pids."""

    name: str
    members: Callable[[], set[int]]
    summed_rss: bool = True
    last: dict[int, Reading] = field(default_factory=dict)
    peak_rss: int = 0
    rss_series: list[tuple[float, int]] = field(default_factory=list)

    def sample(self, now: float) -> None:
        rss_now = []
        for pid in self.members():
            reading = read(pid)
            if reading is None:
                continue
            self.last[pid] = reading
            rss_now.append(reading.rss)
            self.peak_rss = max(self.peak_rss, reading.peak_rss)
        total = sum(rss_now) if self.summed_rss else max(rss_now, default=0)
        self.rss_series.append((now, total))

    def cpu(self) -> float:
        """CPU seconds of every process ever seen in the group (exited ones: last read)."""
        return sum(reading.cpu for reading in self.last.values())


class Sampler:
    """Samples every group every ``interval`` seconds on a daemon thread."""

    def __init__(self, groups: list[Group], interval: float = 1.0) -> None:
        self.groups = {group.name: group for group in groups}
        self.interval = interval
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="procstats", daemon=True)

    def add(self, group: Group) -> None:
        with self.lock:
            self.groups[group.name] = group

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        now = time.monotonic()
        with self.lock:
            for group in self.groups.values():
                group.sample(now)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu(self) -> dict[str, float]:
        """CPU seconds per group now (sampled first, so the figures are current)."""
        self.sample()
        with self.lock:
            return {name: group.cpu() for name, group in self.groups.items()}

    def peaks(self) -> dict[str, int]:
        with self.lock:
            return {name: group.peak_rss for name, group in self.groups.items()}


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving the database of ``url``, from
    ``/proc`` (so only for a server on this machine), found in ``pg_stat_activity``
    through ``admin_url``: a backend that starts meanwhile counts whole, one that exits
    with its last reading. ``used()`` is the total since construction."""

    def __init__(self, url: str, admin_url: str) -> None:
        from sqlalchemy import create_engine

        self._admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self._name = url.rsplit("/", 1)[1]
        self._start = self._readings()
        self._last = dict(self._start)

    def _readings(self) -> dict[int, float]:
        from sqlalchemy import text

        with self._admin.connect() as connection:
            pids = connection.scalars(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :name"),
                {"name": self._name},
            ).all()
        readings = {pid: read(pid) for pid in pids}
        return {pid: reading.cpu for pid, reading in readings.items() if reading is not None}

    def used(self) -> float:
        self._last.update(self._readings())
        self._admin.dispose()
        return sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._last.items())
