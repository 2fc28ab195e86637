"""
The store contract (L{gateway.interfaces.IMailStore}, L{IFolderSession}),
written once and run against both implementations: the Maildir store and
the in-memory one protocol tests use.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.interfaces import IFolderSession, IMailStore
from gateway.store.maildir import MaildirStore
from gateway.store.model import (
    Changes,
    FolderExists,
    InvalidFolderName,
    MailboxInUse,
    NoSuchAccount,
    NoSuchFolder,
    NoSuchMessage,
    Quota,
    QuotaExceeded,
    StoreError,
    Usage,
)
from gateway.testing import MemoryStore

ALICE = "alice@example.org"
BOB = "bob@example.org"
NOW = 1_800_000_000.0
MESSAGE = b"From: a@example.net\nSubject: hello\n\nline one\nline two\n"
CRLF = MESSAGE.replace(b"\n", b"\r\n")


def synchronous(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """A run_in_thread that runs at once, on this thread."""
    return maybeDeferred(f, *args, **kwargs)


class StoreContract:
    """Mixed into a SynchronousTestCase that defines L{make_store}."""

    successResultOf: Any
    failureResultOf: Any
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIn: Any
    assertNotIn: Any
    assertNotEqual: Any
    assertIsInstance: Any
    assertGreater: Any

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = self.make_store()

    def make_store(self, **kw: Any) -> Any:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------

    def ok(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(d)

    def deliver(self, message: bytes = MESSAGE, *accounts: str, **kw: Any) -> Any:
        return self.ok(self.store.deliver(accounts or (ALICE,), message, **kw))

    def open(self, name: str = "INBOX", account: str = ALICE, readonly: bool = False) -> Any:
        return self.ok(self.store.open_folder(account, name, readonly))

    def uids(self, session: Any) -> list[int]:
        return [m.uid for m in session.messages()]

    def read(self, session: Any, uid: int) -> bytes:
        f = self.ok(session.open_message(uid))
        try:
            return f.read()
        finally:
            f.close()

    # -- the interfaces -------------------------------------------------------

    def test_provides_interfaces(self) -> None:
        self.assertTrue(verifyObject(IMailStore, self.store))
        self.assertTrue(verifyObject(IFolderSession, self.open()))

    # -- delivery -------------------------------------------------------------

    def test_deliver_stores_crlf(self) -> None:
        report = self.deliver()
        self.assertEqual((report.stored, report.refused), ((ALICE,), {}))
        session = self.open()
        [info] = session.messages()
        self.assertEqual((info.uid, info.size, info.internal_date), (1, len(CRLF), NOW))
        self.assertEqual(self.read(session, 1), CRLF)

    def test_deliver_keeps_crlf_and_internal_date(self) -> None:
        self.deliver(CRLF, internal_date=1234.0)
        [info] = self.open().messages()
        self.assertEqual((info.size, info.internal_date), (len(CRLF), 1234.0))

    def test_deliver_spooled_file(self) -> None:
        path = FilePath(self.mktemp())  # type: ignore[attr-defined]
        path.setContent(MESSAGE)
        self.assertEqual(self.deliver(path.path).stored, (ALICE,))  # type: ignore[arg-type]
        self.assertEqual(self.read(self.open(), 1), CRLF)

    def test_deliver_several_accounts_once_each(self) -> None:
        report = self.deliver(MESSAGE, ALICE, BOB, ALICE)
        self.assertEqual(report.stored, (ALICE, BOB))
        for account in (ALICE, BOB):
            session = self.open(account=account)
            self.assertEqual(self.uids(session), [1])
            self.assertEqual(self.read(session, 1), CRLF)

    def test_deliver_unknown_account(self) -> None:
        self.store = self.make_store(known_account=lambda a: a == ALICE)
        report = self.deliver(MESSAGE, BOB, ALICE)
        self.assertEqual(report.stored, (ALICE,))
        self.assertIsInstance(report.refused[BOB], NoSuchAccount)
        self.failureResultOf(self.store.open_folder(BOB, "INBOX"), NoSuchAccount)
        self.failureResultOf(self.store.folders(BOB), NoSuchAccount)

    def test_account_names_cannot_escape(self) -> None:
        bad = ["../x@example.org", "a/b@example.org", "x@..", "x@a/b", ".x@example.org",
               "noat", "x@", "@x", "a\x00@example.org"]
        report = self.deliver(MESSAGE, *bad)
        self.assertEqual(report.stored, ())
        self.assertEqual(sorted(report.refused), sorted(bad))
        for error in report.refused.values():
            self.assertIsInstance(error, NoSuchAccount)

    def test_uids_increase(self) -> None:
        for _ in range(3):
            self.deliver()
        session = self.open()
        self.assertEqual(self.uids(session), [1, 2, 3])
        self.assertEqual(session.uidnext(), 4)
        self.assertEqual(len({m.key for m in session.messages()}), 3)

    # -- sessions -------------------------------------------------------------

    def test_view_changes_only_at_sync(self) -> None:
        self.deliver()
        session = self.open()
        self.deliver()
        self.assertEqual(self.uids(session), [1])
        changes = self.ok(session.sync())
        self.assertEqual([m.uid for m in changes.added], [2])
        self.assertEqual(self.uids(session), [1, 2])
        self.assertEqual(session.uidnext(), 3)
        self.assertFalse(self.ok(session.sync()))

    def test_on_change_after_delivery(self) -> None:
        session = self.open()
        calls: list[None] = []
        session.on_change(lambda: calls.append(None))
        self.deliver()
        self.clock.advance(1)
        self.assertTrue(calls)

    def test_on_change_for_other_sessions_only(self) -> None:
        self.deliver()
        one, two = self.open(), self.open()
        calls: dict[str, int] = {"one": 0, "two": 0}
        one.on_change(lambda: calls.__setitem__("one", calls["one"] + 1))
        two.on_change(lambda: calls.__setitem__("two", calls["two"] + 1))
        self.ok(one.set_flags([1], ["\\Flagged"], "add"))
        self.assertEqual(calls, {"one": 0, "two": 1})
        self.ok(two.sync())
        self.ok(two.set_flags([1], ["\\Deleted"], "add"))
        self.ok(two.expunge())
        self.assertEqual(calls, {"one": 2, "two": 1})  # the flag change, the expunge
        self.assertEqual(self.ok(one.sync()), Changes(expunged=(1,)))

    def test_recent_goes_to_first_session(self) -> None:
        self.deliver()
        self.assertEqual(self.ok(self.store.status(ALICE, "INBOX")).recent, 1)
        first = self.open()
        self.assertEqual(first.recent, frozenset({1}))
        self.assertEqual(self.open().recent, frozenset())
        self.assertEqual(self.ok(self.store.status(ALICE, "INBOX")).recent, 0)
        self.deliver()
        second = self.open()  # opened before `first` syncs: it sees uid 2 first
        self.assertEqual(second.recent, frozenset({2}))
        self.ok(first.sync())
        self.assertEqual(first.recent, frozenset({1}))

    def test_examine_does_not_take_recent(self) -> None:
        self.deliver()
        examine = self.open(readonly=True)
        self.assertEqual(examine.recent, frozenset({1}))
        self.assertTrue(examine.readonly)
        self.assertEqual(self.open().recent, frozenset({1}))

    def test_readonly_refuses_changes(self) -> None:
        self.deliver()
        session = self.open(readonly=True)
        for d in (session.set_flags([1], ["\\Seen"], "add"), session.expunge(),
                  session.delete([1]), session.move([1], "Archive")):
            self.assertIsInstance(self.failureResultOf(d, StoreError).value, StoreError)
        self.assertEqual(self.uids(self.open()), [1])
        self.assertEqual(list(self.ok(session.copy([1], "Archive")).keys()), [1])

    def test_set_flags_modes(self) -> None:
        self.deliver()
        session = self.open()
        [info] = self.ok(session.set_flags([1], ["\\seen", "\\Recent", "$Label1"], "add"))
        self.assertEqual(info.flags, {"\\Seen", "$Label1"})
        [info] = self.ok(session.set_flags([1], ["\\Flagged"], "add"))
        self.assertEqual(info.flags, {"\\Seen", "$Label1", "\\Flagged"})
        [info] = self.ok(session.set_flags([1], ["\\SEEN", "$Label1"], "remove"))
        self.assertEqual(info.flags, {"\\Flagged"})
        [info] = self.ok(session.set_flags([1], ["\\Answered", "\\Draft", "$Forwarded"],
                                           "replace"))
        self.assertEqual(info.flags, {"\\Answered", "\\Draft", "$Forwarded"})
        self.assertEqual(session.messages()[0].flags, info.flags)
        self.assertEqual(self.ok(session.set_flags([99], ["\\Seen"], "add")), [])

    def test_key_is_stable_across_flag_changes(self) -> None:
        self.deliver()
        session = self.open()
        key = session.messages()[0].key
        self.ok(session.set_flags([1], ["\\Seen", "\\Deleted"], "add"))
        self.ok(session.set_flags([1], ["\\Seen"], "remove"))
        self.assertEqual(self.open().messages()[0].key, key)

    def test_own_flag_change_not_reported_again(self) -> None:
        self.deliver()
        one, two = self.open(), self.open()
        self.ok(one.set_flags([1], ["\\Seen"], "add"))
        self.assertFalse(self.ok(one.sync()))
        changes = self.ok(two.sync())
        self.assertEqual([m.flags for m in changes.flags], [{"\\Seen"}])

    def test_two_sessions_lose_no_flag(self) -> None:
        self.deliver()
        one, two = self.open(), self.open()
        d1 = one.set_flags([1], ["\\Seen"], "add")
        d2 = two.set_flags([1], ["\\Flagged"], "add")
        self.ok(d1)
        self.ok(d2)
        self.assertEqual(self.open().messages()[0].flags, {"\\Seen", "\\Flagged"})

    def test_expunge_only_deleted(self) -> None:
        for _ in range(4):
            self.deliver()
        session = self.open()
        self.ok(session.set_flags([1, 3, 4], ["\\Deleted"], "add"))
        self.assertEqual(self.ok(session.expunge([3, 4, 2])), [3, 4])
        self.assertEqual(self.uids(session), [1, 2, 3, 4])  # until sync
        self.assertEqual(self.ok(session.sync()).expunged, (3, 4))
        self.assertEqual(self.ok(session.expunge()), [1])
        self.ok(session.sync())
        self.assertEqual(self.uids(session), [2])
        self.assertEqual(self.ok(self.store.status(ALICE, "INBOX")).messages, 1)

    def test_delete_ignores_flags(self) -> None:
        for _ in range(3):
            self.deliver()
        session = self.open()
        self.assertEqual(self.ok(session.delete([3, 1, 7])), [1, 3])
        self.assertEqual(self.uids(self.open()), [2])
        self.failureResultOf(session.open_message(1), NoSuchMessage)

    def test_open_message_unknown(self) -> None:
        self.failureResultOf(self.open().open_message(5), NoSuchMessage)
        self.failureResultOf(self.open().read_message(5), NoSuchMessage)

    def test_read_message_is_open_and_read(self) -> None:
        self.deliver()
        session = self.open()
        uid = self.uids(session)[0]
        self.assertEqual(self.ok(session.read_message(uid)), self.read(session, uid))
        self.assertTrue(self.ok(session.read_message(uid)).endswith(b"\r\n"))

    def test_append(self) -> None:
        session = self.open("Drafts")
        uid = self.ok(session.append(MESSAGE, ["\\Draft", "$Todo"], internal_date=99.0))
        self.assertEqual(uid, 1)
        [info] = self.ok(session.sync()).added
        self.assertEqual((info.flags, info.internal_date, info.size),
                         ({"\\Draft", "$Todo"}, 99.0, len(CRLF)))
        self.assertEqual(self.read(session, 1), CRLF)

    def test_copy_keeps_flags_and_content(self) -> None:
        self.deliver()
        self.deliver(b"second\n")
        session = self.open()
        self.ok(session.set_flags([2], ["\\Seen", "$Keep"], "add"))
        self.assertEqual(self.ok(session.copy([2, 1, 9], "Archive")), {1: 1, 2: 2})
        archive = self.open("Archive")
        self.assertEqual([m.flags for m in archive.messages()], [set(), {"\\Seen", "$Keep"}])
        self.assertEqual(self.read(archive, 2), b"second\r\n")
        self.assertEqual(self.uids(self.open()), [1, 2])
        status = self.ok(self.store.status(ALICE, "Archive"))
        self.assertEqual((status.messages, status.uidnext), (2, 3))

    def test_move(self) -> None:
        for _ in range(3):
            self.deliver()
        session = self.open()
        self.assertEqual(self.ok(session.move([2, 3], "Trash")), {2: 1, 3: 2})
        self.assertEqual(self.ok(session.sync()).expunged, (2, 3))
        self.assertEqual(self.uids(self.open("Trash")), [1, 2])
        self.assertEqual(self.ok(self.store.usage(ALICE)).messages, 3)

    def test_copy_to_missing_folder(self) -> None:
        self.deliver()
        self.failureResultOf(self.open().copy([1], "Nowhere"), NoSuchFolder)

    # -- folders --------------------------------------------------------------

    def test_new_account_folders(self) -> None:
        folders = {f.name: f for f in self.ok(self.store.folders(ALICE))}
        self.assertEqual(sorted(folders), ["Archive", "Drafts", "INBOX", "Junk", "Sent",
                                           "Trash"])
        self.assertEqual(folders["Sent"].special_use, "\\Sent")
        self.assertEqual(folders["Junk"].special_use, "\\Junk")
        self.assertEqual(folders["INBOX"].special_use, None)
        self.assertTrue(all(f.subscribed for f in folders.values()))

    def test_create_nested_creates_parents(self) -> None:
        self.ok(self.store.create_folder(ALICE, "Lists/Twisted/dev"))
        folders = {f.name: f for f in self.ok(self.store.folders(ALICE))}
        self.assertIn("Lists", folders)
        self.assertTrue(folders["Lists"].has_children)
        self.assertTrue(folders["Lists/Twisted"].has_children)
        self.assertFalse(folders["Lists/Twisted/dev"].has_children)
        self.assertFalse(folders["Lists/Twisted/dev"].subscribed)
        self.assertEqual(self.ok(self.store.status(ALICE, "Lists/Twisted/dev")).messages, 0)

    def test_create_existing(self) -> None:
        self.failureResultOf(self.store.create_folder(ALICE, "Sent"), FolderExists)
        self.failureResultOf(self.store.create_folder(ALICE, "inbox"), FolderExists)

    def test_invalid_names(self) -> None:
        for name in ["", "a//b", "/a", "a/", "a*", "50%", "a\x01b", "x" * 300]:
            self.failureResultOf(self.store.create_folder(ALICE, name), InvalidFolderName)
        self.failureResultOf(self.store.open_folder(ALICE, "a//b"), InvalidFolderName)

    def test_odd_names_round_trip(self) -> None:
        names = ["Lists.2024", "Grüße/Ünïcode 📬", "a&b", "..", "~x", "Dot.", "INBOX/child"]
        for name in names:
            self.ok(self.store.create_folder(ALICE, name))
        listed = [f.name for f in self.ok(self.store.folders(ALICE))]
        for name in names:
            self.assertIn(name, listed)
            session = self.open(name)
            self.assertEqual(session.name, name)
            self.assertEqual(self.ok(session.append(MESSAGE)), 1)
        self.assertEqual(self.ok(self.store.status(ALICE, "Lists.2024")).messages, 1)
        self.assertNotIn("Lists", listed)

    def test_inbox_is_case_insensitive(self) -> None:
        self.deliver()
        session = self.open("iNbOx")
        self.assertEqual((session.name, self.uids(session)), ("INBOX", [1]))
        self.failureResultOf(self.store.open_folder(ALICE, "sent"), NoSuchFolder)

    def test_delete_folder(self) -> None:
        self.ok(self.store.create_folder(ALICE, "Old"))
        session = self.open("Old")
        self.ok(session.append(MESSAGE))
        self.ok(session.sync())
        validity = session.uidvalidity
        self.ok(self.store.delete_folder(ALICE, "Old"))
        self.failureResultOf(self.store.status(ALICE, "Old"), NoSuchFolder)
        self.assertEqual(self.ok(session.sync()).expunged, (1,))
        self.assertNotIn("Old", [f.name for f in self.ok(self.store.folders(ALICE))])
        self.clock.advance(5)
        self.ok(self.store.create_folder(ALICE, "Old"))
        status = self.ok(self.store.status(ALICE, "Old"))
        self.assertEqual(status.messages, 0)
        self.assertNotEqual(status.uidvalidity, validity)

    def test_delete_refusals(self) -> None:
        self.failureResultOf(self.store.delete_folder(ALICE, "inbox"), InvalidFolderName)
        self.failureResultOf(self.store.delete_folder(ALICE, "Nope"), NoSuchFolder)
        self.ok(self.store.create_folder(ALICE, "a/b"))
        self.failureResultOf(self.store.delete_folder(ALICE, "a"), InvalidFolderName)
        self.ok(self.store.delete_folder(ALICE, "a/b"))
        self.ok(self.store.delete_folder(ALICE, "a"))

    def test_rename_with_children(self) -> None:
        self.ok(self.store.create_folder(ALICE, "a/b"))
        self.ok(self.store.subscribe(ALICE, "a/b", True))
        session = self.open("a/b")
        self.ok(session.append(MESSAGE))
        before = self.ok(self.store.status(ALICE, "a/b"))
        self.ok(self.store.rename_folder(ALICE, "a", "x/y"))
        folders = {f.name: f for f in self.ok(self.store.folders(ALICE))}
        self.assertNotIn("a", folders)
        self.assertNotIn("a/b", folders)
        self.assertTrue(folders["x/y/b"].subscribed)
        self.assertTrue(folders["x"].has_children)
        after = self.ok(self.store.status(ALICE, "x/y/b"))
        self.assertEqual((after.uidvalidity, after.uidnext, after.messages),
                         (before.uidvalidity, before.uidnext, 1))
        self.assertEqual(self.uids(self.open("x/y/b")), [1])

    def test_rename_refusals(self) -> None:
        self.ok(self.store.create_folder(ALICE, "a"))
        self.failureResultOf(self.store.rename_folder(ALICE, "a", "Sent"), FolderExists)
        self.failureResultOf(self.store.rename_folder(ALICE, "a", "INBOX"), FolderExists)
        self.failureResultOf(self.store.rename_folder(ALICE, "zz", "b"), NoSuchFolder)
        self.failureResultOf(self.store.rename_folder(ALICE, "a", "a/b"), InvalidFolderName)
        self.failureResultOf(self.store.rename_folder(ALICE, "a", "b*"), InvalidFolderName)

    def test_rename_inbox_moves_its_messages(self) -> None:
        for _ in range(2):
            self.deliver()
        inbox = self.open()
        self.ok(inbox.set_flags([2], ["\\Seen"], "add"))
        before = self.ok(self.store.status(ALICE, "INBOX"))
        self.ok(self.store.rename_folder(ALICE, "INBOX", "Old mail"))
        after = self.ok(self.store.status(ALICE, "INBOX"))
        self.assertEqual((after.messages, after.uidvalidity, after.uidnext),
                         (0, before.uidvalidity, before.uidnext))
        moved = self.open("Old mail")
        self.assertEqual([m.flags for m in moved.messages()], [set(), {"\\Seen"}])
        self.assertEqual(self.read(moved, 1), CRLF)
        self.assertEqual(self.ok(inbox.sync()).expunged, (1, 2))
        self.deliver()
        self.assertEqual(self.uids(self.open()), [3])

    def test_subscriptions(self) -> None:
        self.ok(self.store.subscribe(ALICE, "Sent", False))
        self.assertFalse({f.name: f for f in self.ok(self.store.folders(ALICE))}["Sent"]
                         .subscribed)
        self.ok(self.store.subscribe(ALICE, "Sent", True))
        self.assertTrue({f.name: f for f in self.ok(self.store.folders(ALICE))}["Sent"]
                        .subscribed)
        self.failureResultOf(self.store.subscribe(ALICE, "Nope", True), NoSuchFolder)

    def test_missing_folder(self) -> None:
        self.failureResultOf(self.store.status(ALICE, "Nope"), NoSuchFolder)
        self.failureResultOf(self.store.open_folder(ALICE, "Nope"), NoSuchFolder)

    # -- POP3 lock ------------------------------------------------------------

    def test_pop3_lock(self) -> None:
        release = self.ok(self.store.lock_pop3(ALICE))
        self.failureResultOf(self.store.lock_pop3(ALICE), MailboxInUse)
        other = self.ok(self.store.lock_pop3(BOB))
        release()
        release()  # harmless
        again = self.ok(self.store.lock_pop3(ALICE))
        self.failureResultOf(self.store.lock_pop3(ALICE), MailboxInUse)
        again()
        other()

    # -- quota ----------------------------------------------------------------

    def test_quota_bytes(self) -> None:
        self.store = self.make_store(quota_for=lambda a: Quota(max_bytes=2 * len(CRLF) + 10))
        self.assertEqual(self.deliver().stored, (ALICE,))
        self.assertEqual(self.deliver().stored, (ALICE,))
        error = self.deliver().refused[ALICE]
        self.assertIsInstance(error, QuotaExceeded)
        self.assertTrue(error.temporary)
        self.assertEqual((error.code, error.enhanced), (452, "4.2.2"))
        session = self.open()
        self.ok(session.delete([1]))
        self.assertEqual(self.deliver().stored, (ALICE,))

    def test_quota_message_larger_than_quota(self) -> None:
        self.store = self.make_store(quota_for=lambda a: Quota(max_bytes=10))
        error = self.deliver(MESSAGE, ALICE, BOB).refused[ALICE]
        self.assertEqual((error.code, error.enhanced, error.temporary), (552, "5.2.2", False))
        self.assertEqual(self.ok(self.store.usage(ALICE)), Usage(0, 0))

    def test_quota_messages_all_folders_and_append(self) -> None:
        self.store = self.make_store(quota_for=lambda a: Quota(max_messages=2)
                                     if a == ALICE else Quota())
        self.ok(self.open("Sent").append(MESSAGE))
        self.deliver()
        self.assertIsInstance(self.deliver(MESSAGE, ALICE, BOB).refused[ALICE], QuotaExceeded)
        self.failureResultOf(self.open("Sent").append(MESSAGE), QuotaExceeded)
        self.failureResultOf(self.open().copy([1], "Archive"), QuotaExceeded)
        self.assertEqual(self.ok(self.store.usage(ALICE)), Usage(2 * len(CRLF), 2))
        self.assertEqual(self.ok(self.store.usage(BOB)), Usage(len(CRLF), 1))


class MemoryStoreContractTests(StoreContract, SynchronousTestCase):
    def make_store(self, **kw: Any) -> Any:
        return MemoryStore(clock=self.clock, **kw)


class MaildirStoreFactory:
    """C{make_store} for the contract tests: a MaildirStore on a temporary
    directory, its work run synchronously."""

    clock: Any
    mktemp: Any
    addCleanup: Any

    def make_store(self, **kw: Any) -> Any:
        root = FilePath(self.mktemp())
        store = MaildirStore(root.path, run_in_thread=synchronous, clock=self.clock,
                             hostname="test.example", **kw)
        self.addCleanup(store.close)
        return store


class MaildirStoreContractTests(MaildirStoreFactory, StoreContract, SynchronousTestCase):

    def test_nothing_runs_on_the_caller_thread(self) -> None:
        """Every disk operation goes through run_in_thread: with a runner
        that never runs anything, no file is created."""
        root = FilePath(self.mktemp())
        store = MaildirStore(root.path, run_in_thread=lambda f, *a, **k: Deferred(),
                             clock=self.clock)
        for d in (store.deliver([ALICE], MESSAGE), store.open_folder(ALICE, "INBOX"),
                  store.folders(ALICE), store.create_folder(ALICE, "x"),
                  store.lock_pop3(ALICE), store.usage(ALICE), store.status(ALICE, "INBOX")):
            self.assertNoResult(d)
        self.assertFalse(os.path.exists(root.path))
