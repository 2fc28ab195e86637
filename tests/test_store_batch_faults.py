"""
Faults in one member of a group: deliveries whose files are written by
one worker call (L{gateway.store.fs.Batcher},
L{gateway.store.durable.Disk.deliver_files}) and committed together (the
fsync of C{new/} and the index transaction of
L{gateway.store.maildir.MaildirStore._commit_in_thread}), APPENDs sharing
a directory fsync (L{gateway.store.fs.DirSyncer}), and the worker threads
stopping in the middle.

What each test checks, for the member that fails and for the others: a
delivery is acknowledged only once durable; a failed one leaves nothing in
C{new/} (or, where the undo itself fails, is never acknowledged and is
indexed consistently later); every L{Deferred} fires once; nothing is left
stuck (writer calls, commits, quota reservations) for later deliveries.
"""

from __future__ import annotations

import errno
import gc
import os
import sqlite3
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from gateway.store.durable import Disk
from gateway.store.fs import DirSyncer, FileSystem
from gateway.store.maildir import MaildirStore
from gateway.store.model import DeliveryReport, Quota, QuotaExceeded, StoreError
from tests.test_store_contract import ALICE, BOB, synchronous
from tests.test_store_maildir import FaultyFS, MaildirTestCase, ManualRunner, files

STOPPED = "the worker threads are stopped"


class FaultsFS(FaultyFS):
    """
    L{FaultyFS} with several faults at once, each C{(op, path part, errno,
    skip)}: the C{skip}+1-th matching operation fails (so a test can hit
    the second member of a batch).  Also records C{start_writeback}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.faults: list[list[Any]] = []

    def add(self, op: str, where: str, code: int = errno.EIO, skip: int = 0) -> None:
        self.faults.append([op, where, code, skip])

    def _step(self, op: str, path: str) -> None:
        super()._step(op, path)
        for fault in self.faults:
            if fault[0] == op and fault[1] in path:
                if fault[3]:
                    fault[3] -= 1
                    continue
                self.faults.remove(fault)
                raise OSError(fault[2], f"injected {op} failure")

    def start_writeback(self, fd: int) -> None:
        self._step("start_writeback", self._paths[fd])
        super().start_writeback(fd)


class StoppingRunner(ManualRunner):
    """
    A L{ManualRunner} whose threads can be stopped: what was queued before
    still runs (as with L{gateway.service.ThreadRunner}); a later call fails
    its L{Deferred} (the service's runner) or, with C{raising}, raises (which
    the store also accepts of a C{run_in_thread}).
    """

    def __init__(self, raising: bool = False) -> None:
        super().__init__()
        self.raising = raising
        self.stopped = False

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        if self.stopped:
            if self.raising:
                raise RuntimeError(STOPPED)
            return fail(RuntimeError(STOPPED))
        return super().__call__(f, *args)


class IndexFailsOnce(MaildirStore):
    """The index transaction of the next indexing raises (SQLite's I/O error)."""

    broken = True

    def index_rows(self, *args: Any) -> list[int]:
        if self.broken:
            self.broken = False
            raise sqlite3.OperationalError("disk I/O error")
        return super().index_rows(*args)


def crlf(message: bytes) -> bytes:
    return message.replace(b"\n", b"\r\n")


class BatchFaultCase(MaildirTestCase):
    fs: FaultsFS

    def setUp(self) -> None:
        super().setUp()
        self.fs = FaultsFS()
        self.bob = os.path.join(self.root, "example.org", "bob")

    def open_store(self, accounts: tuple[str, ...] = (ALICE,), runner: ManualRunner | None = None,
                   cls: type[MaildirStore] = MaildirStore, **kw: Any
                   ) -> tuple[MaildirStore, ManualRunner]:
        """A store with one writer and the Maildirs of C{accounts} open (so
        that their deliveries take the grouped path)."""
        runner = runner or ManualRunner()
        store = cls(self.root, clock=self.clock, fs=self.fs, hostname="test.example",
                    run_in_thread=runner, writers=1, **kw)
        self.addCleanup(store.close)
        opened = [store.status(account, "INBOX") for account in accounts]
        runner.run_all()
        for d in opened:
            self.successResultOf(d)
        return store, runner

    def group(self, store: MaildirStore, runner: ManualRunner, accounts: list[str],
              count: int = 3) -> tuple[Deferred[Any], list[Deferred[Any]]]:
        """Deliver "zero" to ALICE, which takes the only writer, and
        C{count} messages to C{accounts}, which wait and are written by one
        worker call; run "zero"'s file work.  The queue then holds "zero"'s
        commit and the group's file work."""
        first = store.deliver([ALICE], b"zero\n")
        waiting = [store.deliver(accounts, b"message %d\n" % i) for i in range(count)]
        runner.run_one()
        self.assertEqual(sorted(job[0].__name__ for job in runner.queue),
                         ["_commit_in_thread", "_write_deliveries"])
        return first, waiting

    def spool_path(self, store: MaildirStore, n: int) -> str:
        """The spool file of the n-th file written by C{store} (from 1)."""
        return os.path.join(self.root, "tmp", f"{store.disk._prefix}.{n}")

    def contents(self, directory: str) -> set[bytes]:
        found = set()
        for name in files(directory):
            with open(os.path.join(directory, name), "rb") as f:
                found.add(f.read())
        return found

    def report(self, d: Deferred[Any]) -> DeliveryReport:
        report = self.successResultOf(d)
        assert isinstance(report, DeliveryReport)
        return report

    def assert_refused(self, d: Deferred[Any], account: str, stored: tuple[str, ...] = ()) -> None:
        report = self.report(d)
        self.assertEqual(report.stored, stored)
        self.assertEqual((report.refused[account].code, report.refused[account].temporary),
                         (451, True))

    def assert_not_stuck(self, store: MaildirStore, runner: ManualRunner,
                         accounts: tuple[str, ...] = (ALICE,)) -> None:
        """Nothing is left running or waiting, and a new delivery works."""
        self.assertEqual((store.writer.running, store.writer._waiting), (0, []))
        for name in accounts:
            acct = store._accounts[name]
            self.assertEqual((acct.committing, acct.arrivals, acct.lock.locked, acct.pending),
                             (False, [], False, [0, 0]))
        d = store.deliver(list(accounts), b"later\n")
        runner.run_all()
        self.assertEqual(self.report(d).stored, accounts)

    def count(self, store: MaildirStore, runner: ManualRunner, account: str = ALICE) -> int:
        d = store.status(account, "INBOX")
        runner.run_all()
        return int(self.successResultOf(d).messages)


class WriteFaultTests(BatchFaultCase):
    def test_fault_in_the_middle_member_of_a_batch(self) -> None:
        """ENOSPC or EIO at any step of writing the second of three files
        written together: that delivery alone is refused, its spool file
        removed, the others stored; later deliveries still work."""
        steps = [("open_new", errno.ENOSPC), ("write", errno.ENOSPC), ("set_mtime", errno.EIO),
                 ("start_writeback", errno.EIO), ("fsync", errno.EIO), ("close", errno.EIO)]
        for op, code in steps:
            self.root = FilePath(self.mktemp()).path
            self.inbox = os.path.join(self.root, "example.org", "alice")
            self.fs = FaultsFS()
            store, runner = self.open_store()
            first, waiting = self.group(store, runner, [ALICE])
            self.fs.add(op, self.spool_path(store, 3), code)  # message 1's file
            runner.run_all()
            self.assertEqual(self.fs.faults, [], f"{op} was not reached")
            self.assertEqual(self.report(first).stored, (ALICE,))
            self.assert_refused(waiting[1], ALICE)
            self.assertEqual([self.report(waiting[i]).stored for i in (0, 2)], [(ALICE,)] * 2)
            self.assertEqual(self.contents(os.path.join(self.inbox, "new")),
                             {crlf(b"zero\n"), crlf(b"message 0\n"), crlf(b"message 2\n")}, op)
            self.assertEqual(self.leftovers(), [], op)
            self.assertEqual(self.count(store, runner), 3, op)
            self.assert_not_stuck(store, runner)
            self.assertEqual(self.count(store, runner), 4, op)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), len(steps))

    def test_naming_failure_leaves_no_spool_file(self) -> None:
        """A job that fails after its file is spooled and fsynced (here:
        naming it) fails alone, and its spool file is removed."""
        new = FilePath(self.mktemp())
        new.makedirs()
        disk = Disk(self.root, FileSystem(), synchronous)
        calls: list[int] = []

        def name(size: int) -> str:
            calls.append(size)
            if len(calls) == 2:
                raise ValueError("no name")
            return f"key{len(calls)}"

        jobs: list[tuple[bytes | str, float, list[str]]] = [
            (b"one\n", 1.0, [new.path]), (b"two\n", 2.0, [new.path]), (b"three\n", 3.0, [new.path])]
        out = disk.deliver_files(jobs, name)
        self.assertEqual([ok for ok, _ in out], [True, False, True])
        self.assertIsInstance(out[1][1], Failure)
        self.assertEqual(out[1][1].type, ValueError)
        self.assertEqual([out[i][1][:2] for i in (0, 2)], [("key1", 5), ("key3", 7)])
        self.assertEqual(sorted(os.listdir(new.path)), ["key1", "key3"])
        self.assertEqual(files(os.path.join(self.root, "tmp")), [])

    def test_link_fault_for_one_account_of_one_member(self) -> None:
        """The second member's link into BOB's new/ fails: that member is
        stored for ALICE and refused for BOB; the others are stored for
        both."""
        store, runner = self.open_store((ALICE, BOB))
        first, waiting = self.group(store, runner, [ALICE, BOB])
        self.fs.add("link", "/bob/new/", skip=1)
        runner.run_all()
        self.assertEqual(self.fs.faults, [])
        self.assertEqual(self.report(first).stored, (ALICE,))
        self.assert_refused(waiting[1], BOB, stored=(ALICE,))
        self.assertEqual([self.report(waiting[i]).stored for i in (0, 2)], [(ALICE, BOB)] * 2)
        self.assertEqual(self.contents(os.path.join(self.bob, "new")),
                         {crlf(b"message 0\n"), crlf(b"message 2\n")})
        self.assertEqual(len(files(os.path.join(self.inbox, "new"))), 4)
        self.assertEqual(self.leftovers(), [])
        self.assertEqual(self.count(store, runner, BOB), 2)
        self.assert_not_stuck(store, runner, (ALICE, BOB))
        self.flushLoggedErrors(OSError)

    def test_refused_link_and_failed_copy(self) -> None:
        """Where the link is refused (EXDEV) and the copy that replaces it
        fails at any step, that member is refused with nothing left in
        new/ or tmp/."""
        for op in ("open_new", "write", "fsync", "rename"):
            self.root = FilePath(self.mktemp()).path
            self.inbox = os.path.join(self.root, "example.org", "alice")
            self.fs = FaultsFS()
            store, runner = self.open_store()
            first, waiting = self.group(store, runner, [ALICE])
            self.fs.add("link", "/alice/new/", errno.EXDEV, skip=1)
            self.fs.add(op, "/alice/new/" if op == "rename" else "/alice/tmp/")
            runner.run_all()
            self.assertEqual(self.fs.faults, [], op)
            self.assert_refused(waiting[1], ALICE)
            self.assertEqual([self.report(waiting[i]).stored for i in (0, 2)], [(ALICE,)] * 2)
            self.assertEqual(self.contents(os.path.join(self.inbox, "new")),
                             {crlf(b"zero\n"), crlf(b"message 0\n"), crlf(b"message 2\n")}, op)
            self.assertEqual(self.leftovers(), [], op)
            self.assert_not_stuck(store, runner)
        self.flushLoggedErrors(OSError)


class CommitFaultTests(BatchFaultCase):
    def grouped_commit(self, store: MaildirStore, runner: ManualRunner,
                       accounts: list[str]) -> tuple[Deferred[Any], list[Deferred[Any]]]:
        """Write the group's files before "zero"'s commit runs, so that
        the three wait for one commit of their own."""
        first, waiting = self.group(store, runner, accounts)
        runner.run_one(slow=store._commit_in_thread)  # the group's files
        self.assertEqual(len(store._accounts[ALICE].arrivals), 3)
        runner.run_one()  # "zero"'s commit; the group's starts
        self.assertEqual(self.report(first).stored, (ALICE,))
        return first, waiting

    def test_fsync_of_new_fails_and_an_undo_fails(self) -> None:
        """The shared fsync of new/ fails and one of the files cannot be
        unlinked again: no member is acknowledged, and the file left behind
        is indexed, whole and once, by the next listing."""
        store, runner = self.open_store()
        _, waiting = self.grouped_commit(store, runner, [ALICE])
        self.fs.add("fsync_dir", "/alice/new")
        self.fs.add("unlink", "/alice/new/", skip=1)
        runner.run_all()
        self.assertEqual(self.fs.faults, [])
        for d in waiting:
            self.assert_refused(d, ALICE)
        self.assertEqual(self.contents(os.path.join(self.inbox, "new")),
                         {crlf(b"zero\n"), crlf(b"message 1\n")})
        self.assertEqual(self.count(store, runner), 2)
        session = store.open_folder(ALICE, "INBOX", True)
        runner.run_all()
        messages = self.successResultOf(session).messages()
        self.assertEqual([m.uid for m in messages], [1, 2])
        self.assertEqual(messages[1].size, len(crlf(b"message 1\n")))
        self.assert_not_stuck(store, runner)
        self.assertEqual(self.leftovers(), [])
        self.flushLoggedErrors(OSError)

    def test_fsync_of_new_fails_for_one_account(self) -> None:
        """BOB's commit fails (its new/ fsync), ALICE's succeeds: each
        member gets each account's true outcome."""
        store, runner = self.open_store((ALICE, BOB))
        _, waiting = self.grouped_commit(store, runner, [ALICE, BOB])
        self.fs.add("fsync_dir", "/bob/new")
        runner.run_all()
        self.assertEqual(self.fs.faults, [])
        # BOB had no commit under way: message 0 started one alone, and
        # messages 1 and 2 waited for the next.
        self.assert_refused(waiting[0], BOB, stored=(ALICE,))
        self.assertEqual([self.report(waiting[i]).stored for i in (1, 2)], [(ALICE, BOB)] * 2)
        self.assertEqual(self.contents(os.path.join(self.bob, "new")),
                         {crlf(b"message 1\n"), crlf(b"message 2\n")})
        self.assertEqual(self.count(store, runner, BOB), 2)
        self.assertEqual(self.count(store, runner, ALICE), 4)
        self.assert_not_stuck(store, runner, (ALICE, BOB))
        self.flushLoggedErrors(OSError)

    def test_indexing_failure_of_a_group(self) -> None:
        """The index transaction of a group fails: the files are durable,
        so the members are acknowledged (the failure logged once); the next
        listing gives each file one UID, and later deliveries go on."""
        store, runner = self.open_store(cls=IndexFailsOnce)
        assert isinstance(store, IndexFailsOnce)
        store.broken = False
        _, waiting = self.grouped_commit(store, runner, [ALICE])
        store.broken = True
        runner.run_all()
        self.assertFalse(store.broken)
        self.assertEqual([self.report(d).stored for d in waiting], [(ALICE,)] * 3)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assert_not_stuck(store, runner)
        session = store.open_folder(ALICE, "INBOX", True)
        runner.run_all()
        messages = self.successResultOf(session).messages()
        self.assertEqual([m.uid for m in messages], [1, 2, 3, 4, 5])
        self.assertEqual(len({m.key for m in messages}), 5)
        self.assertEqual(sorted(files(os.path.join(self.inbox, "new"))),
                         sorted(m.key for m in messages))


class IndexReloadTests(BatchFaultCase):
    def test_failed_reload_leaves_no_transaction_open(self) -> None:
        """Another process changed the index, and reading its change fails
        (SQLite refuses the reads of the reload of a cached folder): that
        call fails, and the account's later calls and commits work."""
        store, other = self.make_store(), self.make_store(FileSystem())
        session = self.successResultOf(store.open_folder(ALICE, "INBOX"))  # INBOX cached
        self.assertEqual(self.report(other.deliver([ALICE], b"theirs\n")).stored, (ALICE,))
        db = store._accounts[ALICE].index._db  # type: ignore[union-attr]

        def deny_reads(action: int, *args: Any) -> int:
            return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_READ else sqlite3.SQLITE_OK

        db.set_authorizer(deny_reads)
        self.failureResultOf(store.status(ALICE, "INBOX"), StoreError)
        db.set_authorizer(None)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.DatabaseError)), 1)
        self.assertEqual(self.report(store.deliver([ALICE], b"mine\n")).stored, (ALICE,))
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).messages, 2)
        self.assertEqual([m.uid for m in self.successResultOf(session.sync()).added], [1, 2])
        self.assertEqual(self.flushLoggedErrors(), [])

class QuotaTests(BatchFaultCase):
    def test_quota_refusal_in_a_group(self) -> None:
        """ALICE's quota refuses the third of three deliveries to ALICE
        and BOB; BOB gets all three, ALICE two; nothing stays reserved."""
        store, runner = self.open_store(
            (ALICE, BOB), quota_for=lambda a: Quota(max_messages=2) if a == ALICE else Quota())
        reports = [store.deliver([ALICE, BOB], b"message %d\n" % i) for i in range(3)]
        runner.run_all(slow=store._commit_in_thread)
        results = [self.report(d) for d in reports]
        self.assertEqual([r.stored for r in results], [(ALICE, BOB), (ALICE, BOB), (BOB,)])
        self.assertIsInstance(results[2].refused[ALICE], QuotaExceeded)
        self.assertEqual(store._accounts[ALICE].pending, [0, 0])
        self.assertEqual(len(files(os.path.join(self.inbox, "new"))), 2)
        self.assertEqual(len(files(os.path.join(self.bob, "new"))), 3)
        self.assertEqual(self.leftovers(), [])
        self.assertEqual(self.count(store, runner, BOB), 3)


class StoppedThreadTests(BatchFaultCase):
    def test_threads_stop_between_write_and_commit(self) -> None:
        """The file work ran (it was queued before the stop), the commit
        cannot: the deliveries are refused, never acknowledged; the files
        left in new/ are indexed at the next start."""
        runner = StoppingRunner()
        store, _ = self.open_store(runner=runner)
        first, waiting = self.group(store, runner, [ALICE])
        runner.run_one(slow=store._commit_in_thread)  # the group's files
        runner.stopped = True
        runner.run_all()  # "zero"'s commit ran; the group's could not start
        self.assertEqual(self.report(first).stored, (ALICE,))
        for d in waiting:
            self.assert_refused(d, ALICE)
        acct = store._accounts[ALICE]
        self.assertEqual((acct.committing, acct.arrivals, acct.lock.locked), (False, [], False))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)
        restarted = self.make_store(FileSystem())
        self.assertEqual(self.successResultOf(restarted.status(ALICE, "INBOX")).messages, 4)
        runner.stopped = False  # for the clean-up's store.close()

    def test_threads_stop_while_deliveries_wait_for_the_writer(self) -> None:
        """Deliveries waiting for the writer when the threads stop are
        refused at once, none left waiting."""
        for raising in (False, True):
            self.root = FilePath(self.mktemp()).path
            runner = StoppingRunner(raising)
            store, _ = self.open_store(runner=runner)
            first = store.deliver([ALICE], b"zero\n")
            waiting = [store.deliver([ALICE], b"message %d\n" % i) for i in range(3)]
            runner.stopped = True
            runner.run_all()
            self.assertEqual(self.report(first).stored, ())  # its commit could not run
            for d in waiting:
                self.assert_refused(d, ALICE)
            self.assertEqual((store.writer.running, store.writer._waiting), (0, []))
            self.assertEqual(files(os.path.join(self.root, "tmp")), [])
            runner.stopped = False  # for the clean-up's store.close()
        self.flushLoggedErrors(RuntimeError)

    def test_quota_path_releases_its_reservation_when_threads_stop(self) -> None:
        """The reservation of a delivery on the quota path is released even
        when its link cannot be handed to a thread (a runner that raises):
        the quota does not keep counting it."""
        runner = StoppingRunner(raising=True)
        store, _ = self.open_store(runner=runner, quota_for=lambda a: Quota(max_messages=1))
        d = store.deliver([ALICE], b"message\n")
        runner.run_one()  # the spool; the reservation is queued
        runner.stopped = True
        runner.run_all()  # the reservation ran; the link cannot start
        self.assert_refused(d, ALICE)
        self.assertEqual(store._accounts[ALICE].pending, [0, 0])
        runner.stopped = False
        later = store.deliver([ALICE], b"later\n")
        runner.run_all()
        self.assertEqual(self.report(later).stored, (ALICE,))
        self.flushLoggedErrors(RuntimeError)

    def test_quota_path_delivery_after_the_stop_fails_its_deferred(self) -> None:
        """A delivery on the quota path after the threads stopped answers a
        refusal; it does not raise at the caller."""
        runner = StoppingRunner(raising=True)
        store, _ = self.open_store(runner=runner, quota_for=lambda a: Quota(max_messages=5))
        runner.stopped = True
        self.assert_refused(store.deliver([ALICE], b"message\n"), ALICE)
        self.flushLoggedErrors(RuntimeError)

    def test_dir_syncer_without_threads(self) -> None:
        """A directory fsync that cannot be handed to a thread fails its
        waiters and leaves the directory free for the next one."""
        runner = StoppingRunner(raising=True)
        syncer = DirSyncer(runner, self.fs)
        path = FilePath(self.mktemp())
        path.makedirs()
        runner.stopped = True
        self.failureResultOf(syncer.sync(path.path), RuntimeError)
        runner.stopped = False
        d = syncer.sync(path.path)
        runner.run_all()
        self.assertIsNone(self.successResultOf(d))

    def test_append_undo_without_threads_logs_no_unhandled_error(self) -> None:
        """An APPEND whose directory fsync fails while the threads stop:
        its undo cannot run; the caller gets the fsync's error, and no
        failure is left unhandled in a L{Deferred}."""
        runner = StoppingRunner()
        disk = Disk(self.root, self.fs, runner)
        cur = FilePath(self.mktemp())
        cur.makedirs()
        spooled = self.successResultOf(synchronous(disk.spool, b"appended\n", 1.0))[0]
        target = os.path.join(cur.path, "key:2,")
        d = disk.commit_file(spooled, [target])
        runner.run_one()  # the link; the fsync of cur/ is queued
        self.fs.add("fsync_dir", cur.path)
        runner.stopped = True
        runner.run_all()
        [error] = self.successResultOf(d)
        self.assertIsInstance(error, OSError)
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])

    def test_close_after_the_threads_stop(self) -> None:
        """At shutdown the store may be closed after its threads stopped:
        the indexes stay open (SQLite needs no close to be consistent), and
        nothing is logged as an unhandled error."""
        for raising in (False, True):
            self.root = FilePath(self.mktemp()).path
            runner = StoppingRunner(raising)
            store, _ = self.open_store(runner=runner)
            runner.stopped = True
            self.assertIsNone(self.successResultOf(store.close()))
            gc.collect()
            self.assertEqual(self.flushLoggedErrors(), [])
            runner.stopped = False  # for the clean-up's store.close()
