"""
Tests for what an idle account costs in L{gateway.store.maildir}: its index
connection is closed after C{index_idle} seconds and opened again on
demand, and the poll for changes by other programs runs no SQL (and takes
no account lock) while nothing moved, yet still finds what other programs
and other processes change, so that IDLE hears of it (issue 7).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from gateway.store.fs import FileSystem
from tests.test_store_contract import ALICE, MESSAGE
from tests.test_store_maildir import MaildirTestCase

IDLE = 30.0  # the store's default index_idle


class RunSpy:
    """A synchronous run_in_thread that records the functions it ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.ran.append(getattr(f, "__name__", ""))
        return maybeDeferred(f, *args)


class IdleTestCase(MaildirTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.spy = RunSpy()
        self.store = self.make_store(run_in_thread=self.spy)

    def settle(self) -> None:
        """Make the Maildir's directories look old (their mtimes settled,
        see L{gateway.store.folder}) and let one tick record them."""
        past = time.time_ns() - 100 * 10**9
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.inbox, sub), ns=(past, past))
        self.clock.advance(1)

    def idle_session(self) -> tuple[Any, list[None]]:
        self.ok(self.store.deliver([ALICE], MESSAGE))
        session = self.open()
        calls: list[None] = []
        session.on_change(lambda: calls.append(None))
        self.settle()
        self.clock.advance(IDLE)
        self.assertTrue(self.index().suspended)
        return session, calls

    def index(self) -> Any:
        return self.store._accounts[ALICE].index


class SuspendTests(IdleTestCase):
    def test_index_closed_when_idle(self) -> None:
        session = self.open()
        self.settle()  # the tick's look records the settled mtimes: a call
        self.clock.advance(IDLE - 1)
        self.assertFalse(self.index().suspended)
        self.clock.advance(1)
        self.assertTrue(self.index().suspended)
        self.assertFalse(os.path.exists(os.path.join(self.inbox, "gateway-index.sqlite-shm")))
        # The session still works: its call opens the index again.
        self.assertEqual(len(self.ok(session.sync()).added), 0)
        self.assertFalse(self.index().suspended)

    def test_a_call_keeps_it_open(self) -> None:
        self.open()
        self.settle()
        self.clock.advance(IDLE - 2)
        self.ok(self.store.status(ALICE, "INBOX"))
        self.clock.advance(IDLE - 1)
        self.assertFalse(self.index().suspended)
        self.clock.advance(1)
        self.assertTrue(self.index().suspended)

    def test_delivery_to_a_suspended_account(self) -> None:
        """The delivery reopens the index, is fsynced before it is
        acknowledged, and its session is told at once."""
        session, calls = self.idle_session()
        self.fs.log.clear()
        self.ok(self.store.deliver([ALICE], MESSAGE))
        self.assertIn(("fsync_dir", os.path.join(self.inbox, "new")), self.fs.log)
        self.assertEqual(len(calls), 1)
        [added] = self.ok(session.sync()).added
        self.assertEqual(added.uid, 2)

    def test_folders_without_sessions_are_dropped(self) -> None:
        self.ok(self.store.create_folder(ALICE, "Other"))
        self.ok(self.ok(self.store.open_folder(ALICE, "Other")).close())
        self.open()
        self.assertEqual(set(self.store._accounts[ALICE].folders), {"INBOX", "Other"})
        self.clock.advance(IDLE)
        self.assertEqual(set(self.store._accounts[ALICE].folders), {"INBOX"})

    def test_polling_stops_when_nothing_is_open(self) -> None:
        session = self.open()
        self.ok(session.close())
        self.assertTrue(self.store._poller.running)  # to close the index
        self.clock.advance(IDLE)
        self.assertTrue(self.index().suspended)
        self.clock.advance(1)
        self.assertFalse(self.store._poller.running)
        self.ok(self.store.usage(ALICE))
        self.assertTrue(self.store._poller.running)


class PollTests(IdleTestCase):
    def test_nothing_moved_no_sql(self) -> None:
        """An idle account costs one shared worker call per tick, which
        stats; no call in its lock, no transaction."""
        self.idle_session()
        self.spy.ran.clear()
        for _ in range(5):
            self.clock.advance(1)
        self.assertEqual(self.spy.ran, ["changed_accounts"] * 5)
        self.assertTrue(self.index().suspended)

    def test_one_look_for_all_accounts(self) -> None:
        accounts = [f"user{i}@example.org" for i in range(5)]
        for account in accounts:
            self.ok(self.store.open_folder(account, "INBOX"))
        self.clock.advance(IDLE + 1)
        self.spy.ran.clear()
        self.clock.advance(1)
        self.assertEqual(self.spy.ran.count("changed_accounts"), 1)

    def test_another_program_delivers(self) -> None:
        session, calls = self.idle_session()
        with open(os.path.join(self.inbox, "new", "external.1"), "wb") as f:
            f.write(b"Subject: x\r\n\r\nbody\r\n")
        self.clock.advance(1)
        self.assertEqual(len(calls), 1)
        [added] = self.ok(session.sync()).added
        self.assertEqual(added.key, "external.1")

    def test_another_program_changes_flags_and_expunges(self) -> None:
        session, calls = self.idle_session()
        [name] = os.listdir(os.path.join(self.inbox, "cur"))
        old = os.path.join(self.inbox, "cur", name)
        os.rename(old, old + "F")
        self.clock.advance(1)
        self.assertEqual(len(calls), 1)
        self.assertEqual([m.flags for m in self.ok(session.sync()).flags], [{"\\Flagged"}])
        self.settle()
        self.clock.advance(IDLE)
        os.unlink(old + "F")
        self.clock.advance(1)
        self.assertEqual(len(calls), 2)
        self.assertEqual(self.ok(session.sync()).expunged, (1,))

    def test_another_process_changes_only_the_index(self) -> None:
        """A keyword set by another gateway process on the same directory
        renames no file; the index's files tell."""
        other = self.make_store(FileSystem())
        session, calls = self.idle_session()
        theirs = self.open(store=other)
        self.clock.advance(1)  # their open wrote its \Recent: we look
        self.clock.advance(IDLE)
        calls.clear()
        self.assertTrue(self.index().suspended)
        self.ok(theirs.set_flags([1], ["$Work"], "add"))
        self.clock.advance(1)
        self.assertEqual(len(calls), 1)
        self.assertEqual([m.flags for m in self.ok(session.sync()).flags], [{"$Work"}])


class OpenIndexesTests(IdleTestCase):
    def test_least_recently_used_closed_over_the_bound(self) -> None:
        """Many accounts waking at once (a login storm) keep at most
        C{open_indexes} connections open after a second."""
        self.store = self.make_store(run_in_thread=self.spy, open_indexes=2)
        accounts = [f"user{i}@example.org" for i in range(4)]
        for account in accounts:
            self.ok(self.store.usage(account))
            self.clock.advance(0.25)
        self.clock.advance(1)
        index = {a: self.store._accounts[a].index for a in accounts}
        self.assertEqual([index[a].suspended for a in accounts], [True, True, False, False])
        self.ok(self.store.usage(accounts[0]))  # opens again on demand
        self.assertFalse(index[accounts[0]].suspended)
