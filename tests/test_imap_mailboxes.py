"""
Conversations in the IMAP authenticated state (RFC 3501 section 6.3):
SELECT/EXAMINE, mailbox management, LIST/LSUB, STATUS, APPEND, NAMESPACE,
ID, ENABLE, and the state rules.
"""

from __future__ import annotations

import re
import time

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Limits
from gateway.imap.mailboxes import ListPattern, decode_name, encode_name, parse_date_time
from gateway.imap.parser import Atom, ParseError, String
from gateway.imap.protocol import COMMAND_OVERHEAD, IMAPFactory
from tests.imap_support import ALICE, SIMPLE, logged_in, send
from tests.test_protocols import connect, lines

EXAMPLE = b"Subject: x\r\n\r\nbody\r\n"


class SelectTests(SynchronousTestCase):
    def test_select(self) -> None:
        proto, t, store = logged_in((SIMPLE, SIMPLE))
        self.successResultOf(store.open_folder(ALICE, "INBOX")).close()
        self.assertEqual(send(proto, t, b"a SELECT inbox"), [
            b"* FLAGS (\\Answered \\Deleted \\Draft \\Flagged \\Seen)",
            b"* OK [PERMANENTFLAGS (\\Answered \\Deleted \\Draft \\Flagged \\Seen \\*)] "
            b"flags permitted",
            b"* 2 EXISTS",
            b"* 0 RECENT",
            b"* OK [UNSEEN 1] first unseen message",
            b"* OK [UIDVALIDITY 1000000000] UIDs valid",
            b"* OK [UIDNEXT 3] predicted next UID",
            b"a OK [READ-WRITE] SELECT completed",
        ])
        self.assertEqual(proto.state, "SELECTED")

    def test_examine(self) -> None:
        proto, t, _ = logged_in((SIMPLE,))
        reply = send(proto, t, b"a EXAMINE INBOX")
        self.assertIn(b"* OK [PERMANENTFLAGS ()] read-only mailbox", reply)
        self.assertIn(b"* 1 RECENT", reply)
        self.assertEqual(reply[-1], b"a OK [READ-ONLY] EXAMINE completed")

    def test_select_missing_deselects(self) -> None:
        """RFC 3501 section 6.3.1: a failed SELECT leaves no mailbox selected."""
        proto, t, _ = logged_in()
        send(proto, t, b"a SELECT INBOX")
        self.assertEqual(send(proto, t, b"b SELECT Nope"),
                         [b"b NO [NONEXISTENT] no such folder: Nope"])
        self.assertEqual(proto.state, "AUTHENTICATED")
        self.assertEqual(send(proto, t, b"c CHECK"), [b"c BAD CHECK needs a selected mailbox"])

    def test_unselect_and_close(self) -> None:
        proto, t, store = logged_in((SIMPLE, SIMPLE))
        send(proto, t, b"a SELECT INBOX")
        send(proto, t, b"b STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(send(proto, t, b"c UNSELECT"), [b"c OK UNSELECT completed"])
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).messages, 2)
        send(proto, t, b"d SELECT INBOX")
        self.assertEqual(send(proto, t, b"e CLOSE"), [b"e OK CLOSE completed"])
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).messages, 1)
        self.assertEqual(proto.state, "AUTHENTICATED")

    def test_close_read_only_does_not_expunge(self) -> None:
        proto, t, store = logged_in((SIMPLE,))
        send(proto, t, b"a SELECT INBOX")
        send(proto, t, b"b STORE 1 +FLAGS.SILENT (\\Deleted)")
        send(proto, t, b"c EXAMINE INBOX")
        self.assertEqual(send(proto, t, b"d CLOSE"), [b"d OK CLOSE completed"])
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).messages, 1)


class ManagementTests(SynchronousTestCase):
    def test_create_list_rename_delete(self) -> None:
        proto, t, _ = logged_in()
        self.assertEqual(send(proto, t, b"a CREATE Lists/Twisted/"), [b"a OK CREATE completed"])
        self.assertEqual(send(proto, t, b'b LIST "" Lists*'), [
            b'* LIST (\\HasChildren) "/" "Lists"',
            b'* LIST (\\HasNoChildren) "/" "Lists/Twisted"',
            b"b OK LIST completed"])
        self.assertEqual(send(proto, t, b'c LIST "" %'), [
            b'* LIST (\\HasNoChildren) "/" "INBOX"',
            b'* LIST (\\HasNoChildren \\Archive) "/" "Archive"',
            b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"',
            b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
            b'* LIST (\\HasChildren) "/" "Lists"',
            b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
            b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
            b"c OK LIST completed"])
        self.assertEqual(send(proto, t, b"d RENAME Lists Old"), [b"d OK RENAME completed"])
        self.assertEqual(send(proto, t, b'e LIST Old/ %'), [
            b'* LIST (\\HasNoChildren) "/" "Old/Twisted"', b"e OK LIST completed"])
        self.assertEqual(send(proto, t, b"f DELETE Old"), [
            b"f NO [CANNOT] invalid folder name 'Old': it has child folders; delete them first"])
        self.assertEqual(send(proto, t, b"g DELETE Old/Twisted"), [b"g OK DELETE completed"])

    def test_create_exists(self) -> None:
        proto, t, _ = logged_in()
        self.assertEqual(send(proto, t, b"a CREATE Sent"),
                         [b"a NO [ALREADYEXISTS] folder already exists: Sent"])
        self.assertEqual(send(proto, t, b"b CREATE inbox"),
                         [b"b NO [ALREADYEXISTS] INBOX always exists"])

    def test_inbox_rules(self) -> None:
        proto, t, store = logged_in((SIMPLE,))
        self.assertEqual(send(proto, t, b"a DELETE INBOX"),
                         [b"a NO [CANNOT] INBOX cannot be deleted"])
        self.assertEqual(send(proto, t, b"b RENAME INBOX Saved"), [b"b OK RENAME completed"])
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).messages, 0)
        self.assertEqual(self.successResultOf(store.status(ALICE, "Saved")).messages, 1)
        self.assertEqual(send(proto, t, b"c RENAME Saved INBOX"),
                         [b"c NO [ALREADYEXISTS] INBOX always exists"])

    def test_list_pattern_with_many_wildcards_answers_at_once(self) -> None:
        """
        Regression: LIST patterns were regular expressions that backtracked
        exponentially; this LIST held the reactor for minutes (found
        probing the gateway that mbsync and offlineimap were run against).
        """
        proto, t, _ = logged_in()
        send(proto, t, b'a CREATE "Projects/2026 Q1/some quite long folder name"')
        started = time.monotonic()  # the regular expressions took 5 to 30 s here
        self.assertEqual(send(proto, t, b'a LIST "" "*%*%*%*%*%x"'), [b"a OK LIST completed"])
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(send(proto, t, b'b LIST "" "' + b"*%" * 40 + b'x"'),
                         [b"b OK LIST completed"])
        self.assertEqual(send(proto, t, b'c LIST "" "' + b"%*" * 40 + b'name"'), [
            b'* LIST (\\HasNoChildren) "/" "Projects/2026 Q1/some quite long folder name"',
            b"c OK LIST completed"])
        self.assertLess(time.monotonic() - started, 1.0)

    def test_list_empty_pattern(self) -> None:
        proto, t, _ = logged_in()
        self.assertEqual(send(proto, t, b'a LIST "" ""'),
                         [b'* LIST (\\Noselect) "/" ""', b"a OK LIST completed"])

    def test_subscriptions(self) -> None:
        proto, t, _ = logged_in()
        send(proto, t, b"a CREATE Work")
        self.assertEqual(send(proto, t, b"b SUBSCRIBE Work"), [b"b OK SUBSCRIBE completed"])
        self.assertEqual(send(proto, t, b"c UNSUBSCRIBE Junk"), [b"c OK UNSUBSCRIBE completed"])
        self.assertEqual(send(proto, t, b'd LSUB "" *'), [
            b'* LSUB () "/" "INBOX"', b'* LSUB () "/" "Archive"', b'* LSUB () "/" "Drafts"',
            b'* LSUB () "/" "Sent"', b'* LSUB () "/" "Trash"', b'* LSUB () "/" "Work"',
            b"d OK LSUB completed"])
        self.assertEqual(send(proto, t, b"e SUBSCRIBE Nope"),
                         [b"e NO [NONEXISTENT] no such folder: Nope"])

    def test_international_names(self) -> None:
        proto, t, store = logged_in()
        self.assertEqual(send(proto, t, b"a CREATE &ZeVnLIqe-"), [b"a OK CREATE completed"])
        names = [f.name for f in self.successResultOf(store.folders(ALICE))]
        self.assertIn("\u65e5\u672c\u8a9e", names)
        self.assertEqual(send(proto, t, b'b LIST "" &ZeVnLIqe-'), [
            b'* LIST (\\HasNoChildren) "/" "&ZeVnLIqe-"', b"b OK LIST completed"])
        self.assertEqual(send(proto, t, b"c CREATE &Jjo"),
                         [b"c BAD mailbox name is not modified UTF-7"])

    def test_refusals_quote_names_in_ascii(self) -> None:
        """A response's text is 7-bit (RFC 3501 section 9, TEXT-CHAR);
        before, the store's error text carried the name in UTF-8."""
        proto, t, _ = logged_in()
        self.assertEqual(send(proto, t, b'a SELECT "&AOk-t&AOk-"'),
                         [b"a NO [NONEXISTENT] no such folder: \\xe9t\\xe9"])
        send(proto, t, b"b CREATE &ZeVnLIqe-")
        self.assertEqual(send(proto, t, b"c CREATE &ZeVnLIqe-"), [
            b"c NO [ALREADYEXISTS] folder already exists: \\u65e5\\u672c\\u8a9e"])

    def test_status(self) -> None:
        proto, t, _ = logged_in((SIMPLE,))
        self.assertEqual(send(proto, t, b"a STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)"), [
            b'* STATUS "INBOX" (MESSAGES 1 RECENT 1 UIDNEXT 2 UIDVALIDITY 1000000000 UNSEEN 1)',
            b"a OK STATUS completed"])
        self.assertEqual(send(proto, t, b"b STATUS INBOX (SIZE)"), [b"b BAD unknown STATUS item"])
        self.assertEqual(send(proto, t, b"c STATUS Nope (MESSAGES)"),
                         [b"c NO [NONEXISTENT] no such folder: Nope"])


class AppendTests(SynchronousTestCase):
    def test_append(self) -> None:
        proto, t, store = logged_in()
        proto.dataReceived(b'a APPEND Drafts (\\Draft $Work) "17-Jul-1996 02:44:25 -0700" {%d}\r\n'
                           % len(EXAMPLE))
        self.assertEqual(lines(t), [b"+ Ready for literal data"])
        proto.dataReceived(EXAMPLE + b"\r\n")
        uidvalidity = self.successResultOf(store.status(ALICE, "Drafts")).uidvalidity
        self.assertEqual(lines(t), [b"a OK [APPENDUID %d 1] APPEND completed" % uidvalidity])
        session = self.successResultOf(store.open_folder(ALICE, "Drafts"))
        info = session.messages()[0]
        self.assertEqual(info.flags, frozenset({"\\Draft", "$Work"}))
        self.assertEqual(info.internal_date, 837596665.0)

    def test_append_to_selected_reports_exists(self) -> None:
        proto, t, _ = logged_in()
        send(proto, t, b"a SELECT INBOX")
        proto.dataReceived(b"b APPEND INBOX {%d+}\r\n" % len(EXAMPLE) + EXAMPLE + b"\r\n")
        self.assertEqual(lines(t), [b"* 1 EXISTS", b"* 1 RECENT",
                                    b"b OK [APPENDUID 1000000000 1] APPEND completed"])

    def test_append_trycreate(self) -> None:
        proto, t, _ = logged_in()
        proto.dataReceived(b"a APPEND Nope {%d+}\r\n" % len(EXAMPLE) + EXAMPLE + b"\r\n")
        self.assertEqual(lines(t), [b"a NO [TRYCREATE] no such folder: Nope"])

    def test_append_too_big(self) -> None:
        """The literal is refused before it is read."""
        proto, t, _ = logged_in(limits=Limits(max_message_size=100))
        proto.dataReceived(b"a APPEND INBOX {101}\r\n")
        self.assertEqual(lines(t), [b"a NO [TOOBIG] literal too large"])
        self.assertEqual(send(proto, t, b"b NOOP"), [b"b OK NOOP completed"])

    def test_only_append_takes_a_message_sized_literal(self) -> None:
        """After login a literal of another command (a SEARCH string, a
        mailbox name) is bounded by COMMAND_OVERHEAD, not the message size."""
        proto, t, _ = logged_in()
        send(proto, t, b"a SELECT INBOX")
        big = COMMAND_OVERHEAD + 1
        proto.dataReceived(b"b SEARCH TEXT {%d}\r\n" % big)
        self.assertEqual(lines(t), [b"b NO [TOOBIG] literal too large"])
        proto.dataReceived(b"c STATUS {%d}\r\n" % big)
        self.assertEqual(lines(t), [b"c NO [TOOBIG] literal too large"])
        proto.dataReceived(b"d uid search charset utf-8 text {5}\r\n")
        self.assertEqual(lines(t), [b"+ Ready for literal data"])
        proto.dataReceived(b"hello\r\n")
        self.assertEqual(lines(t), [b"* SEARCH", b"d OK UID SEARCH completed"])
        proto.dataReceived(b"e APPEND INBOX {%d}\r\n" % big)
        self.assertEqual(lines(t), [b"+ Ready for literal data"])

    def test_append_bad_arguments(self) -> None:
        proto, t, _ = logged_in()
        self.assertEqual(send(proto, t, b"a APPEND INBOX (\\Seen) x"),
                         [b"a BAD APPEND needs a mailbox name and a message literal"])
        proto.dataReceived(b'b APPEND INBOX "bad date" {1+}\r\nx\r\n')
        self.assertEqual(lines(t), [b"b BAD invalid date-time"])
        proto.dataReceived(b"c APPEND INBOX (\\Recent) {1+}\r\nx\r\n")
        self.assertEqual(lines(t), [b"c BAD \\Recent cannot be set"])


class MiscTests(SynchronousTestCase):
    def test_namespace_id_enable(self) -> None:
        proto, t, _ = logged_in()
        self.assertEqual(send(proto, t, b"a NAMESPACE"),
                         [b'* NAMESPACE (("" "/")) NIL NIL', b"a OK NAMESPACE completed"])
        self.assertEqual(send(proto, t, b'b ID ("name" "mutt")'),
                         [b'* ID ("name" "mailgateway")', b"b OK ID completed"])
        self.assertEqual(send(proto, t, b"c ID"), [b"c BAD ID needs NIL or a parenthesized list"])
        self.assertEqual(send(proto, t, b"d ENABLE CONDSTORE"),
                         [b"* ENABLED", b"d OK ENABLE completed"])

    def test_id_before_login(self) -> None:
        proto, t = connect(IMAPFactory, "imap")
        lines(t)
        self.assertEqual(send(proto, t, b"a ID NIL"),
                         [b'* ID ("name" "mailgateway")', b"a OK ID completed"])

    def test_state_rules(self) -> None:
        proto, t = connect(IMAPFactory, "imap")
        lines(t)
        self.assertEqual(send(proto, t, b"a SELECT INBOX"),
                         [b"a BAD SELECT is not valid before login"])
        self.assertEqual(send(proto, t, b"b FETCH 1 FLAGS"),
                         [b"b BAD FETCH needs a selected mailbox"])
        self.assertEqual(send(proto, t, b"c XYZZY"), [b"c BAD unknown command"])

    def test_capabilities_after_login(self) -> None:
        proto, t, _ = logged_in()
        self.assertEqual(send(proto, t, b"a CAPABILITY"), [
            b"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS MOVE "
            b"UNSELECT CHILDREN SPECIAL-USE", b"a OK CAPABILITY completed"])

    def test_logout_closes_session(self) -> None:
        proto, t, store = logged_in()
        send(proto, t, b"a SELECT INBOX")
        session = proto.session
        self.assertEqual(send(proto, t, b"b LOGOUT"),
                         [b"* BYE logging out", b"b OK LOGOUT completed"])
        proto.connectionLost(None)
        self.assertIsNone(proto.session)
        self.assertNotIn(session, store._accounts[ALICE].folders["INBOX"].sessions)

    def test_internal_error_is_not_shown(self) -> None:
        proto, t, _ = logged_in()

        def broken(account: str) -> None:
            raise RuntimeError("secret detail")
        proto.store.folders = broken
        self.assertEqual(send(proto, t, b'a LIST "" *'), [b"a NO [SERVERBUG] internal error"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(send(proto, t, b"b NOOP"), [b"b OK NOOP completed"])


class NameTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        for name in ["INBOX", "a&b", "\u65e5\u672c\u8a9e/x", "caf\u00e9 \U0001F600"]:
            self.assertEqual(decode_name(Atom(encode_name(name))), name)

    def test_encoded_ascii_refused(self) -> None:
        """
        RFC 3501 section 5.1.3: printable US-ASCII never appears in the
        base64 of modified UTF-7 (C{&AGE-} is "a", C{&AC8-} the delimiter,
        C{&AC4ALg-} ".."): one name, one spelling.
        """
        for bad in [b"&AGE-", b"x&AC8-y", b"&AC4ALg-", b"&AOkAYQ-"]:
            self.assertRaises(ParseError, decode_name, String(bad))
        self.assertEqual(decode_name(String(b"&AOkA6Q-")), "\u00e9\u00e9")
        proto, t, _ = logged_in()
        self.assertEqual(send(proto, t, b"a CREATE x&AC8-y"),
                         [b"a BAD mailbox name is not modified UTF-7"])
        self.assertEqual(send(proto, t, b"b SELECT &AEkATgBCAE8AWA-"),
                         [b"b BAD mailbox name is not modified UTF-7"])

    def test_inbox_case(self) -> None:
        self.assertEqual(decode_name(String(b"iNbOx")), "INBOX")
        self.assertEqual(decode_name(String(b"iNbOx/a")), "iNbOx/a")

    def test_date_time(self) -> None:
        self.assertEqual(parse_date_time(String(b" 1-Jan-2000 00:00:00 +0100")), 946681200.0)
        self.assertEqual(parse_date_time(String(b"1-Jan-2000 00:00:00 -2359")), 946771140.0)
        for bad in [b"31-Feb-2000 00:00:00 +0000", b"1-Jan-2000", b"1-Foo-2000 00:00:00 +0000",
                    b"1-Jan-2000 00:00:00 +9999", b"1-Jan-2000 00:00:00 -0060",
                    b"1-Jan-2000 00:00:00 +2400"]:
            self.assertRaises(ParseError, parse_date_time, String(bad))


def reference_match(pattern: str, name: str) -> bool:
    """LIST wildcards as a regular expression: right, but exponential on some patterns."""
    regex = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


class ListPatternTests(SynchronousTestCase):
    @given(st.text("ab/*%", max_size=8), st.text("ab/", max_size=10))
    def test_same_as_a_regular_expression(self, pattern: str, name: str) -> None:
        self.assertEqual(ListPattern(pattern).match(name), reference_match(pattern, name))

    def test_examples(self) -> None:
        cases = [("*", "", True), ("%", "a/b", False), ("%/%", "a/b", True), ("a*", "a/b/c", True),
                 ("a%", "a/b", False), ("%*%", "x", True), ("INBOX", "INBOX", True),
                 ("IN%X", "INBOX", True), ("a", "ab", False), ("", "", True), ("", "a", False)]
        for pattern, name, expected in cases:
            self.assertEqual(ListPattern(pattern).match(name), expected, (pattern, name))

    def test_linear_in_the_name(self) -> None:
        started = time.monotonic()
        self.assertFalse(ListPattern("*%" * 500 + "x").match("y" * 2000))
        self.assertLess(time.monotonic() - started, 1.0)
