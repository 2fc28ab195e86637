"""
Tests for the grouping of deliveries in L{gateway.store.maildir}: files of
waiting deliveries written by one worker call (L{gateway.store.fs.Batcher},
L{gateway.store.durable.Disk.deliver_files}), and the fsync of C{new/} with
the index transaction shared by the deliveries waiting for it; faults and
crashes in the middle of a batch; the quota path.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.filepath import FilePath

from gateway.store.fs import Batcher
from gateway.store.maildir import MaildirStore
from gateway.store.model import Quota
from tests.test_store_contract import ALICE, BOB, synchronous
from tests.test_store_maildir import Crash, FaultyFS, MaildirTestCase, ManualRunner, files


class BatcherTests(MaildirTestCase):
    def test_items_wait_for_a_free_call_and_go_together(self) -> None:
        runner = ManualRunner()
        calls: list[list[int]] = []

        def double(items: list[int]) -> list[tuple[bool, Any]]:
            calls.append(items)
            return [(True, 2 * i) if i >= 0 else (False, ValueError(i)) for i in items]

        batcher = Batcher(runner, double, limit=2)
        results = [batcher.submit(i) for i in (1, 2, 3, -4, 5)]
        self.assertEqual((batcher.running, len(runner.queue)), (2, 2))  # 1 and 2 at once
        runner.run_one()
        self.assertEqual(self.successResultOf(results[0]), 2)
        self.assertEqual(batcher.running, 2)  # 3, -4 and 5 started together
        runner.run_all()
        self.assertEqual(calls, [[1], [2], [3, -4, 5]])
        self.assertEqual([self.successResultOf(results[i]) for i in (1, 2, 4)], [4, 6, 10])
        self.failureResultOf(results[3], ValueError)
        self.assertEqual((batcher.running, batcher.calls), (0, 3))

    def test_batches_are_bounded(self) -> None:
        runner = ManualRunner()
        calls: list[list[int]] = []

        def record(items: list[int]) -> list[tuple[bool, Any]]:
            calls.append(items)
            return [(True, i) for i in items]

        batcher = Batcher(runner, record, limit=1, max_batch=3)
        results = [batcher.submit(i) for i in range(8)]
        runner.run_all()
        self.assertEqual(calls, [[0], [1, 2, 3], [4, 5, 6], [7]])
        self.assertEqual([self.successResultOf(d) for d in results], list(range(8)))

    def test_failed_call_fails_its_items_only(self) -> None:
        runner = ManualRunner()

        def broken(items: list[int]) -> list[tuple[bool, Any]]:
            if 0 in items:
                raise OSError("no")
            return [(True, i) for i in items]

        batcher = Batcher(runner, broken, limit=1)
        first, second = batcher.submit(0), batcher.submit(7)
        runner.run_all()
        self.failureResultOf(first, OSError)
        self.assertEqual(self.successResultOf(second), 7)


    def test_no_thread_to_run_it(self) -> None:
        """A runner that refuses (the pool is stopping) fails the items;
        the batcher is not left waiting for ever."""
        refuse = [True]

        def runner(f: Any, *args: Any) -> Deferred[Any]:
            if refuse[0]:
                raise RuntimeError("thread pool stopped")
            return synchronous(f, *args)

        batcher = Batcher(runner, lambda items: [(True, i) for i in items], limit=1)
        self.failureResultOf(batcher.submit(1), RuntimeError)
        self.assertEqual(batcher.running, 0)
        refuse[0] = False
        self.assertEqual(self.successResultOf(batcher.submit(2)), 2)


class GroupedDeliveryTests(MaildirTestCase):
    def busy_store(self, fs: FaultyFS | None = None, **kw: Any) -> tuple[MaildirStore,
                                                                          ManualRunner]:
        """A store with one writer and ALICE's Maildir open."""
        runner = ManualRunner()
        store = self.make_store(fs or self.fs, run_in_thread=runner, writers=1, **kw)
        d = store.status(ALICE, "INBOX")
        runner.run_all()
        self.successResultOf(d)
        return store, runner

    def test_batch_fsyncs_every_file_before_linking_it(self) -> None:
        store, runner = self.busy_store()
        first = store.deliver([ALICE], b"zero\n")  # takes the only writer
        self.fs.log.clear()
        waiting = [store.deliver([ALICE], b"message %d\n" % i) for i in range(3)]
        runner.run_all()
        self.assertEqual(self.successResultOf(first).stored, (ALICE,))
        self.assertEqual([self.successResultOf(d).stored for d in waiting], [(ALICE,)] * 3)
        self.assertEqual(store.writer.calls, 2)  # "zero", then the three together
        spools = [p for op, p in self.fs.log if op == "open_new"]
        ops = [(op, p) for op, p in self.fs.log if op != "listdir"]
        for path in spools:
            fsync = ops.index(("fsync", path))
            close = ops.index(("close", path))
            link = next(i for i, (op, p) in enumerate(ops)
                        if op == "link" and i > close and p.startswith(self.inbox))
            self.assertLess(ops.index(("set_mtime", path)), fsync)
            self.assertLess(fsync, close)
            self.assertLess(close, link)
        # the three waiting files were all written before the first fsync
        batch = spools[1:]
        last_write = max(ops.index(("write", p)) for p in batch)
        first_fsync = min(ops.index(("fsync", p)) for p in batch)
        self.assertLess(last_write, first_fsync)
        self.assertEqual(self.leftovers(), [])
        self.assertEqual(self.ok_status(store, runner), 4)

    def ok_status(self, store: MaildirStore, runner: ManualRunner) -> int:
        d = store.status(ALICE, "INBOX")
        runner.run_all()
        return int(self.successResultOf(d).messages)

    def test_fault_in_one_delivery_of_a_batch(self) -> None:
        """A failing write or fsync refuses that delivery alone."""
        for op in ("write", "fsync", "link"):
            self.fs = FaultyFS()
            self.root = FilePath(self.mktemp()).path
            self.inbox = os.path.join(self.root, "example.org", "alice")
            store, runner = self.busy_store(self.fs)
            first = store.deliver([ALICE], b"zero\n")
            waiting = [store.deliver([ALICE], b"message %d\n" % i) for i in range(3)]
            runner.run_one()  # "zero"'s file; the three start together
            runner.run_one(slow=store._write_deliveries)  # "zero"'s commit
            self.successResultOf(first)
            # The first matching operation of the batch fails: message 0's.
            self.fs.fault = (op, "/tmp/" if op != "link" else "/new/", errno.EIO)
            runner.run_all()
            reports = [self.successResultOf(d) for d in waiting]
            self.assertEqual(reports[0].stored, (), op)
            self.assertEqual(reports[0].refused[ALICE].code, 451, op)
            self.assertEqual([r.stored for r in reports[1:]], [(ALICE,)] * 2, op)
            self.assertEqual(self.ok_status(store, runner), 3, op)
            self.assertEqual(self.leftovers(), [], op)
        self.flushLoggedErrors(OSError)

    def test_fsync_of_new_fails_the_whole_commit(self) -> None:
        """The deliveries sharing a commit whose fsync of new/ fails are
        all refused, and their files unlinked."""
        store, runner = self.busy_store()
        first = store.deliver([ALICE], b"zero\n")
        runner.run_one()  # "zero"'s file; its commit waits in the queue
        waiting = [store.deliver([ALICE], b"message %d\n" % i) for i in range(2)]
        runner.run_one(slow=store._commit_in_thread)  # message 0's file
        runner.run_one(slow=store._commit_in_thread)  # message 1's file
        runner.run_one()  # "zero"'s commit; then one for messages 0 and 1
        self.assertEqual(self.successResultOf(first).stored, (ALICE,))
        self.assertEqual(len(runner.queue), 1)
        self.fs.fault = ("fsync_dir", "/alice/new", errno.EIO)
        runner.run_all()
        self.assertIsNone(self.fs.fault)
        for d in waiting:
            report = self.successResultOf(d)
            self.assertEqual((report.stored, report.refused[ALICE].code), ((), 451))
        self.assertEqual(self.ok_status(store, runner), 1)
        self.assertEqual(len(files(os.path.join(self.inbox, "new"))), 1)
        self.flushLoggedErrors(OSError)

    def test_crash_at_each_step_of_a_batch(self) -> None:
        """The machine stops anywhere in a batch: after a restart, every
        acknowledged message is there, whole, and nothing else is but
        whole messages."""
        messages = [b"zero\n", b"one\n", b"two\n", b"three\n"]
        whole = {m.replace(b"\n", b"\r\n") for m in messages}

        def run(crash_at: int | None) -> tuple[list[bytes], int]:
            self.root = FilePath(self.mktemp()).path
            self.inbox = os.path.join(self.root, "example.org", "alice")
            fs = FaultyFS()
            store, runner = self.busy_store(fs)
            fs.log.clear()
            fs.crash_at = crash_at
            acked: list[bytes] = []

            def ack(report: Any, message: bytes) -> None:
                if report.stored:
                    acked.append(message.replace(b"\n", b"\r\n"))

            for m in messages:
                store.deliver([ALICE], m).addCallback(ack, m)
            runner.run_all()
            return acked, len(fs.log)

        acked, steps = run(None)
        self.assertEqual(len(acked), 4)
        self.assertGreater(steps, 20)
        for step in range(steps):
            acked, _ = run(step)
            restarted = MaildirStore(self.root, run_in_thread=synchronous, clock=self.clock,
                                     hostname="test.example", tmp_max_age=-1)
            self.addCleanup(restarted.close)
            session = self.successResultOf(restarted.open_folder(ALICE, "INBOX"))
            found = []
            for info in session.messages():
                f = self.successResultOf(session.open_message(info.uid))
                found.append(f.read())
                f.close()
                self.assertEqual(info.size, len(found[-1]), step)
            self.assertTrue(set(found) <= whole, (step, found))
            self.assertTrue(set(acked) <= set(found), (step, acked, found))
            self.successResultOf(restarted.deliver([BOB], b"after\n"))  # recovers the spool
            self.assertEqual(self.leftovers(), [], step)
        self.flushLoggedErrors(Crash)

    def test_indexing_failure_keeps_the_delivery(self) -> None:
        """The file is on disk and its directory fsynced: the delivery is
        acknowledged, the failure logged, and the next listing indexes it."""

        class BrokenIndex(MaildirStore):
            broken = True

            def index_rows(self, *args: Any) -> list[int]:
                if self.broken:
                    raise sqlite3.OperationalError("disk I/O error")
                return super().index_rows(*args)

        store = BrokenIndex(self.root, run_in_thread=synchronous, clock=self.clock,
                            fs=self.fs, hostname="test.example")
        self.addCleanup(store.close)
        self.successResultOf(store.status(ALICE, "INBOX"))
        self.assertEqual(self.successResultOf(store.deliver([ALICE], b"kept\n")).stored, (ALICE,))
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        store.broken = False
        session = self.successResultOf(store.open_folder(ALICE, "INBOX"))
        self.assertEqual([m.uid for m in session.messages()], [1])

    def test_quota_path_releases_its_reservation_after_the_commit(self) -> None:
        runner = ManualRunner()
        store = self.make_store(run_in_thread=runner,
                                quota_for=lambda a: Quota(max_messages=2))
        d = store.status(ALICE, "INBOX")
        runner.run_all()
        self.successResultOf(d)
        acct = store._accounts[ALICE]
        reports: list[Deferred[Any]] = [store.deliver([ALICE], b"m%d\n" % i) for i in range(3)]
        runner.run_all()
        stored = [self.successResultOf(r).stored for r in reports]
        self.assertEqual(stored.count((ALICE,)), 2)
        self.assertEqual(acct.pending, [0, 0])
        self.assertEqual(store.writer.calls, 0)  # a quota: the spool, reserve, link path
