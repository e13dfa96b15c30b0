"""The file system closed to the pure core: ``triggers/`` is given text and reads no file.

Within :func:`closed_file_system`, ``open`` (``builtins.open`` and ``io.open``),
``os.listdir``, ``os.scandir``, ``Path.open``, ``Path.read_text`` and ``Path.read_bytes``
raise :class:`FileSystemClosed` for any path outside the Python installation. Reading
inside it stays allowed because libraries the core uses read the data they ship there
(``zoneinfo`` and ``tzdata`` time zones, ``babel`` locales, ``iso4217``'s currency table);
campaign files, templates, ``config/`` and temporary directories are all outside it.
Every refused attempt is also recorded, so one the code under test swallows (``except
Exception``) still fails the test.
"""

from __future__ import annotations

import builtins
import io
import os
import site
import sys
import zoneinfo
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class FileSystemClosed(AssertionError):
    """Code run in :func:`closed_file_system` touched a file outside the installation."""


def installation_roots() -> list[str]:
    """Where the interpreter, the installed packages and the system time zones live."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    roots |= set(zoneinfo.TZPATH)
    return sorted(os.path.realpath(root) for root in roots)


def _loaded_sources() -> set[str]:
    """The source files of the modules imported so far: reading those is the test
    machinery's (Hypothesis collects constants from local modules), not the core's."""
    return {
        os.path.realpath(path)
        for module in list(sys.modules.values())
        if isinstance(path := getattr(module, "__file__", None), str)
    }


@contextmanager
def closed_file_system(also_allowed: Iterable[str] = ()) -> Iterator[list[str]]:
    """Close the file system (outside ``installation_roots`` and ``also_allowed``) for the
    ``with`` block; yields the list of refused attempts, ``"function(path)"`` each."""
    roots = [*installation_roots(), *(os.path.realpath(path) for path in also_allowed)]
    attempts: list[str] = []

    def allowed(target: object) -> bool:
        if isinstance(target, int):  # an open descriptor: the test machinery's own
            return True
        if not isinstance(target, str | bytes | os.PathLike):
            return False
        where = os.path.realpath(os.fsdecode(target))
        if where.endswith(".py") and where in _loaded_sources():
            # Hypothesis reads the source of loaded local modules for constants to try.
            return True
        return any(where == root or where.startswith(root + os.sep) for root in roots)

    def guard(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(target: object = ".", *args: Any, **kwargs: Any) -> Any:
            if not allowed("." if target is None else target):
                attempts.append(f"{name}({target!r})")
                raise FileSystemClosed(f"the pure core may not use the file system: {name}")
            return original(target, *args, **kwargs)

        return guarded

    patched: list[tuple[object, str, object]] = [
        (builtins, "open", builtins.open),
        (io, "open", io.open),
        (os, "listdir", os.listdir),
        (os, "scandir", os.scandir),
        (Path, "open", Path.open),
        (Path, "read_text", Path.read_text),
        (Path, "read_bytes", Path.read_bytes),
    ]
    try:
        for owner, name, original in patched:
            label = f"{getattr(owner, '__name__', owner)}.{name}"
            setattr(owner, name, guard(label, original))  # type: ignore[arg-type]
        yield attempts
    finally:
        for owner, name, original in patched:
            setattr(owner, name, original)
