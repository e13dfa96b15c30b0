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
    description: str, total: int | None = None, console: Console | None = None
) -> Iterator[Advance]:
    """A progress line while the block runs; yields ``advance(n)``. ``total=None`` shows
    a spinner and a count instead of a bar. Does nothing unless stderr is a terminal
    (or a ``console`` is given, as tests do)."""
    if console is None:
        if not attached_to_terminal():
            yield _ignore
            return
        console = Console(stderr=True)
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns.append(BarColumn())
    columns += [MofNCompleteColumn() if total is not None else TextColumn("{task.completed}")]
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
    with progress(description, total, console) as advance:
        for item in items:
            yield item
            advance(1)
