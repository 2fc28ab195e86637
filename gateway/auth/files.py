"""
Small files written whole and safely: the users file and the ban file.

L{atomic_write} replaces a file so that a reader (or a crash) sees the old
content or the new, never a mix; L{locked} serialises the read-modify-write
cycles of the gateway and the admin commands on one file.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable
from typing import Any


def atomic_write(path: str, data: bytes, *, fsync: Callable[[int], None] = os.fsync,
                 replace: Callable[[str, str], None] = os.replace) -> None:
    """
    Replace C{path} by C{data}: a 0600 temp file, write, fsync, rename, fsync
    dir.  The file keeps its owner and group when we may set them (an admin
    running as root must not make the users file unreadable to the gateway).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        try:
            old = os.stat(path)
            os.fchown(fd, old.st_uid, old.st_gid)
        except (FileNotFoundError, PermissionError):
            pass
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            fsync(f.fileno())
        replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fsync(dfd)
    finally:
        os.close(dfd)


def locked(path: str) -> Any:
    """An exclusive C{flock} on C{path + ".lock"} (a context manager)."""
    return _Lock(path + ".lock")


class _Lock:
    def __init__(self, path: str) -> None:
        self._path = path

    def __enter__(self) -> None:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)  # closing releases the lock
