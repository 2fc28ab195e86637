"""
Tests for L{gateway.store.maildir} beyond the contract: the layout on disk,
durability (the order of file-system operations, faults and crashes at
each step, group commit), UID stability, changes made by other programs,
two processes on one store, the POP3 lock across processes.
"""

from __future__ import annotations

import errno
import gc
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from gateway.store.fs import DirSyncer, FileSystem
from gateway.store.index import INDEX_FILE
from gateway.store.maildir import LOCK_FILE, MaildirStore
from gateway.store.model import MailboxInUse, StoreError
from tests.test_store_contract import ALICE, BOB, CRLF, MESSAGE, NOW, synchronous


class Crash(Exception):
    """The machine stopped: this operation and every later one fail."""


class FaultyFS(FileSystem):
    """
    The real file system, recording each operation as C{(op, path)}; it can
    fail one matching operation with C{EIO} (or another errno), or "crash"
    at the n-th operation.
    """

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.fault: tuple[str, str, int] | None = None
        self.crash_at: int | None = None
        self._paths: dict[int, str] = {}

    def _step(self, op: str, path: str) -> None:
        self.log.append((op, path))
        if self.crash_at is not None and len(self.log) > self.crash_at:
            raise Crash(op)
        if self.fault and self.fault[0] == op and self.fault[1] in path:
            code = self.fault[2]
            self.fault = None
            raise OSError(code, f"injected {op} failure")

    def ops(self, *names: str) -> list[tuple[str, str]]:
        return [entry for entry in self.log if entry[0] in names]

    def open_new(self, path: str) -> int:
        self._step("open_new", path)
        fd = super().open_new(path)
        self._paths[fd] = path
        return fd

    def write(self, fd: int, data: bytes) -> None:
        self._step("write", self._paths[fd])
        super().write(fd, data)

    def set_mtime(self, fd: int, seconds: float) -> None:
        self._step("set_mtime", self._paths[fd])
        super().set_mtime(fd, seconds)

    def fsync(self, fd: int) -> None:
        self._step("fsync", self._paths[fd])
        super().fsync(fd)

    def close(self, fd: int) -> None:
        path = self._paths.pop(fd)
        try:
            self._step("close", path)
        finally:
            super().close(fd)

    def fsync_dir(self, path: str) -> None:
        self._step("fsync_dir", path)
        super().fsync_dir(path)

    def link(self, source: str, target: str) -> None:
        self._step("link", target)
        super().link(source, target)

    def rename(self, source: str, target: str) -> None:
        self._step("rename", target)
        super().rename(source, target)

    def unlink(self, path: str) -> None:
        self._step("unlink", path)
        super().unlink(path)

    def listdir(self, path: str) -> list[str]:
        self._step("listdir", path)
        return super().listdir(path)

    def mkdir(self, path: str) -> None:
        self._step("mkdir", path)
        super().mkdir(path)


class ManualRunner:
    """A run_in_thread whose jobs run only when the test says so, in order."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self.ran: list[str] = []  # the names of the functions run, in order

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.queue.append((f, args, d))
        return d

    def run_one(self, slow: Callable[..., Any] | None = None) -> None:
        """Run the first job, or the first that is not C{slow} (a job that
        takes long, so that the others get ahead of it)."""
        at = next((i for i, job in enumerate(self.queue) if job[0] != slow), 0)
        f, args, d = self.queue.pop(at)
        self.ran.append(getattr(f, "__name__", ""))
        try:
            result = f(*args)
        except BaseException:
            d.errback()
        else:
            d.callback(result)

    def run_all(self, slow: Callable[..., Any] | None = None) -> None:
        while self.queue:
            self.run_one(slow)


class ThreadedRunner:
    """A run_in_thread with real threads; results come back to the test's
    thread (the "reactor") only when it calls L{pump}."""

    def __init__(self) -> None:
        self.results: queue.Queue[tuple[Deferred[Any], bool, Any]] = queue.Queue()
        self.pending = 0

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending += 1

        def work() -> None:
            try:
                self.results.put((d, True, f(*args)))
            except BaseException:
                self.results.put((d, False, Failure()))

        threading.Thread(target=work, daemon=True).start()
        return d

    def pump(self) -> None:
        while self.pending:
            d, ok, result = self.results.get(timeout=20)
            self.pending -= 1
            d.callback(result) if ok else d.errback(result)


class SlowRenames(FileSystem):
    """Renames take long: a window for a lost update, if the store had one."""

    def rename(self, source: str, target: str) -> None:
        time.sleep(0.05)
        super().rename(source, target)


def files(path: str) -> list[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


class MaildirTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.root = FilePath(self.mktemp()).path
        self.fs = FaultyFS()
        self.store = self.make_store()
        self.inbox = os.path.join(self.root, "example.org", "alice")

    def make_store(self, fs: FileSystem | None = None, **kw: Any) -> MaildirStore:
        kw.setdefault("run_in_thread", synchronous)
        store = MaildirStore(self.root, clock=self.clock, fs=fs or self.fs,
                             hostname="test.example", **kw)
        self.addCleanup(store.close)
        return store

    def ok(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(d)

    def open(self, name: str = "INBOX", store: MaildirStore | None = None,
             readonly: bool = False) -> Any:
        return self.ok((store or self.store).open_folder(ALICE, name, readonly))

    def make_account(self) -> None:
        self.ok(self.store.status(ALICE, "INBOX"))
        self.fs.log.clear()

    def leftovers(self) -> list[str]:
        return files(os.path.join(self.root, "tmp")) + files(os.path.join(self.inbox, "tmp"))


class LayoutTests(MaildirTestCase):
    def test_account_layout(self) -> None:
        self.make_account()
        self.assertEqual([e for e in files(self.inbox) if not e.startswith(INDEX_FILE + "-")],
                         [".Archive", ".Drafts", ".Junk", ".Sent", ".Trash", "cur",
                          INDEX_FILE, "new", "tmp"])
        self.assertEqual(files(os.path.join(self.inbox, ".Sent")),
                         ["cur", "maildirfolder", "new", "tmp"])
        self.assertEqual([e for e in files(os.path.join(self.root, "example.org"))
                          if e.startswith(".")], [])  # no staging directory left

    def test_folder_names_on_disk(self) -> None:
        self.ok(self.store.create_folder(ALICE, "Lists.2024/Grüße"))
        self.assertIn(".Lists&AC4-2024", files(self.inbox))
        self.assertIn(".Lists&AC4-2024.Gr&APwA3w-e", files(self.inbox))

    def test_delivered_file_name_and_content(self) -> None:
        self.ok(self.store.deliver([ALICE], MESSAGE))
        [name] = files(os.path.join(self.inbox, "new"))
        self.assertTrue(name.endswith(f".test.example,S={len(CRLF)},W={len(CRLF)}"), name)
        path = os.path.join(self.inbox, "new", name)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), CRLF)
        self.assertEqual(os.stat(path).st_mtime, NOW)

    def test_session_moves_new_to_cur_keeping_key(self) -> None:
        self.ok(self.store.deliver([ALICE], MESSAGE))
        [name] = files(os.path.join(self.inbox, "new"))
        self.open(readonly=True)
        self.assertEqual(files(os.path.join(self.inbox, "new")), [name])
        session = self.open()
        self.assertEqual(files(os.path.join(self.inbox, "new")), [])
        self.assertEqual(files(os.path.join(self.inbox, "cur")), [name + ":2,"])
        self.ok(session.set_flags([1], ["\\Seen", "\\Flagged", "$Forwarded"], "add"))
        self.assertEqual(files(os.path.join(self.inbox, "cur")), [name + ":2,FPS"])
        self.assertEqual(session.messages()[0].key, name)

    def test_same_message_linked_for_several_accounts(self) -> None:
        self.ok(self.store.deliver([ALICE, BOB], MESSAGE))
        [a] = files(os.path.join(self.inbox, "new"))
        bob = os.path.join(self.root, "example.org", "bob", "new", a)
        self.assertEqual(os.stat(bob).st_ino, os.stat(os.path.join(self.inbox, "new", a)).st_ino)
        self.assertEqual(os.stat(bob).st_nlink, 2)


class DurabilityTests(MaildirTestCase):
    def test_order_of_operations(self) -> None:
        """write, fsync the file, link into new/, fsync new/, and only then
        is the delivery acknowledged."""
        self.make_account()
        self.ok(self.store.create_folder(BOB, "x"))
        self.fs.log.clear()
        d = self.store.deliver([ALICE, BOB], MESSAGE)
        d.addCallback(lambda r: self.fs.log.append(("ack", str(r.stored))))
        self.ok(d)
        ops = [(op, path) for op, path in self.fs.log if op != "listdir"]
        names = [op for op, _ in ops]
        spool = ops[0][1]
        self.assertEqual(ops[:5], [("open_new", spool), ("write", spool), ("set_mtime", spool),
                                   ("fsync", spool), ("close", spool)])
        self.assertTrue(spool.startswith(os.path.join(self.root, "tmp")))
        links = [i for i, (op, _) in enumerate(ops) if op == "link"]
        syncs = [i for i, (op, p) in enumerate(ops) if op == "fsync_dir" and p.endswith("/new")]
        self.assertEqual(len(links), 2)
        self.assertEqual(len(syncs), 2)
        self.assertGreater(min(links), names.index("fsync"))
        self.assertGreater(min(syncs), max(links))
        self.assertEqual(names[-1], "ack")
        self.assertEqual(ops[-1], ("ack", str((ALICE, BOB))))
        self.assertEqual(self.leftovers(), [])

    def test_fault_at_each_step(self) -> None:
        """An error at any step: nothing visible, nothing acknowledged, no
        leftovers, and the store still works."""
        steps = [("open_new", "/tmp/"), ("write", "/tmp/"), ("set_mtime", "/tmp/"),
                 ("fsync", "/tmp/"), ("close", "/tmp/"), ("link", "/new/"),
                 ("fsync_dir", "/new")]
        for op, where in steps:
            self.make_account()
            self.fs.fault = (op, where, errno.EIO)
            report = self.ok(self.store.deliver([ALICE], MESSAGE))
            self.assertEqual(report.stored, (), op)
            self.assertTrue(report.refused[ALICE].temporary, op)
            self.assertEqual(report.refused[ALICE].code, 451)
            self.assertIsNone(self.fs.fault, f"{op} was not reached")
            self.assertEqual(files(os.path.join(self.inbox, "new")), [], op)
            self.assertEqual(self.ok(self.store.status(ALICE, "INBOX")).messages, 0, op)
            self.assertEqual(self.leftovers(), [], op)
        self.flushLoggedErrors(OSError)
        self.assertEqual(self.ok(self.store.deliver([ALICE], MESSAGE)).stored, (ALICE,))

    def test_fault_for_one_account_only(self) -> None:
        self.make_account()
        self.ok(self.store.usage(BOB))
        self.fs.fault = ("link", "/bob/new/", errno.EIO)
        report = self.ok(self.store.deliver([ALICE, BOB], MESSAGE))
        self.assertEqual(report.stored, (ALICE,))
        self.assertEqual(list(report.refused), [BOB])
        self.flushLoggedErrors(OSError)

    def test_session_fault_is_a_temporary_failure(self) -> None:
        """A disk error in a session call: a 451 for the protocol, the cause
        in the log, and the folder as it was."""
        self.ok(self.store.deliver([ALICE], MESSAGE))
        session = self.open()
        self.fs.fault = ("rename", "/cur/", errno.EIO)
        error = self.failureResultOf(session.set_flags([1], ["\\Seen"], "add"), StoreError)
        self.assertEqual((error.value.code, error.value.temporary), (451, True))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(session.messages()[0].flags, set())
        self.assertEqual(self.open().messages()[0].flags, set())
        [info] = self.ok(session.set_flags([1], ["\\Seen"], "add"))
        self.assertEqual(info.flags, {"\\Seen"})
        self.fs.fault = ("fsync_dir", "/cur", errno.EIO)
        self.failureResultOf(session.append(MESSAGE), StoreError)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(len(files(os.path.join(self.inbox, "cur"))), 1)  # no half APPEND

    def test_link_refused_falls_back_to_copy(self) -> None:
        self.make_account()
        self.fs.fault = ("link", "/new/", errno.EXDEV)
        self.assertEqual(self.ok(self.store.deliver([ALICE], MESSAGE)).stored, (ALICE,))
        [name] = files(os.path.join(self.inbox, "new"))
        path = os.path.join(self.inbox, "new", name)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), CRLF)
        self.assertEqual(os.stat(path).st_mtime, NOW)
        names = [op for op, _ in self.fs.log]
        self.assertLess(names.index("fsync", names.index("link")), names.index("rename"))
        self.assertEqual(self.leftovers(), [])

    def test_crash_at_each_step(self) -> None:
        """The machine stops at any step of a delivery: nothing was
        acknowledged; after a restart the message is absent or whole, and
        the recovery removes what tmp/ kept."""
        self.make_account()
        self.ok(self.store.deliver([ALICE], MESSAGE))
        self.fs.log.clear()
        self.ok(self.store.deliver([ALICE], b"probe\n"))
        steps = len(self.fs.log)
        self.assertGreater(steps, 6)
        for step in range(steps):
            self.root = FilePath(self.mktemp()).path
            self.inbox = os.path.join(self.root, "example.org", "alice")
            fs = FaultyFS()
            store = self.make_store(fs)
            self.ok(store.status(ALICE, "INBOX"))
            fs.log.clear()
            fs.crash_at = step
            acked: list[object] = []
            store.deliver([ALICE], MESSAGE).addBoth(acked.append)
            self.assertFalse(acked and getattr(acked[0], "stored", None), step)
            # After the restart, every tmp/ file counts as older than the
            # age limit (files are stamped by the wall clock: no faking it).
            restarted = MaildirStore(self.root, run_in_thread=synchronous, clock=self.clock,
                                     hostname="test.example", tmp_max_age=-1)
            self.addCleanup(restarted.close)
            session = self.ok(restarted.open_folder(ALICE, "INBOX"))
            for info in session.messages():
                f = self.ok(session.open_message(info.uid))
                self.assertEqual((f.read(), info.size), (CRLF, len(CRLF)), step)
                f.close()
            self.assertLessEqual(len(session.messages()), 1)
            self.ok(restarted.deliver([BOB], b"after\n"))  # recovers the spool
            self.assertEqual(self.leftovers(), [], step)
        self.flushLoggedErrors(Crash)


class GroupCommitTests(MaildirTestCase):
    def test_deliveries_share_directory_fsyncs(self) -> None:
        """Deliveries that arrive while others are written or committed are
        grouped: their files in one worker call, and the fsync of new/ and
        their UIDs in one commit; nobody is answered before a fsync of new/
        that followed its link."""
        runner = ManualRunner()
        self.store = self.make_store(run_in_thread=runner, writers=2)
        self.store.status(ALICE, "INBOX")
        runner.run_all()
        self.fs.log.clear()
        runner.ran.clear()
        results = []
        for i in range(6):
            self.store.deliver([ALICE], b"message %d\n" % i).addCallback(
                lambda r: (self.fs.log.append(("ack", "")), results.append(r)))
        # Commits are slow: the writers get ahead of them.
        runner.run_all(slow=self.store._commit_in_thread)
        self.assertEqual([r.stored for r in results], [(ALICE,)] * 6)
        # Two writers at once: the first two deliveries alone, then the four
        # that waited in one call.
        self.assertEqual(runner.ran.count("_write_deliveries"), 3)
        self.assertEqual(self.store.writer.calls, 3)
        # The first delivery's commit, then one for the five others.
        self.assertEqual(runner.ran.count("_commit_in_thread"), 2)
        syncs = [p for op, p in self.fs.log if op == "fsync_dir" and p.endswith("/new")]
        self.assertEqual(len(syncs), 2)
        durable, acks = 0, 0
        pending = 0
        for op, path in self.fs.log:
            if op == "link":
                pending += 1
            elif op == "fsync_dir" and path.endswith("/new"):
                durable, pending = durable + pending, 0
            elif op == "ack":
                acks += 1
                self.assertLessEqual(acks, durable)
        d = self.store.status(ALICE, "INBOX")
        runner.run_all()
        self.assertEqual(self.ok(d).messages, 6)
        d = self.store.open_folder(ALICE, "INBOX", True)
        runner.run_all()
        self.assertEqual([m.uid for m in self.ok(d).messages()], [1, 2, 3, 4, 5, 6])

    def test_dir_syncer(self) -> None:
        runner = ManualRunner()
        fs = FaultyFS()
        syncer = DirSyncer(runner, fs)
        path = self.mktemp()
        os.mkdir(path)
        first = syncer.sync(path)
        second, third = syncer.sync(path), syncer.sync(path)
        self.assertEqual(syncer.fsyncs, 1)
        runner.run_one()
        self.assertIsNone(self.successResultOf(first))
        self.assertNoResult(second)  # its fsync must start after it asked
        self.assertEqual(syncer.fsyncs, 2)
        fs.fault = ("fsync_dir", path, errno.EIO)
        runner.run_one()
        self.failureResultOf(second, OSError)
        self.failureResultOf(third, OSError)
        self.assertEqual((syncer.fsyncs, runner.queue), (2, []))

    def test_interleaved_flag_changes_lose_nothing(self) -> None:
        runner = ManualRunner()
        self.store = self.make_store(run_in_thread=runner)
        d = self.store.deliver([ALICE], MESSAGE)
        runner.run_all()
        self.ok(d)
        one, two = self.store.open_folder(ALICE, "INBOX"), self.store.open_folder(ALICE, "INBOX")
        runner.run_all()
        one, two = self.ok(one), self.ok(two)
        d1 = one.set_flags([1], ["\\Seen"], "add")
        d2 = two.set_flags([1], ["\\Flagged", "$A"], "add")
        d3 = one.set_flags([1], ["$B"], "add")
        self.assertNoResult(d1)
        runner.run_all()
        self.assertEqual(self.ok(d3)[0].flags, {"\\Seen", "\\Flagged", "$A", "$B"})
        self.ok(d1)
        self.ok(d2)
        [name] = files(os.path.join(self.inbox, "cur"))
        self.assertTrue(name.endswith(":2,FS"), name)


class ThreadTests(MaildirTestCase):
    def test_concurrent_flag_changes_in_threads(self) -> None:
        runner = ThreadedRunner()
        store = self.make_store(SlowRenames(), run_in_thread=runner)
        d = store.deliver([ALICE], MESSAGE)
        runner.pump()
        self.ok(d)
        sessions = [store.open_folder(ALICE, "INBOX") for _ in range(3)]
        runner.pump()
        changes = [self.ok(s).set_flags([1], [flag], "add") for s, flag in
                   zip(sessions, ["\\Seen", "\\Flagged", "\\Answered"])]
        runner.pump()
        for d in changes:
            self.ok(d)
        session = store.open_folder(ALICE, "INBOX")
        runner.pump()
        self.assertEqual(self.ok(session).messages()[0].flags,
                         {"\\Seen", "\\Flagged", "\\Answered"})
        [name] = files(os.path.join(self.inbox, "cur"))
        self.assertTrue(name.endswith(":2,FRS"), name)

    def test_concurrent_deliveries_in_threads(self) -> None:
        runner = ThreadedRunner()
        store = self.make_store(FileSystem(), run_in_thread=runner)
        reports = [store.deliver([ALICE, BOB], b"message %d\n" % i) for i in range(12)]
        runner.pump()
        self.assertEqual({self.ok(r).stored for r in reports}, {(ALICE, BOB)})
        session = store.open_folder(ALICE, "INBOX")
        runner.pump()
        messages = self.ok(session).messages()
        self.assertEqual([m.uid for m in messages], list(range(1, 13)))
        self.assertEqual(len({m.key for m in messages}), 12)


class UIDTests(MaildirTestCase):
    def test_uids_survive_restart(self) -> None:
        for i in range(3):
            self.ok(self.store.deliver([ALICE], b"message %d\n" % i))
        session = self.open()
        self.ok(session.set_flags([2], ["\\Seen", "$Kw"], "add"))
        before = session.messages()
        self.ok(self.store.close())
        store = self.make_store(FileSystem())
        again = self.open(store=store)
        self.assertEqual((again.uidvalidity, again.messages()), (session.uidvalidity, before))
        self.assertEqual(again.recent, frozenset())
        self.ok(store.deliver([ALICE], MESSAGE))
        self.assertEqual([m.uid for m in self.ok(again.sync()).added], [4])

    def test_uids_survive_renames_by_other_programs(self) -> None:
        for i in range(2):
            self.ok(self.store.deliver([ALICE], b"message %d\n" % i))
        session = self.open(readonly=True)
        keys = [m.key for m in session.messages()]
        new, cur = os.path.join(self.inbox, "new"), os.path.join(self.inbox, "cur")
        os.rename(os.path.join(new, keys[0]), os.path.join(cur, keys[0] + ":2,RS"))
        os.rename(os.path.join(new, keys[1]), os.path.join(cur, keys[1] + ":2,"))
        changes = self.ok(session.sync())
        self.assertEqual([(m.uid, m.flags) for m in changes.flags],
                         [(1, {"\\Answered", "\\Seen"})])
        self.assertEqual((changes.added, changes.expunged), ((), ()))
        self.assertEqual([m.key for m in session.messages()], keys)

    def test_uidvalidity_changes_only_when_index_lost(self) -> None:
        for i in range(2):
            self.ok(self.store.deliver([ALICE], b"message %d\n" % i, internal_date=NOW + i))
        first = self.open().uidvalidity
        self.ok(self.store.close())
        self.assertEqual(self.open(store=self.make_store()).uidvalidity, first)
        for name in files(self.inbox):
            if name.startswith(INDEX_FILE):
                os.unlink(os.path.join(self.inbox, name))
        self.clock.advance(10)
        session = self.open(store=self.make_store())
        self.assertNotEqual(session.uidvalidity, first)
        self.assertEqual([m.uid for m in session.messages()], [1, 2])
        self.assertEqual(self.ok(session.open_message(2)).read(), b"message 1\r\n")

    def test_maildir_without_index(self) -> None:
        """A Maildir written by another program: UIDs in arrival order."""
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(self.inbox, sub))
        for name, when, body in [("b-first", 100, b"one\n"), ("a-second:2,S", 200, b"two\r\n")]:
            sub = "cur" if ":2," in name else "new"
            path = os.path.join(self.inbox, sub, name)
            with open(path, "wb") as f:
                f.write(body)
            os.utime(path, (when, when))
        session = self.open()
        self.assertEqual([(m.key, m.size, m.internal_date, m.flags) for m in session.messages()],
                         [("b-first", 5, 100, set()), ("a-second", 5, 200, {"\\Seen"})])
        self.assertEqual(self.ok(session.open_message(1)).read(), b"one\r\n")
        self.assertEqual([f.name for f in self.ok(self.store.folders(ALICE))], ["INBOX"])


class ExternalChangeTests(MaildirTestCase):
    def test_changes_by_another_program(self) -> None:
        self.ok(self.store.deliver([ALICE], MESSAGE))
        session = self.open()
        calls: list[None] = []
        session.on_change(lambda: calls.append(None))
        with open(os.path.join(self.inbox, "new", "external.1"), "wb") as f:
            f.write(b"Subject: x\n\nbare LF\n")
        self.clock.advance(1)  # the poll finds it
        self.assertEqual(len(calls), 1)
        [added] = self.ok(session.sync()).added
        self.assertEqual((added.uid, added.key, added.size), (2, "external.1", 23))
        self.assertEqual(self.ok(session.open_message(2)).read(), b"Subject: x\r\n\r\nbare LF\r\n")
        [name] = [n for n in files(os.path.join(self.inbox, "cur")) if not n.startswith("ext")]
        os.rename(os.path.join(self.inbox, "cur", name),
                  os.path.join(self.inbox, "cur", name + "FT"))
        self.clock.advance(1)
        self.assertEqual(len(calls), 2)
        self.assertEqual([(m.uid, m.flags) for m in self.ok(session.sync()).flags],
                         [(1, {"\\Flagged", "\\Deleted"})])
        os.unlink(os.path.join(self.inbox, "cur", "external.1:2,"))
        self.clock.advance(1)
        self.assertEqual(len(calls), 3)
        self.assertEqual(self.ok(session.sync()).expunged, (2,))
        self.clock.advance(1)
        self.assertEqual(len(calls), 3)  # nothing new, nobody disturbed

    def test_unchanged_folder_is_not_listed(self) -> None:
        for i in range(3):
            self.ok(self.store.deliver([ALICE], b"message %d\n" % i))
        session = self.open()
        past = time.time_ns() - 100 * 10**9
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.inbox, sub), ns=(past, past))
        self.ok(session.sync())  # lists once, remembers settled mtimes
        self.fs.log.clear()
        self.ok(session.sync())
        self.ok(self.store.status(ALICE, "INBOX"))
        self.assertEqual(self.fs.ops("listdir", "open_new"), [])
        self.ok(self.store.deliver([ALICE], MESSAGE))
        self.fs.log.clear()
        self.ok(session.sync())
        self.assertEqual(self.fs.ops("listdir"), [("listdir", os.path.join(self.inbox, "new"))])

    def test_deleted_folder_behind_our_back(self) -> None:
        self.ok(self.store.create_folder(ALICE, "Gone"))
        session = self.open("Gone")
        self.ok(session.append(MESSAGE))
        self.ok(session.sync())
        import shutil
        shutil.rmtree(os.path.join(self.inbox, ".Gone"))
        self.assertEqual(self.ok(session.sync()).expunged, (1,))
        self.failureResultOf(session.open_message(1), StoreError)


class TwoProcessTests(MaildirTestCase):
    def test_two_stores_on_one_directory(self) -> None:
        """Two gateway processes (two store objects, two index connections)
        agree on UIDs and see each other's changes."""
        other = self.make_store(FileSystem())
        self.ok(self.store.deliver([ALICE], MESSAGE))
        theirs = self.open(store=other)
        calls: list[None] = []
        theirs.on_change(lambda: calls.append(None))
        self.ok(self.store.deliver([ALICE], MESSAGE))
        mine = self.open()
        self.ok(mine.set_flags([1], ["\\Seen", "$Mine"], "add"))
        self.clock.advance(1)
        self.assertTrue(calls)
        changes = self.ok(theirs.sync())
        self.assertEqual([m.uid for m in changes.added], [2])
        self.assertEqual([(m.uid, m.flags) for m in changes.flags], [(1, {"\\Seen", "$Mine"})])
        self.ok(other.deliver([ALICE], MESSAGE))
        self.assertEqual([m.uid for m in self.ok(mine.sync()).added], [3])


class LockTests(MaildirTestCase):
    def test_lock_held_by_another_process(self) -> None:
        self.make_account()
        script = ("import fcntl, os, sys, time\n"
                  "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                  "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                  "print('locked', flush=True)\n"
                  "time.sleep(60)\n")
        child = subprocess.Popen([sys.executable, "-c", script,
                                  os.path.join(self.inbox, LOCK_FILE)], stdout=subprocess.PIPE)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        self.assertEqual(child.stdout.readline(), b"locked\n")  # type: ignore[union-attr]
        self.failureResultOf(self.store.lock_pop3(ALICE), MailboxInUse)
        child.kill()  # the session is lost with its process
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        self.ok(self.store.lock_pop3(ALICE))

    def test_lock_released_when_forgotten(self) -> None:
        release = self.ok(self.store.lock_pop3(ALICE))
        self.failureResultOf(self.store.lock_pop3(ALICE), MailboxInUse)
        del release
        gc.collect()
        self.assertTrue(callable(self.ok(self.store.lock_pop3(ALICE))))

    def test_polling_only_while_sessions_or_indexes_are_open(self) -> None:
        session = self.open()
        self.assertTrue(self.store._poller.running)
        self.ok(session.close())
        self.clock.advance(60)  # the index is closed when idle (tests.test_store_idle)
        self.clock.advance(1)
        self.assertFalse(self.store._poller.running)
        self.failureResultOf(session.sync(), RuntimeError)


class OpenMessageTests(MaildirTestCase):
    """open_message's unlocked fast path, and its fallback when a file moved."""

    def test_reads_without_the_account_lock(self) -> None:
        self.ok(self.store.deliver([ALICE], MESSAGE))
        session = self.open()
        uid = session.messages()[0].uid
        with self.ok(session.open_message(uid)) as f:
            self.assertEqual(f.read(), self.ok(session.read_message(uid)))

    def test_file_moved_by_another_program(self) -> None:
        self.ok(self.store.deliver([ALICE], MESSAGE))
        session = self.open()
        uid = session.messages()[0].uid
        with self.ok(session.open_message(uid)) as f:
            before = f.read()
        # Another Maildir program marks it seen: the file is renamed.
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(self.inbox, sub)):
                base = name.split(":2,")[0]
                os.rename(os.path.join(self.inbox, sub, name),
                          os.path.join(self.inbox, "cur", base + ":2,S"))
        with self.ok(session.open_message(uid)) as f:
            self.assertEqual(f.read(), before)

    def test_read_messages_leaves_out_an_unreadable_file(self) -> None:
        """One file that cannot be read (permissions, EIO) does not fail the
        batch: the others are read, and read_message, asked for it alone,
        says what is wrong."""
        for n in range(3):
            self.ok(self.store.deliver([ALICE], MESSAGE + b"%d\n" % n))
        session = self.open()
        uids = [info.uid for info in session.messages()]
        bad = os.path.basename(self.ok(session.open_message(uids[1])).name).split(":")[0]
        real = self.store.fs.open_read

        def open_read(path: str) -> Any:
            if bad in path:
                raise PermissionError(errno.EACCES, "injected", path)
            return real(path)

        self.store.fs.open_read = open_read  # type: ignore[method-assign]
        found = self.ok(session.read_messages(uids))
        self.assertEqual(sorted(found), [uids[0], uids[2]])
        self.assertTrue(found[uids[2]].endswith(b"2\r\n"))
        self.failureResultOf(session.read_message(uids[1]), PermissionError)
