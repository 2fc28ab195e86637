"""
Review of the IMAP mailbox-level commands (L{gateway.imap.mailboxes}) and
the store operations under them (L{gateway.store.folders},
L{gateway.store.moves}) against RFC 3501 section 6.3, RFC 4315 (UIDPLUS),
RFC 6851 (MOVE), RFC 2342 (NAMESPACE) and RFC 5530 (response codes).

Conversations run over a StringTransport, on the in-memory store and on a
real L{MaildirStore} in a temporary directory (shared by two connections
where sessions meet); store faults are injected through the store's
C{fs} parameter (L{FaultsFS}) or an SQLite trigger, never by
monkeypatching.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from typing import Any

from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from gateway.imap.protocol import IMAPFactory
from gateway.store.index import INDEX_FILE
from gateway.store.maildir import MaildirStore
from gateway.store.model import Changes, FolderExists, Quota, StoreError
from tests.imap_support import SIMPLE, logged_in, send
from tests.test_protocols import connect, lines
from tests.test_store_batch_faults import FaultsFS
from tests.test_store_contract import ALICE as STORE_ALICE
from tests.test_store_contract import MESSAGE, NOW, synchronous
from tests.test_store_maildir import ManualRunner, files

ACCOUNT = "alice@example.edu"  # who tests.imap_support logs in
EXAMPLE = b"Subject: x\r\n\r\nbody\r\n"


class FolderFaultsFS(FaultsFS):
    """L{FaultsFS} that can also fail C{rmtree} and C{write_marker}, and
    fail the C{skip}+1-th operation on exactly one path (L{exactly}: every
    directory fsync of a folder operation has the account in its path)."""

    def __init__(self) -> None:
        super().__init__()
        self.exact: list[list[Any]] = []

    def exactly(self, op: str, path: str, skip: int = 0) -> None:
        self.exact.append([op, path, skip])

    def _step(self, op: str, path: str) -> None:
        super()._step(op, path)
        for fault in self.exact:
            if fault[0] == op and fault[1] == path:
                if fault[2]:
                    fault[2] -= 1
                    continue
                self.exact.remove(fault)
                raise OSError(errno.EIO, f"injected {op} failure")

    def rmtree(self, path: str) -> None:
        self._step("rmtree", path)
        super().rmtree(path)

    def write_marker(self, path: str) -> None:
        self._step("write_marker", path)
        super().write_marker(path)


def maildir_store(case: SynchronousTestCase, clock: Clock, fs: Any = None,
                  **kw: Any) -> MaildirStore:
    kw.setdefault("run_in_thread", synchronous)
    store = MaildirStore(FilePath(case.mktemp()).path, clock=clock, fs=fs,
                         hostname="test.example", **kw)
    case.addCleanup(store.close)
    return store


def login(proto: Any, t: Any) -> None:
    proto.handshakeCompleted()
    proto.dataReceived(b'L LOGIN alice@example.edu "correct horse"\r\n')
    reply = lines(t)
    assert reply[-1].startswith(b"L OK"), reply


class MaildirConversation(SynchronousTestCase):
    """Two IMAP connections of alice's on one L{MaildirStore}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.fs = FolderFaultsFS()
        self.store = maildir_store(self, self.clock, self.fs)
        self.a, self.ta = connect(IMAPFactory, "imap", tls="implicit", clock=self.clock)
        self.a.context.extras["store"] = self.a.store = self.store
        login(self.a, self.ta)
        self.b, self.tb = connect(IMAPFactory, "imap", tls="implicit", factory=self.a.factory)
        login(self.b, self.tb)
        self.account = os.path.join(self.store.root, "example.edu", "alice")

    def dirs(self) -> list[str]:
        return [e for e in files(self.account) if e.startswith(".")]

    def append(self, proto: Any, t: Any, folder: bytes, message: bytes = EXAMPLE,
               extra: bytes = b"") -> list[bytes]:
        proto.dataReceived(b"x APPEND " + folder + extra + b" {%d+}\r\n" % len(message)
                           + message + b"\r\n")
        return lines(t)

    def assertNoServerBug(self, *replies: list[bytes]) -> None:
        for reply in replies:
            for line in reply:
                self.assertNotIn(b"SERVERBUG", line)
        self.assertEqual(self.flushLoggedErrors(), [])


# -- names --------------------------------------------------------------------

class ListInboxPrefixTests(SynchronousTestCase):
    def test_list_finds_a_folder_whose_name_starts_with_inbox(self) -> None:
        """
        Only the name INBOX is case-insensitive (RFC 3501 section 5.1): a
        pattern C{inboxes} names the folder C{inboxes}.  Before, every
        pattern starting with the five letters was upper-cased, so LIST
        could not find C{inboxes} or C{Inbox-old} at all.
        """
        proto, t, _ = logged_in()
        send(proto, t, b"a CREATE inboxes")
        send(proto, t, b"b CREATE Inbox-old")
        self.assertEqual(send(proto, t, b'c LIST "" inboxes'), [
            b'* LIST (\\HasNoChildren) "/" "inboxes"', b"c OK LIST completed"])
        self.assertEqual(send(proto, t, b'd LIST "" Inbox-*'), [
            b'* LIST (\\HasNoChildren) "/" "Inbox-old"', b"d OK LIST completed"])
        # ... while INBOX itself, and its children, are still found in any case.
        send(proto, t, b"e CREATE INBOX/sub")
        self.assertEqual(send(proto, t, b'f LIST "" inbox'), [
            b'* LIST (\\HasChildren) "/" "INBOX"', b"f OK LIST completed"])
        self.assertEqual(send(proto, t, b'g LIST "" inBox/%'), [
            b'* LIST (\\HasNoChildren) "/" "INBOX/sub"', b"g OK LIST completed"])
        self.assertEqual(send(proto, t, b'h LIST "" inbox*'), [
            b'* LIST (\\HasChildren) "/" "INBOX"',
            b'* LIST (\\HasNoChildren) "/" "INBOX/sub"',
            b'* LIST (\\HasNoChildren) "/" "inboxes"', b"h OK LIST completed"])


class CreateNameTests(SynchronousTestCase):
    def test_one_trailing_delimiter_only(self) -> None:
        """RFC 3501 section 6.3.3: one trailing delimiter declares the
        intent to create children; C{a//} has an empty level and is
        refused like C{a//b}, not created as C{a}."""
        proto, t, store = logged_in()
        self.assertEqual(send(proto, t, b"a CREATE Work/"), [b"a OK CREATE completed"])
        self.assertEqual(send(proto, t, b"b CREATE Other//"), [
            b"b NO [CANNOT] invalid folder name 'Other/': empty hierarchy level"])
        names = [f.name for f in self.successResultOf(store.folders(ACCOUNT))]
        self.assertIn("Work", names)
        self.assertNotIn("Other", names)

    def test_wildcards_and_empty_levels_refused(self) -> None:
        proto, t, _ = logged_in()
        for name, code in [(b'"a*b"', b"CANNOT"), (b'"50%"', b"CANNOT"),
                           (b'"a//b"', b"CANNOT"), (b'"/a"', b"CANNOT"),
                           (b'"/"', b"CANNOT")]:
            reply = send(proto, t, b"a CREATE " + name)
            self.assertEqual(len(reply), 1, reply)
            self.assertTrue(reply[0].startswith(b"a NO [" + code + b"]"), reply)


class MaildirNameTests(MaildirConversation):
    def test_odd_names_stay_inside_the_account(self) -> None:
        """Names that look like paths or like Maildir++ internals become
        ordinary folder directories (dot-prefixed, with C{"."} encoded),
        list back as sent, and create nothing outside the account."""
        odd = [b"..", b".", b"../x", b"x/..", b"tmp", b"new", b"cur", b"a.b",
               b"..creating-x", b"~root", b'"a\\\\b"', b"Dot."]
        send(self.a, self.ta, b"l LIST \"\" %")  # (makes the account)
        before = sorted(os.listdir(self.store.root))
        for name in odd:
            self.assertEqual(send(self.a, self.ta, b"c CREATE " + name),
                             [b"c OK CREATE completed"], name)
        self.assertEqual(sorted(os.listdir(self.store.root)), before)
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.account))), ["alice"])
        for entry in self.dirs():
            self.assertFalse(entry in (".", "..") or entry.startswith(".."), entry)
            self.assertEqual(files(os.path.join(self.account, entry)),
                             ["cur", "maildirfolder", "new", "tmp"])
        # INBOX's own tmp/, new/ and cur/ hold no directory.
        for sub in ("tmp", "new", "cur"):
            self.assertEqual(files(os.path.join(self.account, sub)), [])
        listed = send(self.a, self.ta, b'l LIST "" *')
        for name in odd:
            plain = name.strip(b'"').replace(b"\\\\", b"\\\\")
            self.assertIn(b'"/" "' + plain + b'"', b"\n".join(listed), name)
        self.assertEqual(send(self.a, self.ta, b"s SELECT ../x")[-1],
                         b"s OK [READ-WRITE] SELECT completed")

    def test_long_and_deep_names(self) -> None:
        too_long = b"x" * 300
        self.assertEqual(send(self.a, self.ta, b"a CREATE " + too_long),
                         [b"a NO [CANNOT] invalid folder name '" + too_long + b"': too long"])
        deep = b"/".join([b"d"] * 20)
        self.assertEqual(send(self.a, self.ta, b"b CREATE " + deep), [b"b OK CREATE completed"])
        self.assertEqual(len([d for d in self.dirs() if d.startswith(".d")]), 20)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_inbox_case_variants_name_one_folder(self) -> None:
        self.assertEqual(send(self.a, self.ta, b"a CREATE Inbox"),
                         [b"a NO [ALREADYEXISTS] INBOX always exists"])
        self.assertEqual(send(self.a, self.ta, b"b CREATE inbox/Sub"), [b"b OK CREATE completed"])
        self.assertEqual(send(self.a, self.ta, b"c CREATE INBOX/Sub"),
                         [b"c NO [ALREADYEXISTS] folder already exists: INBOX/Sub"])
        self.assertIn(".INBOX.Sub", self.dirs())
        self.assertNotIn(".inbox.Sub", self.dirs())
        self.assertEqual(send(self.a, self.ta, b"d DELETE iNbOx"),
                         [b"d NO [CANNOT] INBOX cannot be deleted"])


# -- LIST and LSUB: levels that are no folders ----------------------------------

class NoselectTests(MaildirConversation):
    def test_list_percent_shows_missing_parent_as_noselect(self) -> None:
        """
        RFC 3501 section 6.3.8: levels of hierarchy matched by C{%} that
        are not selectable mailboxes are returned with C{\\Noselect}.  A
        Maildir++ folder C{.a.b} without C{.a} (made by another program,
        or left by a deletion there) showed nothing at all for C{a}.
        """
        send(self.a, self.ta, b"a CREATE a/b")
        shutil.rmtree(os.path.join(self.account, ".a"))
        self.assertEqual(send(self.a, self.ta, b'b LIST "" a'), [
            b'* LIST (\\Noselect \\HasChildren) "/" "a"', b"b OK LIST completed"])
        reply = send(self.a, self.ta, b'c LIST "" %')
        self.assertIn(b'* LIST (\\Noselect \\HasChildren) "/" "a"', reply)
        self.assertEqual(send(self.a, self.ta, b'd LIST "" a/%'), [
            b'* LIST (\\HasNoChildren) "/" "a/b"', b"d OK LIST completed"])
        listed = send(self.a, self.ta, b'e LIST "" *')
        self.assertEqual(listed[0], b'* LIST (\\HasNoChildren) "/" "INBOX"')
        self.assertEqual(listed[-3:], [  # in the store's order, by name
            b'* LIST (\\Noselect \\HasChildren) "/" "a"',
            b'* LIST (\\HasNoChildren) "/" "a/b"', b"e OK LIST completed"])
        self.assertEqual(send(self.a, self.ta, b"f SELECT a"),
                         [b"f NO [NONEXISTENT] no such folder: a"])

    def test_lsub_percent_shows_unsubscribed_parent_as_noselect(self) -> None:
        """RFC 3501 section 6.3.9: C{foo/bar} subscribed and C{foo} not,
        C{LSUB "" %} MUST return C{foo} flagged C{\\Noselect}."""
        send(self.a, self.ta, b"a CREATE foo/bar")
        send(self.a, self.ta, b"b SUBSCRIBE foo/bar")
        self.assertEqual(send(self.a, self.ta, b'c LSUB "" f%'), [
            b'* LSUB (\\Noselect) "/" "foo"', b"c OK LSUB completed"])
        self.assertEqual(send(self.a, self.ta, b'd LSUB "" f*'), [
            b'* LSUB () "/" "foo/bar"', b"d OK LSUB completed"])
        send(self.a, self.ta, b"e SUBSCRIBE foo")
        self.assertEqual(send(self.a, self.ta, b'f LSUB "" f%'), [
            b'* LSUB () "/" "foo"', b"f OK LSUB completed"])


class NoselectMemoryTests(SynchronousTestCase):
    def test_lsub_percent_on_the_memory_store(self) -> None:
        proto, t, _ = logged_in()
        send(proto, t, b"a CREATE foo/bar")
        send(proto, t, b"b SUBSCRIBE foo/bar")
        self.assertEqual(send(proto, t, b'c LSUB "" %')[-2:], [
            b'* LSUB (\\Noselect) "/" "foo"', b"c OK LSUB completed"])


# -- APPEND -------------------------------------------------------------------

class AppendRecentTests(SynchronousTestCase):
    def check(self, proto: Any, t: Any, store: Any) -> None:
        store.deliver([ACCOUNT], SIMPLE)
        proto.dataReceived(b"a APPEND INBOX {%d+}\r\n" % len(EXAMPLE) + EXAMPLE + b"\r\n")
        self.assertEqual(lines(t)[-1][:16], b"a OK [APPENDUID ")
        reply = send(proto, t, b"b SELECT INBOX")
        self.assertIn(b"* 2 EXISTS", reply)
        self.assertIn(b"* 2 RECENT", reply)

    def test_append_takes_no_recent_memory(self) -> None:
        """
        RFC 3501 section 2.3.2: \\Recent goes to the first session to
        select the mailbox.  APPEND opened the folder read-write, so the
        mail delivered before it lost \\Recent to the APPEND itself.
        """
        self.check(*logged_in())

    def test_append_takes_no_recent_maildir(self) -> None:
        clock = Clock()
        clock.advance(NOW)
        proto, t = connect(IMAPFactory, "imap", tls="implicit", clock=clock)
        proto.store = maildir_store(self, clock)
        login(proto, t)
        self.check(proto, t, proto.store)


# -- response codes (RFC 5530) ---------------------------------------------------

class RefusalTests(MaildirConversation):
    def test_each_refusal_has_its_code(self) -> None:
        a, t = self.a, self.ta
        send(a, t, b"a CREATE Work/Sub")
        expected = [
            (b"RENAME Nope Other", b"NO [NONEXISTENT] no such folder: Nope"),
            (b"RENAME Work Sent", b"NO [ALREADYEXISTS] folder already exists: Sent"),
            (b"RENAME Work INBOX", b"NO [ALREADYEXISTS] INBOX always exists"),
            (b"RENAME Work Work/Sub/x",
             b"NO [CANNOT] invalid folder name 'Work/Sub/x': a folder cannot move inside itself"),
            (b"DELETE Nope", b"NO [NONEXISTENT] no such folder: Nope"),
            (b"DELETE Work",
             b"NO [CANNOT] invalid folder name 'Work': it has child folders; delete them first"),
            (b"CREATE Work", b"NO [ALREADYEXISTS] folder already exists: Work"),
            (b"SUBSCRIBE Nope", b"NO [NONEXISTENT] no such folder: Nope"),
            (b"STATUS Nope (MESSAGES)", b"NO [NONEXISTENT] no such folder: Nope"),
            (b"SELECT Nope", b"NO [NONEXISTENT] no such folder: Nope"),
        ]
        for command, reply in expected:
            self.assertEqual(send(a, t, b"r " + command), [b"r " + reply], command)
        self.assertEqual(self.append(a, t, b"Nope"), [b"x NO [TRYCREATE] no such folder: Nope"])
        self.append(a, t, b"INBOX")
        send(a, t, b"s SELECT INBOX")
        self.assertEqual(send(a, t, b"c COPY 1 Nope"), [b"c NO [TRYCREATE] no such folder: Nope"])
        self.assertEqual(send(a, t, b"m MOVE 1 Nope"), [b"m NO [TRYCREATE] no such folder: Nope"])
        self.assertNoServerBug()

    def test_over_quota(self) -> None:
        store = maildir_store(self, self.clock, None,
                              quota_for=lambda account: Quota(max_messages=1))
        self.a.store = store
        self.assertEqual(self.append(self.a, self.ta, b"INBOX")[-1][:16], b"x OK [APPENDUID ")
        self.assertEqual(self.append(self.a, self.ta, b"Drafts"),
                         [b"x NO [OVERQUOTA] mailbox full, try again later"])
        send(self.a, self.ta, b"s SELECT INBOX")
        self.assertEqual(send(self.a, self.ta, b"c COPY 1 Trash"),
                         [b"c NO [OVERQUOTA] mailbox full, try again later"])
        # MOVE adds nothing: allowed at the limit.
        self.assertEqual(send(self.a, self.ta, b"m MOVE 1 Trash"), [
            b"* OK [COPYUID %d 1 1] moved" % self.validity(store, "Trash"),
            b"* 1 EXPUNGE", b"m OK MOVE completed"])

    def validity(self, store: MaildirStore, name: str) -> int:
        return int(self.successResultOf(store.status(ACCOUNT, name)).uidvalidity)


# -- UIDPLUS and MOVE -------------------------------------------------------------

class MoveTests(MaildirConversation):
    def setUp(self) -> None:
        super().setUp()
        for i in range(3):
            self.append(self.a, self.ta, b"INBOX", EXAMPLE + b"%d\r\n" % i)
        send(self.a, self.ta, b"s SELECT INBOX")
        self.trash = int(self.successResultOf(self.store.status(ACCOUNT, "Trash")).uidvalidity)

    def test_move_reports_copyuid_then_expunges(self) -> None:
        """RFC 6851 section 4.3: COPYUID in an untagged OK before the
        EXPUNGEs; the messages are in the target once, in the source no
        more, flags kept."""
        send(self.a, self.ta, b"f STORE 3 +FLAGS.SILENT (\\Flagged $Work)")
        self.assertEqual(send(self.a, self.ta, b"m UID MOVE 1,3 Trash"), [
            b"* OK [COPYUID %d 1,3 1:2] moved" % self.trash,
            b"* 3 EXPUNGE", b"* 1 EXPUNGE", b"m OK UID MOVE completed"])
        status = self.successResultOf(self.store.status(ACCOUNT, "INBOX"))
        self.assertEqual(status.messages, 1)
        send(self.b, self.tb, b"s SELECT Trash")
        self.assertEqual(send(self.b, self.tb, b"f FETCH 1:* (UID FLAGS BODY.PEEK[TEXT])"), [
            b"* 1 FETCH (UID 1 FLAGS (\\Recent) BODY[TEXT] {9}",
            b"body", b"0", b")",
            b"* 2 FETCH (UID 2 FLAGS ($Work \\Flagged \\Recent) BODY[TEXT] {9}",
            b"body", b"2", b")", b"f OK FETCH completed"])
        self.assertEqual(len(files(os.path.join(self.account, ".Trash", "cur"))), 2)
        self.assertEqual(len(files(os.path.join(self.account, "cur"))), 1)

    def test_copy_reports_copyuid(self) -> None:
        self.assertEqual(send(self.a, self.ta, b"c COPY 2:3 Trash"), [
            b"c OK [COPYUID %d 2:3 1:2] COPY completed" % self.trash])
        self.assertEqual(send(self.a, self.ta, b"d UID COPY 9 Trash"), [b"d OK UID COPY completed"])

    def test_uid_expunge_only_the_uids_named(self) -> None:
        """RFC 4315 section 2.1: only messages both \\Deleted and in the set."""
        send(self.a, self.ta, b"f STORE 1:3 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(send(self.a, self.ta, b"e UID EXPUNGE 2"),
                         [b"* 2 EXPUNGE", b"e OK UID EXPUNGE completed"])
        self.assertEqual(send(self.a, self.ta, b"g UID FETCH 1:* UID"), [
            b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 3)", b"g OK UID FETCH completed"])

    def test_move_seen_by_an_idle_session(self) -> None:
        send(self.b, self.tb, b"s SELECT INBOX")
        self.assertEqual(send(self.b, self.tb, b"i IDLE"), [b"+ idling"])
        send(self.a, self.ta, b"m MOVE 2 Trash")
        self.assertEqual(lines(self.tb), [b"* 2 EXPUNGE"])
        self.assertEqual(send(self.b, self.tb, b"DONE"), [b"i OK IDLE terminated"])


# -- sessions meeting -------------------------------------------------------------

class ConcurrentSessionTests(MaildirConversation):
    def test_selected_folder_deleted_by_another_session(self) -> None:
        """RFC 3501 leaves the selected session's fate open; here it sees
        the messages expunged (at once while IDLE), its commands are
        refused without a traceback, and a folder made again under the
        name is another mailbox (a new UIDVALIDITY)."""
        send(self.a, self.ta, b"c CREATE Work")
        self.append(self.b, self.tb, b"Work")
        first = send(self.a, self.ta, b"s SELECT Work")
        self.assertEqual(send(self.a, self.ta, b"i IDLE"), [b"+ idling"])
        self.assertEqual(send(self.b, self.tb, b"d DELETE Work"), [b"d OK DELETE completed"])
        self.assertEqual(lines(self.ta), [b"* 1 EXPUNGE"])
        replies = [send(self.a, self.ta, b"DONE"), send(self.a, self.ta, b"n NOOP")]
        self.assertEqual(replies, [[b"i OK IDLE terminated"], [b"n OK NOOP completed"]])
        replies.append(send(self.a, self.ta, b"e EXPUNGE"))
        self.assertEqual(replies[-1], [b"e NO [NONEXISTENT] no such folder: Work"])
        replies.append(send(self.a, self.ta, b"f UID FETCH 1:* FLAGS"))
        self.assertEqual(replies[-1], [b"f OK UID FETCH completed"])
        send(self.b, self.tb, b"c CREATE Work")
        self.append(self.b, self.tb, b"Work")
        replies.append(send(self.a, self.ta, b"n NOOP"))
        self.assertEqual(replies[-1], [b"n OK NOOP completed"])
        again = send(self.a, self.ta, b"s SELECT Work")
        self.assertIn(b"* 1 EXISTS", again)
        old = [line for line in first if b"UIDVALIDITY" in line]
        self.assertNotIn(old[0], again)
        self.assertNoServerBug(first, again, *replies)

    def test_parent_renamed_while_child_selected(self) -> None:
        """The selected folder follows a RENAME of its parent: its
        messages, UIDs and UIDVALIDITY stay and every command still
        works on it."""
        send(self.a, self.ta, b"c CREATE a/b")
        self.append(self.b, self.tb, b"a/b")
        selected = send(self.a, self.ta, b"s SELECT a/b")
        self.assertEqual(send(self.b, self.tb, b"r RENAME a x"), [b"r OK RENAME completed"])
        self.assertEqual(send(self.a, self.ta, b"f FETCH 1 (UID BODY.PEEK[TEXT])"), [
            b"* 1 FETCH (UID 1 BODY[TEXT] {6}", b"body", b")", b"f OK FETCH completed"])
        self.assertEqual(send(self.a, self.ta, b"t STORE 1 +FLAGS (\\Seen)"), [
            b"* 1 FETCH (FLAGS (\\Seen \\Recent))", b"t OK STORE completed"])
        self.append(self.b, self.tb, b"x/b")
        self.assertEqual(send(self.a, self.ta, b"n NOOP"),
                         [b"* 2 EXISTS", b"* 2 RECENT", b"n OK NOOP completed"])
        status = send(self.b, self.tb, b"t STATUS x/b (UIDVALIDITY MESSAGES)")
        validity = [line for line in selected if b"UIDVALIDITY" in line][0].split()[3]
        self.assertEqual(status[0], b'* STATUS "x/b" (UIDVALIDITY ' + validity[:-1]
                         + b" MESSAGES 2)")
        self.assertEqual(send(self.b, self.tb, b"s SELECT a/b"),
                         [b"s NO [NONEXISTENT] no such folder: a/b"])
        self.assertEqual(sorted(d for d in self.dirs() if d[1] in "ax"), [".x", ".x.b"])
        self.assertNoServerBug()

    def test_copy_and_move_into_a_deleted_folder(self) -> None:
        send(self.a, self.ta, b"c CREATE Work")
        self.append(self.a, self.ta, b"INBOX")
        send(self.a, self.ta, b"s SELECT INBOX")
        send(self.b, self.tb, b"d DELETE Work")
        self.assertEqual(send(self.a, self.ta, b"c COPY 1 Work"),
                         [b"c NO [TRYCREATE] no such folder: Work"])
        self.assertEqual(send(self.a, self.ta, b"m MOVE 1 Work"),
                         [b"m NO [TRYCREATE] no such folder: Work"])
        self.assertEqual(send(self.a, self.ta, b"f FETCH 1 UID"),
                         [b"* 1 FETCH (UID 1)", b"f OK FETCH completed"])
        self.assertNotIn(".Work", self.dirs())

    def test_two_creates_of_one_name_at_once(self) -> None:
        """Both CREATEs reach the store before either runs: one wins, the
        other is told ALREADYEXISTS, one directory."""
        runner = ManualRunner()
        store = maildir_store(self, self.clock, run_in_thread=runner)
        store.folders(ACCOUNT)
        runner.run_all()
        first = store.create_folder(ACCOUNT, "Same")
        second = store.create_folder(ACCOUNT, "Same")
        runner.run_all()
        self.assertIsNone(self.successResultOf(first))
        self.failureResultOf(second, FolderExists)
        account = os.path.join(store.root, "example.edu", "alice")
        self.assertEqual([d for d in files(account) if "Same" in d], [".Same"])


# -- faults half-way (the store on a real directory) -------------------------------

class FaultCase(SynchronousTestCase):
    """A folder operation that fails at a step answers a temporary
    failure and leaves the directories and the index agreeing: the
    folders as they were, with their UIDVALIDITY, UIDs, flags and
    subscriptions."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.fs = FolderFaultsFS()
        self.store = maildir_store(self, self.clock, self.fs)
        self.account = os.path.join(self.store.root, "example.org", "alice")

    def ok(self, d: Any) -> Any:
        return self.successResultOf(d)

    def status(self, name: str) -> Any:
        return self.ok(self.store.status(STORE_ALICE, name))

    def names(self) -> list[str]:
        return [f.name for f in self.ok(self.store.folders(STORE_ALICE))]

    def dirs(self) -> list[str]:
        return [e for e in files(self.account) if e.startswith(".")]

    def snapshot(self, *folders: str) -> list[Any]:
        """What a client can see of these folders."""
        seen = []
        for name in folders:
            session = self.ok(self.store.open_folder(STORE_ALICE, name, True))
            seen.append((name, session.uidvalidity, session.uidnext(),
                         [(m.uid, sorted(m.flags)) for m in session.messages()],
                         [self.ok(session.read_message(m.uid)) for m in session.messages()]))
            self.ok(session.close())
        subscribed = sorted(f.name for f in self.ok(self.store.folders(STORE_ALICE))
                            if f.subscribed)
        return [seen, subscribed, sorted(self.names())]

    def fill(self, name: str) -> None:
        session = self.ok(self.store.open_folder(STORE_ALICE, name))
        self.ok(session.append(MESSAGE, ["$Keep"]))
        self.ok(session.append(MESSAGE + b"2\n", ["\\Seen"]))
        self.ok(session.close())


class FolderFaultTests(FaultCase):

    def test_rename_fails_at_a_child(self) -> None:
        self.ok(self.store.create_folder(STORE_ALICE, "a/b/c"))
        self.ok(self.store.subscribe(STORE_ALICE, "a/b", True))
        self.fill("a/b")
        before = self.snapshot("a", "a/b", "a/b/c")
        self.fs.add("rename", ".x.y.b.c")  # the third directory renamed
        self.failureResultOf(self.store.rename_folder(STORE_ALICE, "a", "x/y"), StoreError)
        self.assertEqual(self.snapshot("a", "a/b", "a/b/c"), before)
        self.assertEqual([d for d in self.dirs() if d[1] in "ax"], [".a", ".a.b", ".a.b.c"])
        self.assertEqual(self.flushLoggedErrors(OSError)[0].value.errno, errno.EIO)
        # and it can be done again
        self.ok(self.store.rename_folder(STORE_ALICE, "a", "x/y"))
        self.assertEqual(self.snapshot("x/y", "x/y/b", "x/y/b/c")[0][1][1:],
                         before[0][1][1:])

    def test_rename_fails_at_the_fsync(self) -> None:
        self.ok(self.store.create_folder(STORE_ALICE, "a/b"))
        self.fill("a")
        before = self.snapshot("a", "a/b")
        # after the parent is made, the one after the renames
        self.fs.exactly("fsync_dir", self.account, skip=1)
        self.failureResultOf(self.store.rename_folder(STORE_ALICE, "a", "x/a"), StoreError)
        self.assertEqual(self.snapshot("a", "a/b"), before)
        self.assertNotIn(".x", self.dirs())
        self.flushLoggedErrors(OSError)

    def test_delete_fails_at_the_fsync(self) -> None:
        """The folder is put back: its messages, UIDVALIDITY and UIDs."""
        self.ok(self.store.create_folder(STORE_ALICE, "Old"))
        self.fill("Old")
        before = self.snapshot("Old")
        self.fs.exactly("fsync_dir", self.account)
        self.failureResultOf(self.store.delete_folder(STORE_ALICE, "Old"), StoreError)
        self.assertEqual(self.snapshot("Old"), before)
        self.assertEqual([d for d in files(self.account) if d.startswith("..")], [])
        self.flushLoggedErrors(OSError)

    def test_delete_succeeds_when_the_removal_fails(self) -> None:
        """
        Once the folder is renamed away it is deleted for everyone; a
        failure to remove the files after that must not answer NO while
        the folder is gone, nor bring its index row back (a folder made
        again under the name then had the old UIDVALIDITY, against RFC
        3501 section 2.3.1.1).  What is left is removed at the next start.
        """
        self.ok(self.store.create_folder(STORE_ALICE, "Old"))
        self.fill("Old")
        old = self.status("Old").uidvalidity
        self.fs.add("rmtree", "..deleted-")
        self.ok(self.store.delete_folder(STORE_ALICE, "Old"))
        self.assertNotIn("Old", self.names())
        self.clock.advance(10)
        self.ok(self.store.create_folder(STORE_ALICE, "Old"))
        status = self.status("Old")
        self.assertEqual(status.messages, 0)
        self.assertNotEqual(status.uidvalidity, old)
        [logged] = self.flushLoggedErrors(OSError)  # the cause, for the log only
        self.assertEqual(logged.value.errno, errno.EIO)
        self.assertEqual(len([d for d in files(self.account) if d.startswith("..deleted-")]), 1)
        again = MaildirStore(self.store.root, clock=self.clock, run_in_thread=synchronous)
        self.addCleanup(again.close)
        self.successResultOf(again.status(STORE_ALICE, "INBOX"))
        self.assertEqual([d for d in files(self.account) if d.startswith("..")], [])

    def test_rename_inbox_fails_half_way(self) -> None:
        self.fill("INBOX")
        before = self.snapshot("INBOX")
        self.fs.add("rename", os.path.join(".Old", "cur", ""), skip=1)  # the second message
        self.failureResultOf(self.store.rename_folder(STORE_ALICE, "INBOX", "Old"), StoreError)
        self.assertEqual(self.snapshot("INBOX"), before)
        self.assertNotIn(".Old", self.dirs())
        self.flushLoggedErrors(OSError)

    def test_create_fails_leaves_no_staging(self) -> None:
        self.ok(self.store.folders(STORE_ALICE))
        self.fs.add("write_marker", "..creating-")
        self.failureResultOf(self.store.create_folder(STORE_ALICE, "New"), StoreError)
        self.assertEqual([d for d in files(self.account) if d.startswith(".") and (
            "New" in d or d.startswith(".."))], [])
        self.assertNotIn("New", self.names())
        self.flushLoggedErrors(OSError)


class TransferFaultTests(FaultCase):
    """COPY and MOVE fail whole: where indexing the new UIDs fails (an
    SQLite error) the files already linked or renamed are taken back."""

    def fail_indexing(self) -> None:
        db = sqlite3.connect(os.path.join(self.account, INDEX_FILE))
        db.execute("CREATE TRIGGER injected BEFORE INSERT ON messages"
                   " BEGIN SELECT RAISE(ABORT, 'injected'); END")
        db.commit()
        db.close()

    def heal_indexing(self) -> None:
        db = sqlite3.connect(os.path.join(self.account, INDEX_FILE))
        db.execute("DROP TRIGGER injected")
        db.commit()
        db.close()

    def check(self, move: bool) -> None:
        self.fill("INBOX")
        session = self.ok(self.store.open_folder(STORE_ALICE, "INBOX"))
        before = self.snapshot("INBOX", "Trash")
        self.fail_indexing()
        call = session.move if move else session.copy
        self.failureResultOf(call([1, 2], "Trash"), StoreError)
        self.heal_indexing()
        self.assertEqual(self.ok(session.sync()), Changes())
        after = self.snapshot("INBOX", "Trash")
        # The UIDs the failed transaction took are never given again (a
        # UID names one message for ever): Trash's UIDNEXT may have moved
        # on; nothing else may differ.
        (_, trash_before), (_, trash_after) = before[0], after[0]
        self.assertGreaterEqual(trash_after[2], trash_before[2])
        after[0][1] = trash_after[:2] + (trash_before[2],) + trash_after[3:]
        self.assertEqual(after, before)
        self.assertEqual(files(os.path.join(self.account, ".Trash", "cur")), [])
        self.assertEqual(len(files(os.path.join(self.account, "cur"))), 2)
        self.flushLoggedErrors(sqlite3.IntegrityError)

    def test_move_index_failure(self) -> None:
        self.check(move=True)

    def test_copy_index_failure(self) -> None:
        self.check(move=False)


class NameSpellingTests(SynchronousTestCase):
    def test_one_spelling_per_name(self) -> None:
        """
        RFC 3501 section 5.1.3: modified BASE64 uses "," where BASE64 has
        "/".  A name accepted in another spelling (C{/} for C{,}, two
        adjacent runs, stray bits at the end of a run) was created and
        then listed in the canonical spelling, a name the client never
        sent.
        """
        proto, t, store = logged_in()
        for spelling in [b"&AP8A/gD9-", b"&AOk-&AOk-", b"&AOl-"]:
            self.assertEqual(send(proto, t, b"a CREATE " + spelling),
                             [b"a BAD mailbox name is not modified UTF-7"], spelling)
        self.assertEqual(send(proto, t, b"b CREATE &AP8A,gD9-"), [b"b OK CREATE completed"])
        self.assertEqual(send(proto, t, b'c LIST "" &AP8A,gD9-'), [
            b'* LIST (\\HasNoChildren) "/" "&AP8A,gD9-"', b"c OK LIST completed"])
        self.assertIn("\u00ff\u00fe\u00fd",
                      [f.name for f in self.successResultOf(store.folders(ACCOUNT))])
