# -*- test-case-name: tests.test_store_maildir -*-
"""
The file-system operations the store uses, in one object, and the group
commit of directory fsyncs.

Every disk operation of L{gateway.store.maildir} goes through a
L{FileSystem}, so tests inject faults (an C{OSError} at the write, the
fsync, the link...) and observe the order of operations by passing their
own subclass, without monkeypatching.  The methods are thin and
stateless, hence safe to call from several threads at once.

L{DirSyncer} runs on the reactor thread: deliveries that have linked their
file into C{new/} ask it for an fsync of that directory, and the ones that
ask while an fsync of the same directory is running share the next one
(group commit).  A caller is answered only by an fsync that I{started}
after it asked, so nobody is told "stored" before its directory entry is
on disk.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class FileSystem:
    """The real file system."""

    def open_new(self, path: str) -> int:
        """Create a file that must not exist yet; return its descriptor."""
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                       0o600)

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def set_mtime(self, fd: int, seconds: float) -> None:
        os.utime(fd, (seconds, seconds))

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def link(self, source: str, target: str) -> None:
        os.link(source, target)

    def rename(self, source: str, target: str) -> None:
        os.rename(source, target)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o700)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, 0o700, exist_ok=True)

    def rmtree(self, path: str) -> None:
        shutil.rmtree(path)

    def open_read(self, path: str) -> IO[bytes]:
        return open(path, "rb")

    def write_marker(self, path: str) -> None:
        with open(path, "wb"):
            pass

    def lock(self, path: str) -> int | None:
        """An exclusive C{flock} on C{path} (created if missing), or C{None}
        if someone holds it.  The kernel drops it when the process dies."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def unlock(self, handle: int) -> None:
        os.close(handle)  # closing the descriptor releases the flock


@dataclass
class _Dir:
    running: bool = False
    waiting: list[Deferred[None]] = field(default_factory=list)


class DirSyncer:
    """
    Group commit of directory fsyncs (see the module docstring).

    @ivar fsyncs: how many directory fsyncs were started (for tests and
        benchmarks).
    """

    def __init__(self, run_in_thread: Callable[..., Deferred[Any]], fs: FileSystem) -> None:
        self._run = run_in_thread
        self._fs = fs
        self._dirs: dict[str, _Dir] = {}
        self.fsyncs = 0

    def sync(self, path: str) -> Deferred[None]:
        """@return: a L{Deferred} that fires once an fsync of C{path} that
        started after this call has completed."""
        state = self._dirs.setdefault(path, _Dir())
        d: Deferred[None] = Deferred()
        state.waiting.append(d)
        if not state.running:
            self._start(path, state)
        return d

    def _start(self, path: str, state: _Dir) -> None:
        batch, state.waiting = state.waiting, []
        state.running = True
        self.fsyncs += 1

        def done(result: object) -> None:
            # Still "running" while the batch is answered, so that a waiter
            # asking again from its callback queues for the next fsync.
            for d in batch:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
            state.running = False
            if state.waiting:
                self._start(path, state)
            else:
                del self._dirs[path]

        self._run(self._fs.fsync_dir, path).addBoth(done)
