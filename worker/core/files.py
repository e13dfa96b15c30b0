"""Files written whole or not at all.

A reader (a mail pickup, a person opening an export) must never find half a file, and a
crash must not leave one behind: the data goes to a temporary file in the same
directory (so the rename stays on one file system), is flushed to disk, and is renamed
over the target (``os.replace``, atomic on POSIX). ``mkstemp`` makes the file mode 0600:
what crosssell writes this way (emails, personal data exports) is its owner's only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_whole(path: Path, data: bytes, *, suffix: str = ".tmp") -> None:
    """Write ``data`` to ``path`` atomically, mode 0600; the directory must exist.
    Raises OSError as ``open`` and ``os.replace`` do; no temporary file is left."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_output(path: Path, data: bytes) -> None:
    """A command's output file: a regular file, a link to one or a new path is replaced
    whole (:func:`replace_whole`, so mode 0600), its directory made if missing; anything
    else that exists — a pipe, ``/dev/stdout``, a shell's ``>(gzip > x.gz)`` — is
    written into as it is (it cannot be replaced, and a reader waits on it)."""
    if path.exists() and not path.is_file():
        with path.open("wb") as stream:
            stream.write(data)
        return
    target = Path(os.path.realpath(path))  # through a link, to the file it names
    target.parent.mkdir(parents=True, exist_ok=True)
    replace_whole(target, data)
