"""Files written whole or not at all.

A reader (a mail pickup, a person opening an export) must never find half a file, and a
crash must not leave one behind, nor lose one already announced: the data goes to a
temporary file in the same directory (so the rename stays on one file system), is
flushed to disk, renamed over the target (``os.replace``, atomic on POSIX), and the
directory is flushed so that the new name survives a power cut too. ``mkstemp`` makes
the file mode 0600: what crosssell writes this way (emails, personal data exports) is
its owner's only.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path


def replace_whole(path: Path, data: bytes, *, suffix: str = ".tmp") -> None:
    """Write ``data`` to ``path`` atomically and durably, mode 0600; the directory must
    exist. Raises OSError as ``open`` and ``os.replace`` do (naming the directory when
    the temporary file cannot be made there); no temporary file is left."""
    try:
        # A short name of its own: the target's name may already be as long as names go.
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".crosssell-", suffix=suffix)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path.parent)) from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# Names that are another process's descriptors or a device, never files to replace:
# ``/dev/stdout`` (a link to ``/proc/self/fd/1``, whatever the shell redirected there),
# a shell's ``>(gzip > x.gz)`` (``/dev/fd/63``).
_STREAMS = ("/dev/", "/proc/")
_DIRECTORY_ENDS = (os.sep, f"{os.sep}.", f"{os.sep}..")


def write_output(name: str, data: bytes) -> None:
    """A command's output file, as the user typed its ``name``: a regular file, a link
    to one or a new path is replaced whole (:func:`replace_whole`, so mode 0600; its
    directory needs write permission), its directory made if missing. A name under
    ``/dev`` or ``/proc``, or anything else that exists and is not a regular file — a
    pipe, a device — is written into, appending (what the shell redirected
    ``/dev/stdout`` to keeps what it held, as if the command had printed).

    Raises IsADirectoryError for a name that can only be a directory's (empty, ending in
    ``/``, ``/.`` or ``/..``), NotADirectoryError when a directory on the way is a file,
    OSError(ELOOP) for a link that loops, and what ``open``, ``mkdir`` and
    ``os.replace`` raise."""
    if name in ("", ".", "..") or name.endswith(_DIRECTORY_ENDS):
        raise IsADirectoryError(errno.EISDIR, "a file name is needed, not a directory's", name)
    path = Path(name)
    try:
        regular = stat.S_ISREG(os.stat(name).st_mode)  # through links; ELOOP for a loop
    except (FileNotFoundError, NotADirectoryError):
        regular = True  # new, or a dangling link (made where it points); a file on the
        # way is named below
    if os.path.abspath(name).startswith(_STREAMS) or not regular:
        with path.open("ab") as stream:
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
