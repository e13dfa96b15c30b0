"""Sampling profiles of the stack's processes under the bench load, with py-spy.

``python -m bench.stack --profile DIR`` runs ``py-spy record --format raw`` (collapsed
stacks: ``frame;frame;… count`` per line) on the consumer and each Celery worker (with
``--subprocesses`` for prefork children) during a burst of its own, of the same size,
after the measured ones (sampling costs CPU the figures must not pay), and summarises each profile
here (samples holding the GIL only, so waiting on PostgreSQL or a socket is not counted):
the share of samples whose stack passes through each library (inclusive, so the
shares overlap: SQLAlchemy calling psycopg counts for both), and the functions with the
most samples of their own (the leaf frame). py-spy is not a dependency: ``pip install
py-spy`` into the venv; without it ``--profile`` says so and the bench goes on without
the profiled burst. It reads
another process's memory, which needs ptrace permission (root, or
``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# Library buckets: a sample counts for a bucket when one of its frames' file (py-spy
# prints ``function (package/module.py:line)``) starts with the marker.
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SQLAlchemy", ("(sqlalchemy/", "(<sqlalchemy")),
    ("psycopg (driver)", ("(psycopg/", "(psycopg_pool/")),
    ("Celery", ("(celery/", "(billiard/")),
    ("kombu / amqp (broker client)", ("(kombu/", "(amqp/")),
    ("Jinja (templates)", ("(jinja2/",)),
    ("rendering (worker/email/rendering.py, CSS inlining inside)", ("(worker/email/rendering.py",)),
    ("MIME build (worker/email/mime.py)", ("(worker/email/mime.py",)),
    ("smtplib", ("(smtplib.py",)),
    ("pydantic (validation)", ("(pydantic/", "(pydantic_core/")),
    ("rules engine (triggers/)", ("(triggers/",)),
    ("logging", ("(logging/",)),
)


def py_spy() -> str | None:
    """The py-spy executable next to this Python, or on the PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@dataclass
class Recording:
    name: str
    output: Path
    process: subprocess.Popen[bytes]


def start(name: str, pid: int, directory: Path, subprocesses: bool) -> Recording | None:
    executable = py_spy()
    if executable is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / f"{name}.txt"
    # --gil: only samples holding the GIL, i.e. running Python, not waiting on a socket.
    command = [
        executable, "record", "--pid", str(pid), "--gil", "--format", "raw", "-o", str(output),
    ]  # fmt: skip
    if subprocesses:
        command.append("--subprocesses")
    log = (directory / f"{name}.py-spy.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return Recording(name, output, process)


def stop(recording: Recording) -> None:
    """py-spy writes its file when interrupted."""
    recording.process.send_signal(signal.SIGINT)
    try:
        recording.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        recording.process.kill()
        recording.process.wait()


def summarise(path: Path, top: int = 12) -> list[str]:
    """Text lines: total samples, the share per library, the top leaf functions."""
    if not path.exists():
        return [f"  {path.name}: no profile written (see its .py-spy.log)"]
    totals: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        for bucket, marker in BUCKETS:
            if any(m in frame for frame in frames for m in marker):
                totals[bucket] += count
        leaves[frames[-1]] += count
    if not samples:
        return [f"  {path.stem}: no samples"]
    lines = [f"  {path.stem}: {samples:,} samples; share of samples by library (inclusive):"]
    for bucket, _ in BUCKETS:
        if totals[bucket]:
            lines.append(f"    {totals[bucket] * 100 / samples:5.1f} %  {bucket}")
    lines.append(f"  {path.stem}: top {top} functions by own samples:")
    for frame, count in leaves.most_common(top):
        lines.append(f"    {count * 100 / samples:5.1f} %  {frame[:110]}")
    return lines
