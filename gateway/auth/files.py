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
    A symbolic link is followed: its target is replaced, the link stays.
    """
    path = os.path.realpath(path)
    directory = os.path.dirname(path)
    fd, temp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            _keep_owner(f.fileno(), path)
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


def _keep_owner(fd: int, path: str) -> None:
    """Give C{fd} the owner and group of C{path}, when it exists and we may."""
    try:
        old = os.stat(path)
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (old.st_uid, old.st_gid):
            os.fchown(fd, old.st_uid, old.st_gid)
    except (FileNotFoundError, PermissionError):
        pass


def locked(path: str) -> Any:
    """An exclusive C{flock} on C{path + ".lock"} (a context manager)."""
    return _Lock(path + ".lock")


class _Lock:
    def __init__(self, path: str) -> None:
        self._path = path

    def __enter__(self) -> None:
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # The lock file belongs to whoever owns the file it guards: one
            # created by an admin running as root must still be opened by
            # the gateway (its OTP advances and SCRAM upgrades lock too).
            _keep_owner(self._fd, self._path.removesuffix(".lock"))
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self._fd)
            raise

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)  # closing releases the lock
