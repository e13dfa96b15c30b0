"""Progress for long commands, shown only to a person at a terminal.

``catalog import``, ``recommendations rebuild``, ``simulate`` and ``demo`` can take
minutes on a real shop. On a terminal they show a live, self-erasing progress line on
stderr (rich's ``Progress``); in a log file, a pipe or CI (stderr not a TTY) they print
nothing extra, so logs hold only the commands' own result lines.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

T = TypeVar("T")
Advance = Callable[[int], None]


def attached_to_terminal() -> bool:
    """Whether stderr (where progress goes) is a terminal."""
    return sys.stderr.isatty()


def _ignore(_: int) -> None:
    return None


@contextmanager
def progress(
    description: str,
    total: int | None = None,
    console: Console | None = None,
    counting: bool = False,
) -> Iterator[Advance]:
    """A progress line while the block runs; yields ``advance(n)``. ``total=None`` shows
    a spinner instead of a bar (with a running count if ``counting``). Does nothing
    unless stderr is a terminal (or a ``console`` is given, as tests do)."""
    if console is None:
        if not attached_to_terminal():
            yield _ignore
            return
        # Bound to the stream now: an embedded Celery worker later replaces sys.stderr
        # with a logging proxy, and the line must stay on the terminal.
        console = Console(file=sys.stderr)
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns.append(BarColumn())
    if total is not None:
        columns.append(MofNCompleteColumn())
    elif counting:
        columns.append(TextColumn("{task.completed}"))
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        yield advance


def tracked(
    items: Iterable[T], description: str, total: int | None = None, console: Console | None = None
) -> Iterator[T]:
    """``items`` unchanged, counted on a progress line as they are consumed."""
    with progress(description, total, console, counting=True) as advance:
        for item in items:
            yield item
            advance(1)
