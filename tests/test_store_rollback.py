"""
A session's view when the transaction around its change fails
(L{gateway.store.session}, L{gateway.store.view}).

Each store call on an account is one index transaction
(L{gateway.store.maildir.MaildirStore._in_thread}); a sync changes the
session's view and then still moves the messages it saw to C{cur/},
saves the \\Recent it took and commits.  When any of those fails (a
rename that gets EIO, SQLite's "disk full" or I/O error), the client is
answered an error and is told none of the changes, so the view must be
exactly as before: else messages enter the view (and move its sequence
numbers) without an EXISTS, and, once the folder reloads the index, a
UID the view holds can be given to another message (RFC 3501 section
2.3.1.1 forbids both).  These tests inject each failure into the real
L{MaildirStore} and check that every message keeps its UID and that the
next sync reports each change once.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway.store.fs import FileSystem
from gateway.store.index import INDEX_FILE, AccountIndex
from gateway.store.maildir import MaildirStore, _Account
from gateway.store.model import Changes, MessageInfo
from tests.test_store_contract import ALICE, MESSAGE, synchronous
from tests.test_store_maildir import MaildirTestCase

#: Keys of files that "another program" puts into new/.
K1 = "1800000001.M1P99.other"
K2 = "1800000002.M2P99.other"


class CommitFailsIndex(AccountIndex):
    """An index whose next C{fail_commits} commits fail as SQLite does
    when the disk is full."""

    fail_commits = 0

    def commit(self) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise sqlite3.OperationalError("database or disk is full")
        super().commit()


class CommitFaultStore(MaildirStore):
    """A L{MaildirStore} whose account indexes are L{CommitFailsIndex}es
    (the store opens its indexes itself: there is no parameter to pass one)."""

    def _open_account(self, acct: _Account) -> None:
        super()._open_account(acct)
        assert acct.index is not None
        acct.index.__class__ = CommitFailsIndex


class RollbackTests(MaildirTestCase):
    def make_store(self, fs: FileSystem | None = None, **kw: Any) -> MaildirStore:
        kw.setdefault("run_in_thread", synchronous)
        store = CommitFaultStore(self.root, clock=self.clock, fs=fs or self.fs,
                                 hostname="test.example", **kw)
        self.addCleanup(store.close)
        return store

    # -- helpers ------------------------------------------------------------------

    def fail_next_commit(self) -> None:
        index = self.store._accounts[ALICE].index
        assert isinstance(index, CommitFailsIndex)
        index.fail_commits = 1

    def fails(self, d: Deferred[Any]) -> Failure:
        """The failure of C{d}, whose cause the store logged."""
        failure = self.failureResultOf(d)
        self.assertEqual(len(self.flushLoggedErrors(OSError, sqlite3.Error)), 1)
        return failure

    def drop_in(self, key: str, body: bytes = MESSAGE) -> None:
        """Another program delivers a file into INBOX's new/."""
        with open(os.path.join(self.inbox, "new", key), "wb") as f:
            f.write(body)

    def take_away(self, key: str) -> None:
        """Another program removes a file from INBOX."""
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(self.inbox, sub)):
                if name.split(":")[0] == key:
                    os.unlink(os.path.join(self.inbox, sub, name))

    def sql(self, statement: str) -> None:
        """Change the index through a connection of another program."""
        db = sqlite3.connect(os.path.join(self.inbox, INDEX_FILE), isolation_level=None)
        try:
            db.execute(statement)
        finally:
            db.close()

    def told(self, session: Any, client: dict[int, MessageInfo], changes: Changes) -> None:
        """Apply C{changes} to what the client knows (UID -> info), checking
        each as the client would: a flag change keeps the message's key,
        an addition is new, an expunge was known."""
        for uid in changes.expunged:
            self.assertIn(uid, client)
            del client[uid]
        for info in changes.flags:
            self.assertIn(info.uid, client)
            self.assertEqual(info.key, client[info.uid].key,
                             f"UID {info.uid} now names another message")
            client[info.uid] = info
        for info in changes.added:
            self.assertNotIn(info.uid, client, f"UID {info.uid} reported added twice")
            client[info.uid] = info
        # The session's sequence numbers are the client's.
        self.assertEqual([(m.uid, m.key, m.flags) for m in session.messages()],
                         [(m.uid, m.key, m.flags) for _, m in sorted(client.items())])

    # -- tests --------------------------------------------------------------------

    def test_failed_move_to_cur_gives_no_uid_twice(self) -> None:
        """
        A sync lists a file another program put in C{new/} (giving it UID 1)
        and the rename to C{cur/} fails: the transaction is rolled back.
        When that file has gone and another arrived by the next sync, the
        other one gets a new UID, never UID 1 that the failed sync gave out,
        and the client is told of it once.
        """
        session = self.open()
        client: dict[int, MessageInfo] = {}
        self.drop_in(K1)
        self.fs.fault = ("rename", K1, errno.EIO)
        self.fails(session.sync())
        self.assertEqual(session.messages(), [])  # told nothing, holds nothing
        self.take_away(K1)
        self.drop_in(K2, MESSAGE + b"another\n")
        changes = self.ok(session.sync())
        self.told(session, client, changes)
        self.assertEqual([(m.uid, m.key) for m in changes.added], [(2, K2)])
        self.assertEqual(session.recent, frozenset([2]))
        self.told(session, client, self.ok(session.sync()))
        self.assertEqual(self.ok(self.store.status(ALICE, "INBOX")).uidnext, 3)

    def test_uidnext_kept_in_the_index_after_failure(self) -> None:
        """UID 1 given in memory by a failed transaction is not given again
        by a store that reads the index afresh (another process, or a
        restart)."""
        session = self.open()
        self.drop_in(K1)
        self.fs.fault = ("rename", K1, errno.EIO)
        self.fails(session.sync())
        self.take_away(K1)
        self.ok(session.sync())  # a successful transaction records it
        self.drop_in(K2)
        other = self.make_store()
        reopened = self.ok(other.open_folder(ALICE, "INBOX"))
        self.assertEqual([(m.uid, m.key) for m in reopened.messages()], [(2, K2)])

    def test_failed_commit_of_sync_reports_additions_at_next_sync(self) -> None:
        """
        The commit of a sync fails after the view took two delivered
        messages: the view stays as the client knows it (no message without
        its EXISTS), and the next sync reports both, once, with their
        \\Recent.  Another session that had read further is unaffected,
        and the change log the failed sync read is still there.
        """
        session = self.open()
        ahead = self.open()
        self.ok(self.store.deliver([ALICE], MESSAGE))
        self.ok(self.store.deliver([ALICE], MESSAGE + b"two\n"))
        self.assertEqual([m.uid for m in self.ok(ahead.sync()).added], [1, 2])
        self.assertEqual(ahead.recent, frozenset([1, 2]))
        client: dict[int, MessageInfo] = {}
        self.fail_next_commit()
        self.fails(session.sync())
        self.assertEqual(session.messages(), [])
        self.assertEqual(session.recent, frozenset())
        changes = self.ok(session.sync())
        self.told(session, client, changes)
        self.assertEqual([m.uid for m in changes.added], [1, 2])
        self.told(session, client, self.ok(session.sync()))
        self.assertEqual(self.ok(ahead.sync()), Changes((), (), ()))

    def test_failed_recent_save_keeps_the_claim_for_the_next_sync(self) -> None:
        """
        Saving the \\Recent a sync took fails (the index write raises): the
        session did not take it, so its next sync does, and a session
        opened afterwards does not see it recent again.
        """
        session = self.open()
        self.ok(self.store.deliver([ALICE], MESSAGE))
        self.sql("CREATE TRIGGER no_recent BEFORE UPDATE OF recent_uid ON folders"
                 " WHEN NEW.recent_uid > OLD.recent_uid"
                 " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
        self.fails(session.sync())
        self.assertEqual(session.messages(), [])
        self.sql("DROP TRIGGER no_recent")
        client: dict[int, MessageInfo] = {}
        changes = self.ok(session.sync())
        self.told(session, client, changes)
        self.assertEqual([m.uid for m in changes.added], [1])
        self.assertEqual(session.recent, frozenset([1]))
        self.assertEqual(self.open().recent, frozenset())

    def test_failed_flag_change_is_reported_as_it_is_on_disk(self) -> None:
        """
        The commit of a STORE fails after its rename: the client was told
        the STORE failed, so the view keeps the flags it knew, and the next
        sync reports the flags the file now has.
        """
        session = self.open()
        self.ok(self.store.deliver([ALICE], MESSAGE))
        client: dict[int, MessageInfo] = {}
        self.told(session, client, self.ok(session.sync()))
        self.fail_next_commit()
        self.fails(session.set_flags([1], ["\\Seen"], "add"))
        self.assertEqual(session.messages()[0].flags, frozenset())
        changes = self.ok(session.sync())
        self.told(session, client, changes)
        self.assertEqual([(m.uid, m.flags) for m in changes.flags],
                         [(1, frozenset(["\\Seen"]))])

    def test_failed_open_leaves_recent_and_no_view(self) -> None:
        """A SELECT whose move to C{cur/} fails takes no \\Recent and leaves
        no view behind to hold the folder's change log."""
        self.open().close()
        self.ok(self.store.deliver([ALICE], MESSAGE))
        self.fs.fault = ("rename", os.sep + "cur" + os.sep, errno.EIO)
        self.fails(self.store.open_folder(ALICE, "INBOX"))
        state = self.store._accounts[ALICE].folders["INBOX"]
        self.assertFalse(state.has_views())
        session = self.open()
        self.assertEqual(session.recent, frozenset([1]))
