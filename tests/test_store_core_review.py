# -*- test-case-name: tests.test_store_core_review -*-
"""
Review tests of the store's core: names on disk, session views, the
contract points both stores share, and the quota reservations of the
Maildir store.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.store.maildir import MaildirStore
from gateway.store.model import (
    Changes,
    FolderExists,
    InvalidFolderName,
    NoSuchAccount,
    Quota,
    QuotaExceeded,
    StoreError,
    Usage,
)
from gateway.testing import MemoryStore
from tests.test_store_batch_faults import BatchFaultCase, IndexFailsOnce, crlf
from tests.test_store_contract import (
    ALICE,
    BOB,
    CRLF,
    MESSAGE,
    MaildirStoreFactory,
    StoreContract,
)
from tests.test_store_maildir import ManualRunner, files


class MoreContract:
    """Contract points the protocols rely on that the shared contract
    tests did not pin down; run against both stores (the helpers of
    L{StoreContract}, without running its tests twice)."""

    setUp = StoreContract.setUp
    ok = StoreContract.ok
    deliver = StoreContract.deliver
    open = StoreContract.open
    uids = StoreContract.uids
    successResultOf: Any
    failureResultOf: Any
    assertEqual: Any
    assertIn: Any
    assertIsInstance: Any
    assertGreater: Any

    def test_uidnext_after_expunge(self) -> None:
        for _ in range(3):
            self.deliver()
        session = self.open()
        self.ok(session.delete([2, 3]))
        self.assertEqual(self.ok(self.store.status(ALICE, "INBOX")).uidnext, 4)
        self.ok(session.sync())
        self.assertEqual(session.uidnext(), 4)
        self.deliver()
        self.assertEqual(self.ok(session.sync()).added[0].uid, 4)

    def test_uidvalidity_after_delete_and_create_at_once(self) -> None:
        """Without the clock moving, a folder deleted and created again gets
        a new UIDVALIDITY, and its UIDs start over."""
        self.ok(self.store.create_folder(ALICE, "Old"))
        self.ok(self.open("Old").append(MESSAGE))
        before = self.ok(self.store.status(ALICE, "Old"))
        self.ok(self.store.delete_folder(ALICE, "Old"))
        self.ok(self.store.create_folder(ALICE, "Old"))
        after = self.ok(self.store.status(ALICE, "Old"))
        self.assertGreater(after.uidvalidity, before.uidvalidity)
        self.assertEqual((after.uidnext, after.messages), (1, 0))

    def test_keywords_keep_their_case(self) -> None:
        """System flags are case-insensitive; keywords are stored as given,
        and both stores agree on it."""
        self.deliver()
        session = self.open()
        infos = self.ok(session.set_flags([1], ["\\SEEN", "$Junk", "$junk", "\\recent"],
                                          "add"))
        self.assertEqual(infos[0].flags, {"\\Seen", "$Junk", "$junk"})
        infos = self.ok(session.set_flags([1], ["$JUNK", "\\seen"], "remove"))
        self.assertEqual(infos[0].flags, {"$Junk", "$junk"})
        self.assertEqual(self.open().messages()[0].flags, {"$Junk", "$junk"})

    def test_recent_with_two_sessions(self) -> None:
        """A new message is \\Recent in exactly one read-write session;
        STATUS counts it recent until a session took it."""
        one, two = self.open(), self.open()
        self.deliver()
        self.assertEqual(self.ok(self.store.status(ALICE, "INBOX")).recent, 1)
        self.ok(two.sync())
        self.ok(one.sync())
        self.assertEqual((one.recent, two.recent), (frozenset(), frozenset({1})))
        self.assertEqual(self.ok(self.store.status(ALICE, "INBOX")).recent, 0)
        self.ok(two.delete([1]))
        self.ok(two.sync())
        self.assertEqual(two.recent, frozenset())

    def test_added_and_expunged_between_two_syncs(self) -> None:
        """A message that came and went between two syncs is reported
        neither added nor expunged; a flag change of a message expunged
        meanwhile is reported as its expunge only."""
        self.deliver()
        self.deliver()
        one, two = self.open(), self.open()
        self.deliver()
        self.ok(two.sync())
        self.ok(two.set_flags([2], ["\\Seen"], "add"))
        self.ok(two.delete([2, 3]))
        self.assertEqual(self.ok(one.sync()), Changes(expunged=(2,)))
        self.assertEqual(self.uids(one), [1])

    def test_expunges_reported_in_uid_order(self) -> None:
        for _ in range(4):
            self.deliver()
        one, two = self.open(), self.open()
        self.ok(two.delete([3]))
        self.ok(two.delete([1]))
        self.ok(two.delete([4]))
        self.assertEqual(self.ok(one.sync()).expunged, (1, 3, 4))

    def test_quota_lowered_below_usage(self) -> None:
        limit = [Quota()]
        self.store = self.make_store(quota_for=lambda a: limit[0])
        for _ in range(3):
            self.deliver()
        limit[0] = Quota(max_messages=2)
        self.assertIsInstance(self.deliver().refused[ALICE], QuotaExceeded)
        self.failureResultOf(self.open("Sent").append(MESSAGE), QuotaExceeded)
        # A MOVE adds nothing, so it is still allowed; a COPY is not.
        self.assertEqual(self.ok(self.open().move([1], "Archive")), {1: 1})
        self.failureResultOf(self.open("Archive").copy([1], "Sent"), QuotaExceeded)
        self.ok(self.open().delete([2, 3]))
        self.assertEqual(self.deliver().stored, (ALICE,))
        self.assertEqual(self.ok(self.store.usage(ALICE)), Usage(2 * len(CRLF), 2))

    def test_quota_bytes_exact_fit(self) -> None:
        self.store = self.make_store(quota_for=lambda a: Quota(max_bytes=len(CRLF)))
        self.assertEqual(self.deliver().stored, (ALICE,))
        error = self.deliver().refused[ALICE]
        self.assertEqual((error.code, error.temporary), (452, True))
        self.failureResultOf(self.open("Sent").append(MESSAGE), QuotaExceeded)

    def test_account_names_that_alias_or_collide_are_refused(self) -> None:
        """Names that would reach another account's directory (an
        undecodable name whose bytes are those of a real one) or the
        store's own spool (C{<root>/tmp}) are refused, by both stores."""
        for name in ["\udcc3\udca9@example.org", "x@tmp", "\ud800@example.org"]:
            report = self.ok(self.store.deliver([name], MESSAGE))
            self.assertIsInstance(report.refused[name], NoSuchAccount, name)
            self.failureResultOf(self.store.status(name, "INBOX"), NoSuchAccount)

    def test_folder_names_with_lone_surrogates_are_refused(self) -> None:
        """Such a name cannot be stored in modified UTF-7: it would make a
        directory that no listing shows."""
        self.failureResultOf(self.store.create_folder(ALICE, "a\ud800b"), InvalidFolderName)

    def test_inbox_matched_in_ascii_only(self) -> None:
        """RFC 3501 section 5.1: INBOX is case-insensitive in ASCII; a name
        whose Unicode upper case is INBOX (dotless i) is another folder."""
        self.ok(self.store.create_folder(ALICE, "\u0131nbox"))
        listed = [f.name for f in self.ok(self.store.folders(ALICE))]
        self.assertIn("\u0131nbox", listed)
        self.failureResultOf(self.store.create_folder(ALICE, "iNBOX"), FolderExists)


class MemoryMoreContractTests(MoreContract, SynchronousTestCase):
    def make_store(self, **kw: Any) -> Any:
        return MemoryStore(clock=self.clock, **kw)


class MaildirMoreContractTests(MaildirStoreFactory, MoreContract, SynchronousTestCase):
    pass


class QuotaReservationTests(BatchFaultCase):
    """The Maildir store's quota: reservations in flight, failure paths,
    and usage after other programs changed the Maildir."""

    def quota_store(self, quota: Quota, **kw: Any) -> tuple[MaildirStore, ManualRunner]:
        return self.open_store((ALICE, BOB), quota_for=lambda a: quota if a == ALICE
                               else Quota(), **kw)

    def append(self, store: MaildirStore, runner: ManualRunner, folder: str = "Sent") -> Any:
        d = store.open_folder(ALICE, folder)
        runner.run_all()
        return self.successResultOf(d).append(b"appended\n")

    def assert_nothing_reserved(self, store: MaildirStore) -> None:
        self.assertEqual(store._accounts[ALICE].pending, [0, 0])

    def usage(self, store: MaildirStore, runner: ManualRunner) -> Usage:
        d = store.usage(ALICE)
        runner.run_all()
        return self.successResultOf(d)

    def test_deliveries_and_appends_racing_the_limit(self) -> None:
        """Five deliveries and three APPENDs started at once for a quota of
        four messages: exactly four are stored, the others refused
        temporarily, and nothing stays reserved."""
        store, runner = self.quota_store(Quota(max_messages=4))
        opened = store.open_folder(ALICE, "Sent")
        runner.run_all()
        sent = self.successResultOf(opened)
        deliveries = [store.deliver([ALICE, BOB], b"message %d\n" % i) for i in range(5)]
        appends = [sent.append(b"appended %d\n" % i) for i in range(3)]
        runner.run_all(slow=store._commit_in_thread)
        stored = sum(ALICE in self.report(d).stored for d in deliveries)
        appended = [d.result for d in appends]
        for d in appends:
            d.addErrback(lambda f: f.trap(QuotaExceeded))
        stored += sum(isinstance(r, int) for r in appended)
        self.assertEqual(stored, 4)
        self.assertEqual(self.usage(store, runner).messages, 4)
        self.assertEqual(len(files(os.path.join(self.inbox, "new")))
                         + len(files(os.path.join(self.inbox, ".Sent", "cur"))), 4)
        self.assertEqual(self.count(store, runner, BOB), 5)
        self.assert_nothing_reserved(store)
        self.assertEqual(self.leftovers(), [])

    def test_bytes_quota_with_deliveries_in_flight(self) -> None:
        """Reservations count the bytes of deliveries not yet indexed."""
        message = b"x" * 100 + b"\n"
        store, runner = self.quota_store(Quota(max_bytes=2 * len(crlf(message)) + 50))
        reports = [store.deliver([ALICE], message) for _ in range(3)]
        runner.run_all(slow=store._commit_in_thread)
        self.assertEqual([self.report(d).stored for d in reports], [(ALICE,), (ALICE,), ()])
        self.assertEqual(self.usage(store, runner).bytes, 2 * len(crlf(message)))
        self.assert_nothing_reserved(store)

    def test_append_link_failure_releases(self) -> None:
        store, runner = self.quota_store(Quota(max_messages=1))
        self.fs.add("link", os.sep + ".Sent" + os.sep + "cur")
        d = self.append(store, runner)
        runner.run_all()
        self.assertEqual(self.failureResultOf(d, StoreError).value.code, 451)
        self.assert_nothing_reserved(store)
        d = self.append(store, runner)
        runner.run_all()
        self.assertEqual(self.successResultOf(d), 1)
        self.flushLoggedErrors(OSError)

    def test_append_indexing_failure_releases(self) -> None:
        store, runner = self.quota_store(Quota(max_messages=5), cls=IndexFailsOnce)
        d = self.append(store, runner)
        runner.run_all()
        self.failureResultOf(d, StoreError)
        self.assert_nothing_reserved(store)
        self.flushLoggedErrors()

    def test_delivery_link_failure_releases(self) -> None:
        store, runner = self.quota_store(Quota(max_messages=1))
        self.fs.add("link", os.path.join("alice", "new"))
        d = store.deliver([ALICE, BOB], b"message\n")
        runner.run_all()
        self.assertEqual(self.report(d).stored, (BOB,))
        self.assert_nothing_reserved(store)
        d = store.deliver([ALICE], b"later\n")
        runner.run_all()
        self.assertEqual(self.report(d).stored, (ALICE,))
        self.flushLoggedErrors(OSError)

    def test_usage_recounted_after_another_program_deletes(self) -> None:
        """A full account whose messages another program deleted (no
        session looking at those folders) takes mail again."""
        store, runner = self.quota_store(Quota(max_messages=2))
        for _ in range(2):
            self.assertEqual(self.report(self.settle(store, runner, store.deliver(
                [ALICE], b"message\n"))).stored, (ALICE,))
        self.assertIsInstance(self.report(self.settle(store, runner, store.deliver(
            [ALICE], b"refused\n"))).refused[ALICE], QuotaExceeded)
        new = os.path.join(self.inbox, "new")
        os.unlink(os.path.join(new, files(new)[0]))  # another program
        self.assertEqual(self.report(self.settle(store, runner, store.deliver(
            [ALICE], b"taken\n"))).stored, (ALICE,))
        self.assertEqual(self.usage(store, runner).messages, 2)
        self.assert_nothing_reserved(store)

    def test_usage_recounted_after_deletes_in_another_folder(self) -> None:
        store, runner = self.quota_store(Quota(max_bytes=2 * len(b"appended\r\n")))
        for _ in range(2):
            d = self.append(store, runner)
            runner.run_all()
            self.successResultOf(d)
        d = self.append(store, runner)
        runner.run_all()
        self.failureResultOf(d, QuotaExceeded)
        cur = os.path.join(self.inbox, ".Sent", "cur")
        os.unlink(os.path.join(cur, files(cur)[0]))  # another program
        d = self.append(store, runner, "Drafts")
        runner.run_all()
        self.assertEqual(self.successResultOf(d), 1)
        self.assert_nothing_reserved(store)

    def settle(self, store: MaildirStore, runner: ManualRunner, d: Any) -> Any:
        runner.run_all(slow=store._commit_in_thread)
        return d
