"""Atomic file writes that leave files with the permissions the umask gives.

A file is written under a temporary name beside its target and renamed, so an
interrupted write never leaves a partial file under the final name.  The temporary
file of `tempfile.mkstemp` is private (``0o600``); before the rename it gets the mode
an ordinary new file would get (``0o666`` less the process umask), so results in a
shared folder are as readable as any other file written there.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "current_umask"]


def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    Linux reports it in ``/proc/self/status``; elsewhere it is read by setting and
    restoring it (`os.umask`).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".part") -> Iterator[Path]:
    """A temporary path to write ``path`` through.

    The caller writes the file at the yielded path; when the block ends without an
    error the file gets mode ``0o666 & ~umask`` and replaces ``path``; on an error it
    is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : str or path-like
        The final file; its folder must exist.
    suffix : str
        Suffix of the temporary name (``.<name>.<random><suffix>`` in the same folder).

    Yields
    ------
    pathlib.Path
        The temporary file (exists, empty).
    """
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
