"""
Review of the IMAP selected state (RFC 3501 sections 6.4 and 7, RFC 4315,
RFC 6851, RFC 2177, RFC 3691, RFC 7888): untagged updates and sequence
numbers when other sessions change the folder, FETCH ranges and \\Seen,
STORE .SILENT, CLOSE/UNSELECT/MOVE/EXPUNGE, IDLE, and commands the parser
must drop whole.  Each conversation runs over the in-memory store and,
where the store matters, over a Maildir in a temporary directory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Limits
from gateway.imap import fetch, search
from gateway.imap.protocol import IMAPFactory
from gateway.store.maildir import MaildirStore
from tests.imap_support import ALICE, MULTIPART, SIMPLE, selected, send
from tests.test_imap_fetch import BufferingTransport, big, buffered, large, wire
from tests.test_protocols import connect, lines
from tests.test_store_contract import synchronous


def maildir_selected(case: SynchronousTestCase, messages: tuple[bytes, ...] = (),
                     readonly: bool = False, **kw: Any) -> tuple[Any, Any, MaildirStore]:
    """As L{tests.imap_support.selected}, over a L{MaildirStore} in a
    temporary directory."""
    clock = Clock()
    clock.advance(1_000_000_000)
    store = MaildirStore(FilePath(case.mktemp()).path, run_in_thread=synchronous,
                         clock=clock, hostname="test.example")
    case.addCleanup(store.close)
    proto, t = connect(IMAPFactory, "imap", tls="implicit", clock=clock, **kw)
    proto.store = store
    proto.handshakeCompleted()
    for message in messages:
        case.successResultOf(store.deliver([ALICE], message))
    reply = send(proto, t, b'L LOGIN alice@example.edu "correct horse"')
    case.assertTrue(reply[-1].startswith(b"L OK"), reply)
    reply = send(proto, t, b"S EXAMINE INBOX" if readonly else b"S SELECT INBOX")
    case.assertTrue(reply[-1].startswith(b"S OK"), reply)
    return proto, t, store


class BothStores:
    """Mixed into a test case: C{open} gives a selected connection over
    the store the subclass names."""

    maildir = False

    def open(self, messages: tuple[bytes, ...] = (), readonly: bool = False,
             **kw: Any) -> tuple[Any, Any, Any]:
        if self.maildir:
            return maildir_selected(self, messages, readonly, **kw)  # type: ignore[arg-type]
        return selected(messages, readonly, **kw)

    def other(self, store: Any, readonly: bool = False) -> Any:
        """Another session on alice's INBOX (another client)."""
        return self.successResultOf(  # type: ignore[attr-defined]
            store.open_folder(ALICE, "INBOX", readonly))


class UpdatesMemoryTests(BothStores, SynchronousTestCase):
    """Untagged updates and sequence numbers (RFC 3501 sections 5.5, 7.4.1)."""

    def test_no_expunge_during_fetch_store_search_and_uid_forms(self) -> None:
        """
        Another session expunges message 3 of 5: until a command that may
        send EXPUNGE, the client's numbers stay valid (a pipelined
        C{FETCH 5} is still message 5, UID 5), and no EXPUNGE comes during
        FETCH, STORE, SEARCH nor their UID forms; NOOP then says
        C{3 EXPUNGE} and the numbers move down.
        """
        proto, t, store = self.open((SIMPLE,) * 5)
        other = self.other(store)
        self.successResultOf(other.delete([3]))
        self.assertEqual(send(proto, t, b"a FETCH 5 UID"),
                         [b"* 5 FETCH (UID 5)", b"a OK FETCH completed"])
        self.assertEqual(send(proto, t, b"b STORE 4:5 +FLAGS (\\Flagged)"), [
            b"* 4 FETCH (FLAGS (\\Flagged \\Recent))", b"* 5 FETCH (FLAGS (\\Flagged \\Recent))",
            b"b OK STORE completed"])
        self.assertEqual(send(proto, t, b"c SEARCH FLAGGED"),
                         [b"* SEARCH 4 5", b"c OK SEARCH completed"])
        for command in [b"UID FETCH 5 UID", b"UID STORE 5 +FLAGS (\\Seen)",
                        b"UID SEARCH ALL"]:
            reply = send(proto, t, b"d " + command)
            self.assertNotIn(b"EXPUNGE", b"\r\n".join(reply), command)
            self.assertTrue(reply[-1].startswith(b"d OK"), reply)
        self.assertEqual(send(proto, t, b"e NOOP"), [b"* 3 EXPUNGE", b"e OK NOOP completed"])
        self.assertEqual(send(proto, t, b"f FETCH 4 UID"),
                         [b"* 4 FETCH (UID 5)", b"f OK FETCH completed"])

    def test_expunge_then_exists(self) -> None:
        """Messages expunged and delivered meanwhile: the EXPUNGEs first,
        highest first, then EXISTS with the count after them (EXISTS never
        announces fewer messages than the client holds), then RECENT."""
        proto, t, store = self.open((SIMPLE,) * 4)
        other = self.other(store)
        self.successResultOf(other.delete([2, 4]))
        self.successResultOf(store.deliver([ALICE], SIMPLE))
        self.assertEqual(send(proto, t, b"a CHECK"), [
            b"* 4 EXPUNGE", b"* 2 EXPUNGE", b"* 3 EXISTS", b"* 3 RECENT",
            b"a OK CHECK completed"])

    def test_recent_once_per_session(self) -> None:
        """\\Recent goes to the first read-write session to see a message;
        an EXAMINE session sees it recent without taking it."""
        proto, t, store = self.open((SIMPLE,))
        self.assertEqual(send(proto, t, b"a FETCH 1 FLAGS"),
                         [b"* 1 FETCH (FLAGS (\\Recent))", b"a OK FETCH completed"])
        other = self.other(store)
        self.assertEqual(other.recent, frozenset())
        self.successResultOf(store.deliver([ALICE], SIMPLE))
        self.assertEqual(send(proto, t, b"b NOOP"),
                         [b"* 2 EXISTS", b"* 2 RECENT", b"b OK NOOP completed"])
        watcher = self.other(store, readonly=True)
        self.assertEqual(watcher.recent, frozenset())  # taken by proto's session

    def test_other_sessions_flags_reported_by_noop(self) -> None:
        proto, t, store = self.open((SIMPLE, SIMPLE))
        other = self.other(store)
        self.successResultOf(other.set_flags([2], ["$Work"], "add"))
        self.assertEqual(send(proto, t, b"a FETCH 2 UID"),
                         [b"* 2 FETCH (UID 2)", b"a OK FETCH completed"])
        self.assertEqual(send(proto, t, b"b NOOP"), [
            b"* 2 FETCH (FLAGS ($Work \\Recent))", b"b OK NOOP completed"])
        self.assertEqual(send(proto, t, b"c NOOP"), [b"c OK NOOP completed"])

    def test_store_silent_reports_other_sessions_changes(self) -> None:
        """
        RFC 3501 section 6.4.6: with or without .SILENT, a flag change by
        another session is reported.  Before, the STORE's result (the
        other session's \\Flagged with our \\Seen) went into the view
        silently, and no later NOOP told the client of \\Flagged.
        """
        proto, t, store = self.open((SIMPLE, SIMPLE))
        other = self.other(store)
        self.successResultOf(other.set_flags([1], ["\\Flagged"], "add"))
        self.assertEqual(send(proto, t, b"a STORE 1:2 +FLAGS.SILENT (\\Seen)"), [
            b"* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))", b"a OK STORE completed"])
        self.assertEqual(send(proto, t, b"b UID STORE 1:2 -FLAGS.SILENT (\\Seen)"),
                         [b"b OK UID STORE completed"])
        self.successResultOf(other.set_flags([2], ["$Work"], "add"))
        self.assertEqual(send(proto, t, b"c UID STORE 2 +FLAGS.SILENT (\\Answered)"), [
            b"* 2 FETCH (UID 2 FLAGS ($Work \\Answered \\Recent))",
            b"c OK UID STORE completed"])
        # A replacement is what the client asked for: nothing to report.
        self.assertEqual(send(proto, t, b"d STORE 2 FLAGS.SILENT (\\Draft)"),
                         [b"d OK STORE completed"])
        self.assertEqual(send(proto, t, b"e NOOP"), [b"e OK NOOP completed"])
        # The other session hears of the silent changes.
        changes = self.successResultOf(other.sync())
        self.assertEqual({info.uid: sorted(info.flags) for info in changes.flags},
                         {2: ["\\Draft"]})

    def test_fetch_of_messages_expunged_meanwhile(self) -> None:
        """
        RFC 2180 section 4.1, RFC 5530 EXPUNGEISSUED: a FETCH of message
        data gone from the store (expunged by another session, not yet
        announced) answers the other messages and says some were
        expunged.  Before, the tagged OK said nothing, and a client took
        the missing response for a message it had fetched.
        """
        proto, t, store = self.open((SIMPLE, MULTIPART, SIMPLE))
        other = self.other(store)
        self.successResultOf(other.delete([2]))
        reply = send(proto, t, b"a FETCH 1:3 BODY.PEEK[HEADER.FIELDS (Subject)]")
        self.assertEqual(reply, [
            b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}", b"Subject: Hello", b"", b")",
            b"* 3 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}", b"Subject: Hello", b"", b")",
            b"a OK [EXPUNGEISSUED] some messages were expunged meanwhile; FETCH completed"])
        reply = send(proto, t, b"b UID FETCH 2 BODY.PEEK[]")
        self.assertEqual(reply, [b"b OK [EXPUNGEISSUED] some messages were expunged "
                                 b"meanwhile; UID FETCH completed"])
        # Index items are answered from the view: no EXPUNGEISSUED.
        self.assertEqual(send(proto, t, b"c FETCH 2 UID"),
                         [b"* 2 FETCH (UID 2)", b"c OK FETCH completed"])


class UpdatesMaildirTests(UpdatesMemoryTests):
    maildir = True

    def test_recent_once_per_session(self) -> None:
        proto, t, store = self.open((SIMPLE,))
        self.assertEqual(send(proto, t, b"a FETCH 1 FLAGS"),
                         [b"* 1 FETCH (FLAGS (\\Recent))", b"a OK FETCH completed"])
        self.assertEqual(self.other(store).recent, frozenset())


class FetchSeenTests(BothStores, SynchronousTestCase):
    def test_flags_item_exactly_when_seen_changes(self) -> None:
        proto, t, _ = self.open((SIMPLE, SIMPLE))
        self.assertEqual(send(proto, t, b"a FETCH 1 BODY[HEADER.FIELDS (Subject)]"), [
            b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}", b"Subject: Hello", b"",
            b" FLAGS (\\Seen \\Recent))", b"a OK FETCH completed"])
        # Already \Seen: no FLAGS; FLAGS asked for: once.
        self.assertEqual(send(proto, t, b"b FETCH 1 BODY[HEADER.FIELDS (Subject)]"), [
            b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}", b"Subject: Hello", b"", b")",
            b"b OK FETCH completed"])
        self.assertEqual(send(proto, t, b"c FETCH 2 (FLAGS RFC822.TEXT)"), [
            b"* 2 FETCH (FLAGS (\\Seen \\Recent) RFC822.TEXT {29}", b"Hello, world.",
            b"Second line.", b")", b"c OK FETCH completed"])
        self.assertEqual(send(proto, t, b"d FETCH 1:2 (BODY.PEEK[TEXT]<0.5> RFC822.HEADER)"), [
            b"* 1 FETCH (BODY[TEXT]<0> {5}", b"Hello RFC822.HEADER {140}", *SIMPLE.split(
                b"\r\n")[:5], b"", b")",
            b"* 2 FETCH (BODY[TEXT]<0> {5}", b"Hello RFC822.HEADER {140}", *SIMPLE.split(
                b"\r\n")[:5], b"", b")", b"d OK FETCH completed"])

    def test_no_flags_item_when_the_message_went_before_seen_was_set(self) -> None:
        """The message is read, then expunged by another session before
        \\Seen is set: nothing changed, so no FLAGS item.  Before, C{FLAGS
        (\\Recent)} was added as if \\Seen had been set."""
        proto, t, store = self.open((SIMPLE,))
        other = self.other(store)
        real = proto.session.read_message

        def read_then_gone(uid: int) -> Any:
            d = real(uid)
            self.successResultOf(other.delete([uid]))
            return d

        proto.session.read_message = read_then_gone
        self.assertEqual(send(proto, t, b"a FETCH 1 BODY[TEXT]"), [
            b"* 1 FETCH (BODY[TEXT] {29}", b"Hello, world.", b"Second line.", b")",
            b"a OK FETCH completed"])

    def test_examine_never_sets_seen(self) -> None:
        proto, t, store = self.open((SIMPLE,), readonly=True)
        self.assertEqual(send(proto, t, b"a FETCH 1 (RFC822.TEXT)"), [
            b"* 1 FETCH (RFC822.TEXT {29}", b"Hello, world.", b"Second line.", b")",
            b"a OK FETCH completed"])
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).unseen, 1)


class FetchSeenMaildirTests(FetchSeenTests):
    maildir = True


class FetchRangeTests(SynchronousTestCase):
    """Partial fetches at the edges, answered the same whether the message
    is read whole or copied from its file (L{fetch.Span})."""

    RANGES = [(0, 1), (0, 10**9), (5, 3), (699_990, 100), (699_999, 1), (700_000, 1),
              (700_001, 5), (4_294_967_295, 4_294_967_295), (9_999_999_999, 1),
              (65_535, 65_538), (0, 700_000)]

    def test_streamed_and_read_whole_agree(self) -> None:
        message = large(1)
        self.assertEqual(len(message), 700_000)
        proto, t, _ = selected((message,))
        items = b" ".join(b"BODY.PEEK[]<%d.%d>" % r for r in self.RANGES)
        streamed = wire(proto, t, b"a FETCH 1 (" + items + b")")
        whole = wire(proto, t, b"a FETCH 1 (ENVELOPE " + items + b")")
        expected = b"".join(b" BODY[]<%d> {%d}\r\n" % (o, len(message[o:o + n]))
                            + message[o:o + n] for o, n in self.RANGES)
        self.assertEqual(streamed, b"* 1 FETCH (" + expected[1:] + b")\r\n"
                         b"a OK FETCH completed\r\n")
        self.assertTrue(whole.endswith(expected + b")\r\na OK FETCH completed\r\n"))

    def test_sequence_sets(self) -> None:
        proto, t, _ = selected((SIMPLE,) * 3, limits=Limits(max_bad_commands=100))
        self.assertEqual(send(proto, t, b"a FETCH *:1 UID"), [
            b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 2)", b"* 3 FETCH (UID 3)",
            b"a OK FETCH completed"])
        self.assertEqual(send(proto, t, b"b FETCH 1,1,1,3:2,2 UID"), [
            b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 2)", b"* 3 FETCH (UID 3)",
            b"b OK FETCH completed"])
        self.assertEqual(send(proto, t, b"c FETCH 5:* UID"),
                         [b"c BAD invalid message sequence number: the last message is 3"])
        self.assertEqual(send(proto, t, b"d UID FETCH 5:* UID"),
                         [b"* 3 FETCH (UID 3)", b"d OK UID FETCH completed"])
        self.assertEqual(send(proto, t, b"e UID FETCH 4,7:9 UID"),
                         [b"e OK UID FETCH completed"])
        self.assertEqual(send(proto, t, b"f UID FETCH 4294967295 UID"),
                         [b"f OK UID FETCH completed"])

    def test_sections_with_an_empty_part_number(self) -> None:
        """C{BODY[1.]} was answered as C{BODY[1]}, a label the client did
        not ask for; an empty part number is no section (RFC 3501 section
        9, C{section-part})."""
        proto, t, _ = selected((MULTIPART,), limits=Limits(max_bad_commands=100))
        for section in [b"1.", b"1..TEXT", b"1.2.", b".1"]:
            self.assertEqual(send(proto, t, b"a FETCH 1 BODY.PEEK[" + section + b"]"),
                             [b"a BAD invalid section"], section)
        self.assertEqual(send(proto, t, b"b FETCH 1 BODY.PEEK[1]"),
                         [b"* 1 FETCH (BODY[1] {10}", b"first part)", b"b OK FETCH completed"])

    def test_binary_refused(self) -> None:
        """BINARY (RFC 3516) is not offered: BAD, never a wrong answer."""
        proto, t, _ = selected((SIMPLE,), limits=Limits(max_bad_commands=100))
        self.assertNotIn("BINARY", proto.capabilities())
        for item in [b"BINARY[]", b"BINARY.PEEK[1]", b"BINARY.SIZE[1]"]:
            self.assertEqual(send(proto, t, b"a FETCH 1 " + item),
                             [b"a BAD invalid FETCH item"], item)

    def test_header_fields_folded_and_odd(self) -> None:
        message = (b"Subject: one\r\n two\r\n\tthree\r\n"
                   b"X-Empty:\r\n"
                   b"subject : obsolete spacing\r\n"
                   b"To: a@example.org\r\n"
                   b"\r\nbody\r\n")
        proto, t, _ = selected((message,))
        reply = send(proto, t, b'a FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT "x-empty")]')
        self.assertEqual(reply, [
            b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT X-EMPTY)] {68}",
            b"Subject: one", b" two", b"\tthree", b"X-Empty:", b"subject : obsolete spacing",
            b"", b")", b"a OK FETCH completed"])


class FetchClosingTests(SynchronousTestCase):
    def connect(self, messages: tuple[bytes, ...]) -> tuple[Any, BufferingTransport, Clock]:
        clock = Clock()
        proto, t = buffered(messages, clock)
        return proto, t, clock

    def test_no_tagged_ok_after_a_fetch_cut_by_the_close(self) -> None:
        """
        The connection is closing (idle timeout, shutdown) while a FETCH
        waits for the client to read: the FETCH stops, and no tagged OK
        follows what was sent.  Before, C{a OK FETCH completed} went out
        (a closing TCP transport still sends what is written) after two
        messages of six, as if the client had them all.
        """
        proto, t, clock = self.connect(tuple(big(n) for n in range(6)))
        proto.dataReceived(b"a FETCH 1:* BODY.PEEK[]\r\n")
        self.assertTrue(t.full)
        proto.reply_shutdown()
        proto.disconnect()
        clock.advance(fetch.Backpressure.POLL)
        self.assertIsNone(t.producer)
        out = t.value()
        self.assertIn(b"* BYE", out)
        self.assertNotIn(b"a OK", out)
        self.assertNotIn(b"* 3 FETCH", out)

    def test_no_tagged_ok_when_closed_mid_copy(self) -> None:
        message = large(2, 2_000_000)
        proto, t, clock = self.connect((message,))
        proto.dataReceived(b"a FETCH 1 BODY.PEEK[]\r\n")
        self.assertTrue(t.full)
        proto.disconnect()
        clock.advance(fetch.Backpressure.POLL)
        self.assertIsNone(t.producer)
        self.assertNotIn(b"a OK", t.value())
        self.assertLess(len(t.value()), len(message))


class StoreCommandTests(BothStores, SynchronousTestCase):
    def test_refusals(self) -> None:
        proto, t, _ = self.open((SIMPLE,), limits=Limits(max_bad_commands=100))
        self.assertEqual(send(proto, t, b"a STORE 1 +FLAGS (\\Recent)"),
                         [b"a BAD \\Recent cannot be set"])
        self.assertEqual(send(proto, t, b"b STORE 1 +FLAGS ({5}\r\n\\Seen)"),
                         [b"+ Ready for literal data", b"b BAD invalid flag"])
        self.assertEqual(send(proto, t, b"c STORE 1 UNCHANGEDSINCE 5 +FLAGS (\\Seen)"),
                         [b"c BAD invalid STORE data item"])
        self.assertEqual(send(proto, t, b"d FETCH 1 FLAGS"),
                         [b"* 1 FETCH (FLAGS (\\Recent))", b"d OK FETCH completed"])

    def test_read_only(self) -> None:
        proto, t, store = self.open((SIMPLE,), readonly=True)
        for command in [b"STORE 1 +FLAGS (\\Deleted)", b"UID STORE 1 FLAGS.SILENT ()",
                        b"EXPUNGE", b"UID EXPUNGE 1", b"MOVE 1 Trash"]:
            self.assertEqual(send(proto, t, b"a " + command),
                             [b"a NO [READ-ONLY] the mailbox is selected read-only"], command)
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).messages, 1)

    def test_silent_store_quiet_but_seen_by_others(self) -> None:
        proto, t, store = self.open((SIMPLE, SIMPLE))
        other = self.other(store)
        self.assertEqual(send(proto, t, b"a STORE 1:2 +FLAGS.SILENT (\\Deleted $Done)"),
                         [b"a OK STORE completed"])
        changes = self.successResultOf(other.sync())
        self.assertEqual(sorted(info.uid for info in changes.flags), [1, 2])
        self.assertEqual(send(proto, t, b"b NOOP"), [b"b OK NOOP completed"])


class StoreCommandMaildirTests(StoreCommandTests):
    maildir = True


class LeaveMailboxTests(BothStores, SynchronousTestCase):
    def test_close_expunges_silently(self) -> None:
        proto, t, store = self.open((SIMPLE,) * 3)
        send(proto, t, b"a STORE 1,3 +FLAGS.SILENT (\\Deleted)")
        self.successResultOf(store.deliver([ALICE], SIMPLE))
        self.assertEqual(send(proto, t, b"b CLOSE"), [b"b OK CLOSE completed"])
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).messages, 2)

    def test_close_read_only_and_unselect_never_expunge(self) -> None:
        proto, t, store = self.open((SIMPLE,) * 2)
        send(proto, t, b"a STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(send(proto, t, b"b UNSELECT"), [b"b OK UNSELECT completed"])
        self.assertEqual(send(proto, t, b"c EXAMINE INBOX")[-1],
                         b"c OK [READ-ONLY] EXAMINE completed")
        self.assertEqual(send(proto, t, b"d CLOSE"), [b"d OK CLOSE completed"])
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).messages, 2)
        self.assertEqual(send(proto, t, b"e FETCH 1 UID"), [b"e BAD FETCH needs a selected mailbox"])

    def test_move_copyuid_then_expunges_descending(self) -> None:
        proto, t, store = self.open((SIMPLE,) * 5)
        validity = self.successResultOf(store.status(ALICE, "Trash")).uidvalidity
        self.assertEqual(send(proto, t, b"a MOVE 2,4:5 Trash"), [
            b"* OK [COPYUID %d 2,4:5 1:3] moved" % validity,
            b"* 5 EXPUNGE", b"* 4 EXPUNGE", b"* 2 EXPUNGE", b"a OK MOVE completed"])
        self.assertEqual(send(proto, t, b"b FETCH 1:* UID"), [
            b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 3)", b"b OK FETCH completed"])


class LeaveMailboxMaildirTests(LeaveMailboxTests):
    maildir = True


class IdleTests(BothStores, SynchronousTestCase):
    def test_pending_updates_at_start_and_done_in_any_case(self) -> None:
        proto, t, store = self.open((SIMPLE, SIMPLE))
        other = self.other(store)
        self.successResultOf(other.delete([1]))
        self.assertEqual(send(proto, t, b"a IDLE"), [b"+ idling", b"* 1 EXPUNGE"])
        self.successResultOf(other.set_flags([2], ["\\Answered"], "add"))
        self.assertEqual(lines(t), [b"* 1 FETCH (FLAGS (\\Answered \\Recent))"])
        self.assertEqual(send(proto, t, b"dOnE"), [b"a OK IDLE terminated"])

    def test_literal_plus_line_ends_idle_and_is_not_run(self) -> None:
        """
        A line other than DONE ends IDLE with BAD and is not run; if it
        announces a non-synchronizing literal (RFC 7888), the literal's
        octets follow at once and are dropped too.  Before, they were read
        as commands: here a LOGOUT inside an APPEND's message ran.
        """
        proto, t, store = self.open((SIMPLE,))
        send(proto, t, b"a IDLE")
        self.assertEqual(send(proto, t, b"x APPEND INBOX {22+}\r\nc LOGOUT\r\nd DELETE x\r\n"),
                         [b"a BAD expected DONE"])
        self.assertFalse(t.disconnecting)
        self.assertEqual(send(proto, t, b"e NOOP"), [b"e OK NOOP completed"])
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).messages, 1)


class IdleMaildirTests(IdleTests):
    maildir = True


class DroppedCommandTests(SynchronousTestCase):
    """A command that is answered without being run is dropped whole."""

    def test_invalid_tag_with_literal_plus(self) -> None:
        """
        An invalid tag is answered C{* BAD}; the command's LITERAL+
        octets (and the rest of the command) are read and dropped.
        Before, they ran as commands: the message of C{a+b APPEND ...}
        logged the client out.
        """
        proto, t, store = selected((SIMPLE,))
        message = b"c LOGOUT\r\nd STORE 1 +FLAGS (\\Deleted)\r\ne EXPUNGE\r\n"
        reply = send(proto, t, b"a+b APPEND INBOX {%d+}\r\n" % len(message) + message
                     + b" {3+}\r\nf x")
        self.assertEqual(reply, [b"* BAD invalid tag"])
        self.assertFalse(t.disconnecting)
        self.assertEqual(send(proto, t, b"g FETCH 1 FLAGS"),
                         [b"* 1 FETCH (FLAGS (\\Recent))", b"g OK FETCH completed"])
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).messages, 1)

    def test_invalid_tag_with_synchronizing_literal(self) -> None:
        """No C{+} for a command that is not run: the client sends no
        literal, and its next line is a new command."""
        proto, t, _ = selected((SIMPLE,))
        self.assertEqual(send(proto, t, b"* APPEND INBOX {5}"), [b"* BAD invalid tag"])
        self.assertEqual(send(proto, t, b"g NOOP"), [b"g OK NOOP completed"])

    def test_dropped_literal_plus_too_large(self) -> None:
        """The limits hold for a dropped command too: a LITERAL+ above
        them closes the connection rather than be read."""
        proto, t, _ = selected((SIMPLE,), limits=Limits(max_message_size=100))
        self.assertEqual(send(proto, t, b"a{b APPEND INBOX {200000+}"),
                         [b"* BAD invalid tag", b"* BYE [TOOBIG] literal too large"])
        self.assertTrue(t.disconnecting)

    def test_tags_and_odd_lines(self) -> None:
        proto, t, _ = selected((SIMPLE,), limits=Limits(max_bad_commands=100))
        for line, reply in [
                (b"", [b"* BAD invalid tag"]),
                (b"a\xff NOOP", [b"* BAD invalid tag"]),
                (b"+ NOOP", [b"* BAD invalid tag"]),
                (b"a%b NOOP", [b"* BAD invalid tag"]),
                (b"a] NOOP", [b"a] OK NOOP completed"]),
                (b"a FETCH 1 (FL\xc3\xa9GS)", [b"a BAD unexpected character"]),
                (b"a FETCH {3}\r\n1:* FLAGS", [b"+ Ready for literal data",
                                               b"a BAD invalid sequence set"]),
                (b"a \xff", [b"a BAD unknown command"])]:
            self.assertEqual(send(proto, t, line), reply, line)


class LostMidCommandTests(SynchronousTestCase):
    """The connection is lost while a command waits for the store."""

    def test_fetch_lost_during_read_sets_no_seen_and_logs_nothing(self) -> None:
        """
        Before, the FETCH went on to set \\Seen on the session that
        connectionLost had closed: C{RuntimeError}, logged with its
        traceback as C{IMAP command failed} for every client that hung up
        during a FETCH of a message body.
        """
        proto, t, store = maildir_selected(self, (SIMPLE,))
        held: list[Any] = []
        real = proto.session.read_message

        def read_message(uid: int) -> Any:
            d: Deferred[bytes] = Deferred()
            held.append((d, real(uid)))
            return d

        proto.session.read_message = read_message
        proto.dataReceived(b"a FETCH 1 BODY[]\r\n")
        t.disconnecting = True
        proto.connectionLost(None)
        [(d, data)] = held
        data.chainDeferred(d)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(t.value(), b"")
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).unseen, 1)

    def test_search_stops_reading_when_the_connection_closes(self) -> None:
        """A text SEARCH of a large folder reads no further batch once the
        client is gone, and answers nothing."""
        proto, t, _ = selected((SIMPLE,) * (search.BATCH_MESSAGES + 1))
        batches: list[int] = []
        real = proto.session.read_messages

        def read_messages(uids: Any) -> Any:
            batches.append(len(list(uids)))
            t.disconnecting = True  # closed meanwhile
            return real(uids)

        proto.session.read_messages = read_messages
        proto.dataReceived(b"a SEARCH BODY world\r\n")
        self.assertEqual(batches, [search.BATCH_MESSAGES])
        self.assertEqual(t.value(), b"")
