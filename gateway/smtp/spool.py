# -*- test-case-name: tests.test_smtp_spool,tests.test_smtp_server_review -*-
"""
The durable outbound spool: mail accepted for recipients elsewhere waits
here for the outbound queue.

Layout under C{state_dir/spool}::

    tmp/ID.eml  tmp/ID.json     being written
    new/ID.eml  new/ID.json     committed: the queue's input

One message is two files: the message as received (with our trace header)
and its envelope as JSON (C{{"version": 1, "id", "sender", "recipients",
"received"}}, and C{"dsn"} when the client gave DSN parameters: C{{"ret",
"envid", "recipients": {address: {"notify", "orcpt", "rcpt"}}}}).  Both
are written to C{tmp/} and fsynced, the message is
renamed into C{new/} first and the envelope last, and C{new/} is fsynced
(grouped with concurrent deliveries, L{gateway.store.fs.DirSyncer}) before
L{Spool.enqueue} fires: an envelope in C{new/} always has its message, and
nothing is acknowledged before both are on disk.  A message without an
envelope in C{new/} is a crash's leftover that was never acknowledged; the
queue removes it.

The names are the message's random queue id: a file already there (in
C{tmp/} another writer's, in C{new/} a committed entry) is never removed
or replaced; the enqueue fails instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from gateway.store.fs import DirSyncer, FileSystem


class Spool:
    def __init__(self, root: str, *, run_in_thread: Callable[..., Deferred[Any]],
                 clock: Any, fs: FileSystem | None = None) -> None:
        self.root = root
        self.fs = fs or FileSystem()
        self.clock = clock
        self._run = run_in_thread
        self.dirsync = DirSyncer(run_in_thread, self.fs)
        self._ready = False

    @property
    def new(self) -> str:
        return os.path.join(self.root, "new")

    def _prepare(self) -> None:
        for sub in ("tmp", "new"):
            self.fs.makedirs(os.path.join(self.root, sub))

    def _write(self, path: str, data: bytes, created: list[str]) -> None:
        """Write and fsync a new file; its name is added to C{created} once
        the file is ours (a file that was there before is another's)."""
        fd = self.fs.open_new(path)
        created.append(os.path.basename(path))
        try:
            self.fs.write(fd, data)
            self.fs.fsync(fd)
        finally:
            self.fs.close(fd)

    def _commit(self, queue_id: str, envelope: bytes, data: bytes) -> None:
        if not self._ready:
            self._prepare()
            self._ready = True
        tmp = os.path.join(self.root, "tmp")
        names = (f"{queue_id}.eml", f"{queue_id}.json")
        written: list[str] = []  # removed if anything below fails
        try:
            for name, content in zip(names, (data, envelope)):
                self._write(os.path.join(tmp, name), content, written)
            for name in names:
                # rename() would replace a committed entry of the same
                # (random) id without a word: never lose one.
                if self._exists(os.path.join(self.new, name)):
                    raise FileExistsError(f"spool entry {name} exists")
            for name in names:  # message first, envelope (the commit) last
                self.fs.rename(os.path.join(tmp, name), os.path.join(self.new, name))
                written.remove(name)
        finally:
            for name in written:
                try:
                    self.fs.unlink(os.path.join(tmp, name))
                except OSError:
                    pass

    def _exists(self, path: str) -> bool:
        try:
            self.fs.stat(path)
        except FileNotFoundError:
            return False
        return True

    def enqueue(self, sender: str, recipients: list[str], data: bytes,
                queue_id: str, dsn: dict[str, Any] | None = None) -> Deferred[str]:
        """
        @param dsn: the RFC 3461 parameters for the outbound queue
            (L{gateway.smtp.dsn.Settlement.spool}), kept as the envelope's
            optional C{"dsn"} member; an envelope without it (every one
            written before it existed) asked for nothing.
        @return: L{Deferred} firing with C{queue_id} once message and
            envelope are on disk (files and directory fsynced).
        """
        fields: dict[str, Any] = {
            "version": 1, "id": queue_id, "sender": sender,
            "recipients": list(recipients), "received": self.clock.seconds(),
        }
        if dsn is not None:
            fields["dsn"] = dsn
        envelope = json.dumps(fields).encode("utf-8")
        d = self._run(self._commit, queue_id, envelope, data)
        d.addCallback(lambda _: self.dirsync.sync(self.new))
        return d.addCallback(lambda _: queue_id)

    def pending(self) -> list[dict[str, Any]]:
        """The committed envelopes (for tests and the future queue); blocking."""
        out: list[dict[str, Any]] = []
        try:
            names = self.fs.listdir(self.new)
        except FileNotFoundError:
            return out
        for name in sorted(names):
            if name.endswith(".json"):
                with self.fs.open_read(os.path.join(self.new, name)) as f:
                    out.append(json.loads(f.read()))
        return out
