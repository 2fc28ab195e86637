# -*- test-case-name: tests.test_store_maildir,tests.test_store_batch_faults -*-
"""
The file-system operations the store uses, in one object, the group
commit of directory fsyncs, and the grouping of work for worker threads.

Every disk operation of L{gateway.store.maildir} goes through a
L{FileSystem}, so tests inject faults (an C{OSError} at the write, the
fsync, the link...) and observe the order of operations by passing their
own subclass, without monkeypatching.  The methods are thin and
stateless, hence safe to call from several threads at once.

L{DirSyncer} and L{Batcher} run on the reactor thread.  Callers that have
linked a file into a directory ask L{DirSyncer} for an fsync of that
directory, and the ones that ask while an fsync of the same directory is
running share the next one (group commit).  A caller is answered only by an
fsync that I{started} after it asked, so nobody is told "stored" before its
directory entry is on disk.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure


def _find_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """C{sync_file_range(2)} from the C library (Linux only; the standard
    library does not offer it), or C{None}."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_sync_file_range = _find_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def call_in_thread(run_in_thread: Callable[..., Deferred[Any]], fn: Callable[..., Any],
                   *args: Any) -> Deferred[Any]:
    """
    C{run_in_thread(fn, *args)}, or a failed L{Deferred} where
    C{run_in_thread} raises (no thread to run it: the worker threads are
    stopping).  Callers then have one way to see a failure, and fail their
    waiters, release what they hold and undo, instead of leaving that
    undone half-way through a callback.
    """
    try:
        return run_in_thread(fn, *args)
    except Exception:
        return fail()


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

    def start_writeback(self, fd: int) -> None:
        """Ask the kernel to start writing the file's dirty pages, without
        waiting (Linux C{sync_file_range(SYNC_FILE_RANGE_WRITE)}; nothing
        elsewhere).  A hint: L{fsync} is what makes the file durable."""
        if _sync_file_range is not None:
            _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)

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

        call_in_thread(self._run, self._fs.fsync_dir, path).addBoth(done)


class Batcher:
    """
    Group work for worker threads: L{submit} hands one item to C{fn}, which
    runs in a worker thread on a list of items and returns, per item,
    C{(True, result)} or C{(False, Failure)}.  At most C{limit} calls run
    at once; items submitted while they all run wait, and go together into
    the next call (at most C{max_batch} of them: a batch of deliveries holds
    a descriptor per file).  Under light load every item starts at once; under heavy
    load there are fewer thread hand-offs (each costs the reactor a wake-up
    and a condition notify) and fewer threads competing for the GIL.
    """

    def __init__(self, run_in_thread: Callable[..., Deferred[Any]],
                 fn: Callable[[list[Any]], list[tuple[bool, Any]]], limit: int,
                 max_batch: int = 64) -> None:
        self._run = run_in_thread
        self._fn = fn
        self._limit = max(1, limit)
        self._max_batch = max(1, max_batch)
        self._waiting: list[tuple[Any, Deferred[Any]]] = []
        self.running = 0
        self.calls = 0  # worker calls started (for tests and benchmarks)

    def submit(self, item: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._waiting.append((item, d))
        if self.running < self._limit:
            self._start()
        return d

    def _start(self) -> None:
        batch = self._waiting[:self._max_batch]
        del self._waiting[:self._max_batch]
        self.running += 1
        self.calls += 1

        def done(results: list[tuple[bool, Any]] | Failure) -> None:
            self.running -= 1
            for i, (_, d) in enumerate(batch):
                if isinstance(results, Failure):
                    d.errback(results)
                elif results[i][0]:
                    d.callback(results[i][1])
                else:
                    d.errback(results[i][1])
            while self._waiting and self.running < self._limit:
                self._start()

        # No thread to run it (stopping): fail the batch, not hang it.
        call_in_thread(self._run, self._fn, [item for item, _ in batch]).addBoth(done)
