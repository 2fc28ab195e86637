"""
Edge cases of the Maildir store's cheap poll (L{gateway.store.maildir}),
its "dirty mtime" rule (L{gateway.store.folder}) and its idle index
(L{gateway.store.index}): changes made within one mtime tick, changes by
other programs and other processes while the index is closed, the index
closing around a running call, UID stability across a close, and what a
poll costs when nothing changed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from gateway.store.fs import FileSystem
from gateway.store.maildir import MaildirStore
from tests.test_store_contract import ALICE, MESSAGE
from tests.test_store_idle import IDLE, IdleTestCase
from tests.test_store_maildir import ManualRunner, files

BODY = b"Subject: x\r\n\r\nbody\r\n"


class CallSpy:
    """Counts the calls of one method of one object (an index's C{begin},
    its C{suspend}), which it wraps."""

    def __init__(self, target: Any, name: str) -> None:
        self.calls = 0
        self._method: Callable[[], Any] = getattr(target, name)
        setattr(target, name, self)

    def __call__(self) -> Any:
        self.calls += 1
        return self._method()


def coarse_now_ns() -> int:
    """Now, as a file system with one-second timestamps would record it."""
    return time.time_ns() // 10**9 * 10**9


class ReviewTestCase(IdleTestCase):
    def coarse(self, sub: str, when: int) -> None:
        """Give C{sub} of the inbox the coarse mtime C{when}."""
        os.utime(os.path.join(self.inbox, sub), ns=(when, when))

    def write(self, sub: str, name: str, body: bytes = BODY) -> str:
        path = os.path.join(self.inbox, sub, name)
        with open(path, "wb") as f:
            f.write(body)
        return path

    def watched(self, store: MaildirStore | None = None) -> tuple[Any, list[None]]:
        session = self.open(store=store)
        calls: list[None] = []
        session.on_change(lambda: calls.append(None))
        return session, calls

    def cur_name(self, key: str) -> str:
        [name] = [n for n in files(os.path.join(self.inbox, "cur")) if n.startswith(key)]
        return name

    def assert_quiet(self, session: Any, calls: list[None]) -> None:
        """Once the directories settle, further polls report nothing more
        (C{calls} holds the one report already seen)."""
        self.settle()
        for _ in range(3):
            self.clock.advance(1)
        self.assertEqual(len(calls), 1)
        again = self.ok(session.sync())
        self.assertEqual((again.added, again.expunged, again.flags), ((), (), ()))


class SameTickTests(ReviewTestCase):
    """
    A change made within the mtime tick of the listing before it leaves the
    directory's mtime as that listing saw it (a file system with one-second
    timestamps, simulated with C{os.utime}): the dirty-mtime rule must list
    again at the next poll.
    """

    def test_arrival_in_new_within_the_same_second(self) -> None:
        session, calls = self.watched()
        self.settle()
        tick = coarse_now_ns()
        self.write("new", "ext.1")
        self.coarse("new", tick)
        self.clock.advance(1)
        self.assertEqual([m.key for m in self.ok(session.sync()).added], ["ext.1"])
        self.write("new", "ext.2")  # same second: new/'s mtime does not move
        self.coarse("new", tick)
        self.clock.advance(1)
        self.assertEqual(len(calls), 2)
        self.assertEqual([m.key for m in self.ok(session.sync()).added], ["ext.2"])

    def test_flag_rename_within_the_same_second(self) -> None:
        self.ok(self.store.deliver([ALICE], MESSAGE))
        session, calls = self.watched()
        key = session.messages()[0].key
        self.settle()
        tick = coarse_now_ns()
        cur = os.path.join(self.inbox, "cur")
        os.rename(os.path.join(cur, self.cur_name(key)), os.path.join(cur, key + ":2,S"))
        self.coarse("cur", tick)
        self.clock.advance(1)
        self.assertEqual([m.flags for m in self.ok(session.sync()).flags], [{"\\Seen"}])
        os.rename(os.path.join(cur, key + ":2,S"), os.path.join(cur, key + ":2,FS"))
        self.coarse("cur", tick)
        self.clock.advance(1)
        self.assertEqual(len(calls), 2)
        changes = self.ok(session.sync())
        self.assertEqual([(m.uid, m.flags) for m in changes.flags],
                         [(1, {"\\Seen", "\\Flagged"})])

    def test_deletion_within_the_same_second(self) -> None:
        for _ in range(2):
            self.ok(self.store.deliver([ALICE], MESSAGE))
        session, calls = self.watched()
        keys = [m.key for m in session.messages()]
        self.settle()
        tick = coarse_now_ns()
        os.unlink(os.path.join(self.inbox, "cur", self.cur_name(keys[0])))
        self.coarse("cur", tick)
        self.clock.advance(1)
        self.assertEqual(self.ok(session.sync()).expunged, (1,))
        os.unlink(os.path.join(self.inbox, "cur", self.cur_name(keys[1])))
        self.coarse("cur", tick)
        self.clock.advance(1)
        self.assertEqual(len(calls), 2)
        self.assertEqual(self.ok(session.sync()).expunged, (2,))

    def test_settled_mtime_stops_the_listing(self) -> None:
        """The rule costs a listing only until the mtime is a second old."""
        session, calls = self.watched()
        self.settle()
        self.write("new", "ext.1")
        self.coarse("new", coarse_now_ns())
        self.clock.advance(1)
        self.ok(session.sync())
        past = time.time_ns() - 100 * 10**9
        for sub in ("new", "cur"):  # (the sync moved ext.1 to cur/)
            self.coarse(sub, past)
        self.clock.advance(1)  # lists once more and records the settled mtime
        self.fs.log.clear()
        self.spy.ran.clear()
        for _ in range(3):
            self.clock.advance(1)
        self.assertEqual((self.fs.ops("listdir"), self.spy.ran), ([], ["changed_accounts"] * 3))


class OneDirectoryListedTests(ReviewTestCase):
    """Only the directory whose mtime moved is listed: what is in the
    other one must stay as it was."""

    def test_change_in_cur_keeps_the_messages_in_new(self) -> None:
        """
        A flag change in C{cur/} by another program lists C{cur/} alone; a
        message still in C{new/} (an EXAMINE session does not move it) is
        not expunged, nor given a new UID at the next listing of C{new/}.
        """
        self.ok(self.store.deliver([ALICE], MESSAGE))
        self.ok(self.open().close())  # moves the first message to cur/
        self.ok(self.store.deliver([ALICE], MESSAGE))
        session = self.open(readonly=True)
        calls: list[None] = []
        session.on_change(lambda: calls.append(None))
        first, second = [m.key for m in session.messages()]
        self.assertEqual(files(os.path.join(self.inbox, "new")), [second])
        self.settle()
        cur = os.path.join(self.inbox, "cur")
        os.rename(os.path.join(cur, self.cur_name(first)), os.path.join(cur, first + ":2,F"))
        self.clock.advance(1)
        changes = self.ok(session.sync())
        self.assertEqual(([m.uid for m in changes.flags], changes.expunged), ([1], ()))
        self.write("new", "ext.3")  # new/ is listed again
        self.clock.advance(1)
        changes = self.ok(session.sync())
        self.assertEqual(([(m.uid, m.key) for m in changes.added], changes.expunged),
                         ([(3, "ext.3")], ()))
        self.assertEqual([m.uid for m in session.messages()], [1, 2, 3])


class ClosedIndexTests(ReviewTestCase):
    """Changes made while the account's index is closed."""

    def test_other_program_while_closed(self) -> None:
        """Arrival, flag rename and deletion by another program while the
        index is closed: reported once as EXISTS, FLAGS and EXPUNGE; UIDs
        and UIDVALIDITY as before."""
        self.ok(self.store.deliver([ALICE], MESSAGE))
        session, calls = self.idle_session()
        uidvalidity = session.uidvalidity
        [first, second] = [m.key for m in session.messages()]
        cur = os.path.join(self.inbox, "cur")
        os.rename(os.path.join(cur, self.cur_name(first)), os.path.join(cur, first + ":2,RS"))
        os.unlink(os.path.join(cur, self.cur_name(second)))
        self.write("new", "ext.3")
        self.clock.advance(1)
        self.assertFalse(self.index().suspended)
        self.assertEqual(len(calls), 1)
        changes = self.ok(session.sync())
        self.assertEqual(([(m.uid, m.key) for m in changes.added], changes.expunged,
                          [(m.uid, m.key, m.flags) for m in changes.flags]),
                         ([(3, "ext.3")], (2,), [(1, first, {"\\Answered", "\\Seen"})]))
        self.assert_quiet(session, calls)
        status = self.ok(self.store.status(ALICE, "INBOX"))
        self.assertEqual((status.uidvalidity, status.uidnext), (uidvalidity, 4))

    def test_other_store_while_closed_reported_once(self) -> None:
        """Another gateway process delivers, sets a keyword and expunges
        while our index is closed: its generation tells us once, the UIDs
        are its UIDs, and ours continue after them."""
        self.ok(self.store.deliver([ALICE], MESSAGE))
        other = self.make_store(FileSystem())
        theirs = self.open(store=other)
        session, calls = self.idle_session()  # (its delivery is UID 2)
        calls.clear()
        self.assertTrue(self.index().suspended)
        self.ok(other.deliver([ALICE], MESSAGE))
        self.ok(theirs.sync())
        self.ok(theirs.set_flags([2], ["$Work", "\\Deleted"], "add"))
        self.ok(theirs.expunge())
        self.ok(theirs.set_flags([1], ["$Done"], "add"))
        self.clock.advance(1)
        self.assertEqual(len(calls), 1)
        changes = self.ok(session.sync())
        self.assertEqual(([m.uid for m in changes.added], changes.expunged,
                          [(m.uid, m.flags) for m in changes.flags]),
                         ([3], (2,), [(1, {"$Done"})]))
        self.assert_quiet(session, calls)
        self.ok(self.store.deliver([ALICE], MESSAGE))
        self.assertEqual([m.uid for m in self.ok(session.sync()).added], [4])

    def test_other_store_writes_just_before_the_close(self) -> None:
        """
        Another process writes after our last transaction and before the
        tick that closes our index: the close must not record the index
        files as seen, or the poll never looks and the session never hears.
        """
        other = self.make_store(FileSystem())
        theirs = self.open(store=other)
        self.ok(self.store.deliver([ALICE], MESSAGE))
        session, calls = self.watched()
        self.ok(theirs.sync())
        self.settle()
        acct = self.store._accounts[ALICE]
        while self.clock.seconds() + 1 - acct.used < IDLE:
            self.clock.advance(1)
        calls.clear()
        self.assertFalse(self.index().suspended)
        self.ok(theirs.set_flags([1], ["$Work"], "add"))
        closes = CallSpy(self.index(), "suspend")
        self.clock.advance(1)  # the closing tick
        self.assertEqual(closes.calls, 1)
        for _ in range(2):
            self.clock.advance(1)
        self.assertEqual(len(calls), 1)
        self.assertEqual([m.flags for m in self.ok(session.sync()).flags], [{"$Work"}])

    def test_uids_and_uidvalidity_across_close_and_reopen(self) -> None:
        for _ in range(2):
            self.ok(self.store.deliver([ALICE], MESSAGE))
        session, calls = self.idle_session()
        before = (session.uidvalidity, [(m.uid, m.key) for m in session.messages()])
        self.ok(session.close())
        self.clock.advance(IDLE)
        self.assertTrue(self.index().suspended)
        again = self.open()
        self.assertEqual((again.uidvalidity, [(m.uid, m.key) for m in again.messages()]),
                         before)
        self.ok(self.store.deliver([ALICE], MESSAGE))
        self.assertEqual([m.uid for m in self.ok(again.sync()).added], [4])

    def test_renamed_while_closed_keeps_its_uid(self) -> None:
        """A message moved from new/ to cur/ with flags by another program
        while the index is closed keeps its UID (and key)."""
        self.ok(self.store.deliver([ALICE], MESSAGE))
        session = self.open(readonly=True)  # leaves it in new/
        self.settle()
        self.clock.advance(IDLE)
        self.assertTrue(self.index().suspended)
        [key] = files(os.path.join(self.inbox, "new"))
        os.rename(os.path.join(self.inbox, "new", key),
                  os.path.join(self.inbox, "cur", key + ":2,S"))
        self.clock.advance(1)
        changes = self.ok(session.sync())
        self.assertEqual(([(m.uid, m.key, m.flags) for m in changes.flags], changes.added,
                          changes.expunged), ([(1, key, {"\\Seen"})], (), ()))


class CloseRaceTests(ReviewTestCase):
    """The index closes only between the account's calls."""

    def setUp(self) -> None:
        super().setUp()
        self.runner = ManualRunner()
        self.store = self.make_store(run_in_thread=self.runner)

    def run_all(self) -> None:
        self.runner.run_all()

    def delivered_session(self) -> Any:
        """One message delivered to ALICE, and a session on her INBOX."""
        d = self.store.deliver([ALICE], MESSAGE)
        self.run_all()
        self.ok(d)
        opened = self.store.open_folder(ALICE, "INBOX")
        self.run_all()
        return self.ok(opened)

    def test_not_closed_under_a_running_read(self) -> None:
        session = self.delivered_session()
        # A read that needs the lock (the file moved: the locked path).
        cur = os.path.join(self.inbox, "cur")
        [name] = files(cur)
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "S"))
        read = session.read_message(1)
        self.runner.run_one()  # the unlocked read: the file moved
        self.assertEqual(self.runner.queue[0][0].__name__, "_in_thread")
        for _ in range(int(IDLE) + 5):
            self.clock.advance(1)  # its call waits in its worker thread
        self.assertFalse(self.index().suspended)
        self.assertNotIn("close_index", [job[0].__name__ for job in self.runner.queue])
        self.runner.run_one()  # the read, in the account's lock
        self.assertEqual(self.ok(read), MESSAGE.replace(b"\n", b"\r\n"))
        self.run_all()
        self.assertFalse(self.index().suspended)

    def test_reopen_racing_a_close(self) -> None:
        """A call made while the close waits for its worker runs after it
        and opens the index again; nothing is lost."""
        session = self.delivered_session()
        uidvalidity = session.uidvalidity
        past = time.time_ns() - 100 * 10**9
        for sub in ("new", "cur"):
            self.coarse(sub, past)
        for _ in range(int(IDLE) + 1):
            self.clock.advance(1)
            names = [job[0].__name__ for job in self.runner.queue]
            if "close_index" in names:
                break
            self.run_all()
        self.assertIn("close_index", names)
        flags = session.set_flags([1], ["$Kw"], "add")
        delivered = self.store.deliver([ALICE], MESSAGE)
        self.run_all()
        self.assertEqual([m.flags for m in self.ok(flags)], [{"$Kw"}])
        self.ok(delivered)
        self.assertFalse(self.index().suspended)
        synced = session.sync()
        self.run_all()
        self.assertEqual([m.uid for m in self.ok(synced).added], [2])
        self.assertEqual(session.uidvalidity, uidvalidity)
        self.assertEqual([m.flags for m in session.messages()], [{"$Kw"}, set()])


class CheapPollTests(ReviewTestCase):
    """Nothing changed: no transaction, with the index open or closed, and
    with two processes on the account."""

    def test_no_transaction_with_the_index_open(self) -> None:
        session, calls = self.watched()
        self.settle()
        spy = CallSpy(self.index(), "begin")
        for _ in range(5):
            self.clock.advance(1)
        self.assertFalse(self.index().suspended)
        self.assertEqual((spy.calls, calls), (0, []))

    def test_no_transaction_with_the_index_closed(self) -> None:
        session, calls = self.idle_session()
        spy = CallSpy(self.index(), "begin")
        for _ in range(5):
            self.clock.advance(1)
        self.assertEqual((spy.calls, calls, self.index().suspended), (0, [], True))

    def test_two_idle_processes_do_not_wake_each_other(self) -> None:
        other = self.make_store(FileSystem())
        self.ok(self.store.deliver([ALICE], MESSAGE))
        theirs = self.open(store=other)
        session, calls = self.watched()
        self.ok(theirs.sync())
        self.ok(session.sync())
        self.settle()
        for _ in range(2):
            self.clock.advance(1)  # (each notices the other's last write)
        ours_spy = CallSpy(self.index(), "begin")
        theirs_spy = CallSpy(other._accounts[ALICE].index, "begin")
        for _ in range(5):
            self.clock.advance(1)
        self.assertEqual((ours_spy.calls, theirs_spy.calls), (0, 0))

    def test_sync_with_nothing_new_writes_nothing(self) -> None:
        """An IMAP NOOP (a sync with nothing new) writes nothing to the
        index: no fsync, and no other process woken to reload it."""
        self.ok(self.store.deliver([ALICE], MESSAGE))
        session = self.open()
        self.settle()
        index = self.index()
        changes = index._db.total_changes
        self.ok(session.sync())
        self.ok(session.sync())
        self.assertEqual(index._db.total_changes, changes)
