"""Files written whole or not at all.

A reader (a mail pickup, a person opening an export) must never find half a file, and a
crash must not leave one behind: the data goes to a temporary file in the same
directory (so the rename stays on one file system), is flushed to disk, and is renamed
over the target (``os.replace``, atomic on POSIX). ``mkstemp`` makes the file mode 0600:
what crosssell writes this way (emails, personal data exports) is its owner's only.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def replace_whole(path: Path, data: bytes, *, suffix: str = ".tmp") -> None:
    """Write ``data`` to ``path`` atomically, mode 0600; the directory must exist.
    Raises OSError as ``open`` and ``os.replace`` do; no temporary file is left."""
    # A short name of its own: the target's name may already be as long as names go.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".crosssell-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_output(name: str, data: bytes) -> None:
    """A command's output file, as the user typed its ``name``: a regular file, a link
    to one or a new path is replaced whole (:func:`replace_whole`, so mode 0600; its
    directory needs write permission), its directory made if missing; anything else
    that exists — a pipe, ``/dev/stdout``, a shell's ``>(gzip > x.gz)`` — is written into
    as it is (it cannot be replaced, and a reader waits on it).

    Raises IsADirectoryError for an empty name or one ending in ``/`` (a directory's),
    NotADirectoryError when a directory on the way is a file, and what ``open``,
    ``mkdir`` and ``os.replace`` raise."""
    if not name or name.endswith(os.sep):
        raise IsADirectoryError(errno.EISDIR, "a file name is needed, not a directory's", name)
    path = Path(name)
    if path.exists() and not path.is_file():
        with path.open("wb") as stream:
            stream.write(data)
        return
    target = Path(os.path.realpath(path))  # through a link, to the file it names
    for directory in target.parents:
        if directory.exists():
            if not directory.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory))
            break
    target.parent.mkdir(parents=True, exist_ok=True)
    replace_whole(target, data)
