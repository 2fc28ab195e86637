"""
Conversations in the IMAP selected state: FETCH (sections, partial,
\\Seen, ENVELOPE, BODYSTRUCTURE), STORE, COPY/MOVE with COPYUID, EXPUNGE
and UID EXPUNGE, untagged updates, IDLE and SEARCH.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Limits
from gateway.imap import fetch, mime
from tests.imap_support import ALICE, MULTIPART, SIMPLE, selected, send


class FetchTests(SynchronousTestCase):
    def test_index_items_do_not_open_messages(self) -> None:
        proto, t, _ = selected((SIMPLE, MULTIPART))
        opened = []
        real = proto.session.read_message
        proto.session.read_message = lambda uid: (opened.append(uid), real(uid))[1]
        self.assertEqual(send(proto, t, b"a FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE)"), [
            b'* 1 FETCH (FLAGS (\\Recent) UID 1 RFC822.SIZE 169 '
            b'INTERNALDATE "09-Sep-2001 01:46:40 +0000")',
            b'* 2 FETCH (FLAGS (\\Recent) UID 2 RFC822.SIZE 282 '
            b'INTERNALDATE "09-Sep-2001 01:46:40 +0000")',
            b"a OK FETCH completed"])
        self.assertEqual(opened, [])
        send(proto, t, b"b FETCH 2 RFC822.HEADER")
        self.assertEqual(opened, [2])

    def test_partial_has_origin_label_and_is_truncated(self) -> None:
        """twisted/twisted#5613: the label is <origin>, the data count octets."""
        proto, t, _ = selected((SIMPLE,))
        self.assertEqual(send(proto, t, b"a FETCH 1 BODY.PEEK[]<6.5>"), [
            b"* 1 FETCH (BODY[]<6> {5}", b"Alice)", b"a OK FETCH completed"])
        self.assertEqual(send(proto, t, b"b FETCH 1 BODY.PEEK[TEXT]<500.10>"), [
            b"* 1 FETCH (BODY[TEXT]<500> {0}", b")", b"b OK FETCH completed"])

    def test_body_sets_seen(self) -> None:
        proto, t, store = selected((SIMPLE,))
        self.assertEqual(send(proto, t, b"a FETCH 1 BODY[TEXT]"), [
            b"* 1 FETCH (BODY[TEXT] {29}", b"Hello, world.", b"Second line.",
            b" FLAGS (\\Seen \\Recent))", b"a OK FETCH completed"])
        self.assertEqual(send(proto, t, b"b FETCH 1 BODY[TEXT]<0.5>"), [
            b"* 1 FETCH (BODY[TEXT]<0> {5}", b"Hello)", b"b OK FETCH completed"])
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).unseen, 0)

    def test_peek_and_examine_do_not_set_seen(self) -> None:
        proto, t, store = selected((SIMPLE,), readonly=True)
        send(proto, t, b"a FETCH 1 (BODY[] RFC822.TEXT)")
        send(proto, t, b"b SELECT INBOX")
        send(proto, t, b"c FETCH 1 (BODY.PEEK[] RFC822.HEADER)")
        self.assertEqual(self.successResultOf(store.status(ALICE, "INBOX")).unseen, 1)

    def test_sections(self) -> None:
        proto, t, _ = selected((MULTIPART,))
        reply = send(proto, t, b"a FETCH 1 (BODY.PEEK[1] BODY.PEEK[1.MIME] BODY.PEEK[2.TEXT] "
                               b"BODY.PEEK[2.1] BODY.PEEK[HEADER.FIELDS (subject to)] "
                               b"BODY.PEEK[HEADER.FIELDS.NOT (From To Subject MIME-Version)] "
                               b"BODY.PEEK[3])")
        self.assertEqual(b"\r\n".join(reply), (
            b"* 1 FETCH (BODY[1] {10}\r\nfirst part"
            b" BODY[1.MIME] {43}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            b" BODY[2.TEXT] {10}\r\ninner body"
            b" BODY[2.1] {10}\r\ninner body"
            b" BODY[HEADER.FIELDS (SUBJECT TO)] {41}\r\nTo: alice@example.edu\r\n"
            b"Subject: Parts\r\n\r\n"
            b' BODY[HEADER.FIELDS.NOT (FROM TO SUBJECT MIME-VERSION)] {48}\r\n'
            b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            b" BODY[3] {0}\r\n)\r\n"
            b"a OK FETCH completed"))

    def test_rfc822_items(self) -> None:
        proto, t, _ = selected((SIMPLE,))
        reply = b"\r\n".join(send(proto, t, b"a UID FETCH 1 (RFC822.HEADER RFC822)"))
        header = SIMPLE[:SIMPLE.index(b"\r\n\r\n") + 4]
        self.assertTrue(reply.startswith(
            b"* 1 FETCH (UID 1 RFC822.HEADER {%d}\r\n" % len(header) + header
            + b" RFC822 {%d}\r\n" % len(SIMPLE) + SIMPLE + b" FLAGS (\\Seen \\Recent))"), reply)

    def test_envelope_and_bodystructure(self) -> None:
        proto, t, _ = selected((SIMPLE,))
        self.assertEqual(send(proto, t, b"a FETCH 1 (ENVELOPE BODY BODYSTRUCTURE)"), [
            b'* 1 FETCH (ENVELOPE ("Wed, 17 Jul 1996 02:23:25 -0700" "Hello" '
            b'(("Alice" NIL "alice" "example.edu")) (("Alice" NIL "alice" "example.edu")) '
            b'(("Alice" NIL "alice" "example.edu")) ((NIL NIL "bob" "example.edu")) NIL NIL '
            b'NIL "<1@example.edu>") '
            b'BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 29 2) '
            b'BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 29 2 '
            b'NIL NIL NIL NIL))',
            b"a OK FETCH completed"])

    def test_multipart_bodystructure(self) -> None:
        root = mime.parse(MULTIPART)
        self.assertEqual(mime.bodystructure(root, extensible=False), (
            b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 10 0)'
            b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 28 (NIL "inner" NIL NIL NIL NIL NIL NIL '
            b'NIL NIL) ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 0) 2) "MIXED")'))

    def test_strings_quoted_or_literal(self) -> None:
        self.assertEqual(mime.nstring(b'a "b" \\c'), b'"a \\"b\\" \\\\c"')
        self.assertEqual(mime.nstring(None), b"NIL")
        self.assertEqual(mime.nstring("caf\u00e9"), b"{5}\r\ncaf\xc3\xa9")
        self.assertEqual(mime.nstring(b"a\r\nb"), b"{4}\r\na\r\nb")

    def test_8bit_subject_is_a_literal(self) -> None:
        message = b"Subject: caf\xc3\xa9\r\n\r\nx\r\n"
        envelope = mime.envelope(mime.parse(message).message)
        self.assertIn(b"{5}\r\ncaf\xc3\xa9", envelope)

    def test_bad_fetch(self) -> None:
        proto, t, _ = selected((SIMPLE,))
        self.assertEqual(send(proto, t, b"a FETCH 2 FLAGS"),
                         [b"a BAD invalid message sequence number: the last message is 1"])
        self.assertEqual(send(proto, t, b"b FETCH 1 BODY[FOO]"), [b"b BAD invalid section"])
        self.assertEqual(send(proto, t, b"c FETCH 1"),
                         [b"c BAD FETCH needs a sequence set and data items"])
        self.assertEqual(send(proto, t, b"d UID FETCH 5:9 FLAGS"), [b"d OK UID FETCH completed"])
        self.assertEqual(send(proto, t, b"e UID FETCH 9:* UID"),
                         [b"* 1 FETCH (UID 1)", b"e OK UID FETCH completed"])

    def test_internal_date_format(self) -> None:
        self.assertEqual(fetch.internal_date(0), b'"01-Jan-1970 00:00:00 +0000"')


class StoreTests(SynchronousTestCase):
    def test_store_modes(self) -> None:
        proto, t, _ = selected((SIMPLE, SIMPLE))
        self.assertEqual(send(proto, t, b"a STORE 1:2 +FLAGS (\\Flagged $Work)"), [
            b"* 1 FETCH (FLAGS ($Work \\Flagged \\Recent))",
            b"* 2 FETCH (FLAGS ($Work \\Flagged \\Recent))", b"a OK STORE completed"])
        self.assertEqual(send(proto, t, b"b UID STORE 2 -FLAGS \\Flagged"), [
            b"* 2 FETCH (UID 2 FLAGS ($Work \\Recent))", b"b OK UID STORE completed"])
        self.assertEqual(send(proto, t, b"c STORE * FLAGS.SILENT (\\Seen)"),
                         [b"c OK STORE completed"])
        self.assertEqual(send(proto, t, b"d FETCH 2 FLAGS"),
                         [b"* 2 FETCH (FLAGS (\\Seen \\Recent))", b"d OK FETCH completed"])

    def test_store_errors(self) -> None:
        proto, t, _ = selected((SIMPLE,), readonly=True)
        self.assertEqual(send(proto, t, b"a STORE 1 +FLAGS (\\Seen)"),
                         [b"a NO [READ-ONLY] the mailbox is selected read-only"])
        self.assertEqual(send(proto, t, b"b STORE 1 ADDFLAGS (\\Seen)"),
                         [b"b BAD invalid STORE data item"])


class FlagSyntaxTests(SynchronousTestCase):
    def test_keywords_must_be_atoms(self) -> None:
        """Keywords echoed in FLAGS responses must be atoms (RFC 3501
        section 9): before, C{q[r s]} was stored and shown with its space."""
        proto, t, _ = selected((SIMPLE,), limits=Limits(max_bad_commands=100))
        for bad in [b"(a]b)", b"(x%y)", b"(*)", b"(q[r s])", b"(\\\\x)", b"(\\*)", b'("a")',
                    b"NIL", b"(nil)"]:
            self.assertEqual(send(proto, t, b"a STORE 1 +FLAGS " + bad),
                             [b"a BAD invalid flag"], bad)
        self.assertEqual(send(proto, t, b"b STORE 1 +FLAGS (\\Foo)"),
                         [b"b BAD invalid system flag"])
        self.assertEqual(send(proto, t, b"c STORE 1 +FLAGS (\\seen \\FLAGGED $Label1 a}b)"),
                         [b"* 1 FETCH (FLAGS ($Label1 \\Flagged \\Seen a}b \\Recent))",
                          b"c OK STORE completed"])

    def test_append_flags_checked_too(self) -> None:
        proto, t, _ = selected(())
        self.assertEqual(send(proto, t, b"a APPEND INBOX (a]b) {1+}\r\nx"),
                         [b"a BAD invalid flag"])


class EmptyMailboxTests(SynchronousTestCase):
    """
    Message sets in an empty mailbox.  UIDs that do not exist are ignored
    (RFC 3501 section 6.4.8, RFC 9051 section 6.4.9): UID commands succeed
    and do nothing, as in Dovecot and Cyrus, and mbsync sends
    C{UID FETCH 1:*} to every empty folder.  A message sequence number
    beyond the last message, C{*} in an empty mailbox included, is BAD
    (RFC 3501 and 9051 section 9, C{seq-number}; Dovecot: "Invalid
    messageset"), but never counted toward the bad-command limit.
    """

    def setUp(self) -> None:
        self.proto, self.t, _ = selected((), limits=Limits(max_bad_commands=3))

    def send(self, line: bytes) -> list[bytes]:
        return send(self.proto, self.t, line)

    def test_uid_commands_succeed_without_data(self) -> None:
        for command, done in [
                (b"UID FETCH 1:* FLAGS", b"UID FETCH completed"),
                (b"UID FETCH * (UID BODY.PEEK[])", b"UID FETCH completed"),
                (b"UID STORE 1:* +FLAGS (\\Seen)", b"UID STORE completed"),
                (b"UID COPY 1:* Trash", b"UID COPY completed"),
                (b"UID MOVE 1:* Trash", b"UID MOVE completed"),
                (b"UID EXPUNGE 1:*", b"UID EXPUNGE completed")]:
            self.assertEqual(self.send(b"a " + command), [b"a OK " + done], command)

    def test_search_finds_nothing(self) -> None:
        self.assertEqual(self.send(b"a SEARCH 1:*"), [b"* SEARCH", b"a OK SEARCH completed"])
        self.assertEqual(self.send(b"b UID SEARCH UID 1:* *"),
                         [b"* SEARCH", b"b OK UID SEARCH completed"])

    def test_sequence_numbers_bad_but_not_counted(self) -> None:
        for _ in range(4):  # more than max_bad_commands
            for command in [b"FETCH 1:* FLAGS", b"FETCH * UID", b"STORE 1:* +FLAGS (\\Seen)",
                            b"COPY 1:* Trash", b"MOVE * Trash"]:
                self.assertEqual(self.send(b"a " + command), [
                    b"a BAD invalid message sequence number: the mailbox is empty"], command)
        self.assertFalse(self.t.disconnecting)
        self.assertEqual(self.proto.bad_commands, 0)
        self.assertEqual(self.send(b"b NOOP"), [b"b OK NOOP completed"])

    def test_beyond_the_last_message_not_counted(self) -> None:
        proto, t, _ = selected((SIMPLE,), limits=Limits(max_bad_commands=1))
        for command in [b"FETCH 2 FLAGS", b"FETCH 1,3:* FLAGS", b"STORE 2 +FLAGS (\\Seen)"]:
            self.assertEqual(send(proto, t, b"a " + command), [
                b"a BAD invalid message sequence number: the last message is 1"])
        self.assertFalse(t.disconnecting)
        self.assertEqual(send(proto, t, b"b FETCH 1:* UID"),
                         [b"* 1 FETCH (UID 1)", b"b OK FETCH completed"])

    def test_malformed_sets_still_counted(self) -> None:
        self.assertEqual(self.send(b"a FETCH 0 FLAGS"), [b"a BAD invalid sequence set"])
        self.assertEqual(self.send(b"b UID FETCH 1:x FLAGS"), [b"b BAD invalid sequence set"])
        self.assertEqual(self.proto.bad_commands, 2)
        self.assertEqual(self.send(b"c FETCH 1:2:3 FLAGS"), [])  # the third: closed
        self.assertTrue(self.t.disconnecting)


class TransferTests(SynchronousTestCase):
    def test_copy(self) -> None:
        proto, t, store = selected((SIMPLE, SIMPLE, SIMPLE))
        validity = self.successResultOf(store.status(ALICE, "Trash")).uidvalidity
        self.assertEqual(send(proto, t, b"a COPY 1,3 Trash"),
                         [b"a OK [COPYUID %d 1,3 1:2] COPY completed" % validity])
        self.assertEqual(send(proto, t, b"b UID COPY 2 Nope"),
                         [b"b NO [TRYCREATE] no such folder: Nope"])

    def test_move(self) -> None:
        proto, t, store = selected((SIMPLE, SIMPLE, SIMPLE))
        validity = self.successResultOf(store.status(ALICE, "Archive")).uidvalidity
        self.assertEqual(send(proto, t, b"a MOVE 1,3 Archive"), [
            b"* OK [COPYUID %d 1,3 1:2] moved" % validity,
            b"* 3 EXPUNGE", b"* 1 EXPUNGE", b"a OK MOVE completed"])
        self.assertEqual(send(proto, t, b"b UID MOVE 2 Archive"), [
            b"* OK [COPYUID %d 2 3] moved" % validity, b"* 1 EXPUNGE",
            b"b OK UID MOVE completed"])

    def test_expunge(self) -> None:
        proto, t, _ = selected((SIMPLE,) * 5)
        send(proto, t, b"a STORE 2,4:5 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(send(proto, t, b"b UID EXPUNGE 1:4"),
                         [b"* 4 EXPUNGE", b"* 2 EXPUNGE", b"b OK UID EXPUNGE completed"])
        self.assertEqual(send(proto, t, b"c EXPUNGE"), [b"* 3 EXPUNGE", b"c OK EXPUNGE completed"])

    def test_expunge_read_only(self) -> None:
        proto, t, _ = selected((SIMPLE,), readonly=True)
        self.assertEqual(send(proto, t, b"a EXPUNGE"),
                         [b"a NO [READ-ONLY] the mailbox is selected read-only"])


class UpdateTests(SynchronousTestCase):
    def test_noop_reports_other_sessions(self) -> None:
        proto, t, store = selected((SIMPLE, SIMPLE, SIMPLE))
        other = self.successResultOf(store.open_folder(ALICE, "INBOX"))
        self.successResultOf(other.set_flags([1, 3], ["\\Deleted"], "add"))
        self.successResultOf(other.expunge())
        self.successResultOf(other.set_flags([2], ["\\Answered"], "add"))
        store.deliver([ALICE], SIMPLE)
        self.assertEqual(send(proto, t, b"a NOOP"), [
            b"* 3 EXPUNGE", b"* 1 EXPUNGE", b"* 2 EXISTS", b"* 2 RECENT",
            b"* 1 FETCH (FLAGS (\\Answered \\Recent))", b"a OK NOOP completed"])

    def test_no_expunge_during_fetch_store_search(self) -> None:
        proto, t, store = selected((SIMPLE, SIMPLE))
        other = self.successResultOf(store.open_folder(ALICE, "INBOX"))
        self.successResultOf(other.delete([1]))
        self.assertEqual(send(proto, t, b"a FETCH 2 UID"),
                         [b"* 2 FETCH (UID 2)", b"a OK FETCH completed"])
        self.assertEqual(send(proto, t, b"b UID SEARCH ALL"),
                         [b"* SEARCH 1 2", b"b OK UID SEARCH completed"])
        self.assertEqual(send(proto, t, b"c CHECK"), [b"* 1 EXPUNGE", b"c OK CHECK completed"])


class IdleTests(SynchronousTestCase):
    def test_idle_reports_and_done(self) -> None:
        proto, t, store = selected((SIMPLE,))
        self.assertEqual(send(proto, t, b"a IDLE"), [b"+ idling"])
        store.deliver([ALICE], SIMPLE)
        self.assertEqual(t.value(), b"* 2 EXISTS\r\n* 2 RECENT\r\n")
        t.clear()
        self.assertEqual(send(proto, t, b"done"), [b"a OK IDLE terminated"])
        self.assertEqual(send(proto, t, b"b NOOP"), [b"b OK NOOP completed"])

    def test_idle_needs_done(self) -> None:
        """Twisted ends IDLE on any line; only DONE ends it cleanly here."""
        proto, t, _ = selected()
        send(proto, t, b"a IDLE")
        self.assertEqual(send(proto, t, b"b NOOP"), [b"a BAD expected DONE"])
        self.assertEqual(send(proto, t, b"c NOOP"), [b"c OK NOOP completed"])

    def test_idle_authenticated(self) -> None:
        proto, t, _ = selected()
        send(proto, t, b"u UNSELECT")
        self.assertEqual(send(proto, t, b"a IDLE"), [b"+ idling"])
        self.assertEqual(send(proto, t, b"DONE"), [b"a OK IDLE terminated"])


OTHER = (b"From: Carol <carol@example.org>\r\nTo: alice@example.edu\r\n"
         b"Cc: dave@example.org\r\nSubject: =?utf-8?q?Caf=C3=A9?= news\r\n"
         b"Date: Mon, 3 Jan 2000 10:00:00 +0000\r\nX-Tag: blue\r\n\r\n"
         b"Long body text here, with a Needle in it.\r\n")


class SearchTests(SynchronousTestCase):
    def search(self, query: bytes) -> list[bytes]:
        proto, t, _ = selected((SIMPLE, OTHER, MULTIPART))
        send(proto, t, b"s0 STORE 2 +FLAGS.SILENT (\\Flagged)")
        return send(proto, t, b"s " + query)

    def test_keys(self) -> None:
        cases = {
            b"SEARCH ALL": b"* SEARCH 1 2 3",
            b"SEARCH FLAGGED": b"* SEARCH 2",
            b"SEARCH UNFLAGGED RECENT": b"* SEARCH 1 3",
            b"SEARCH NOT FLAGGED": b"* SEARCH 1 3",
            b"SEARCH OR 1 3": b"* SEARCH 1 3",
            b"SEARCH (2:3 SMALLER 250)": b"* SEARCH 2",
            b"SEARCH LARGER 250": b"* SEARCH 3",
            b"SEARCH FROM CAROL": b"* SEARCH 2",
            b"SEARCH SUBJECT caf": b"* SEARCH 2",
            b"SEARCH CHARSET UTF-8 SUBJECT {5+}\r\ncaf\xc3\xa9": b"* SEARCH 2",
            b"SEARCH CC dave TO alice": b"* SEARCH 2",
            b"SEARCH BCC x": b"* SEARCH",
            b"SEARCH HEADER X-Tag BLUE": b"* SEARCH 2",
            b"SEARCH BODY needle": b"* SEARCH 2",
            b"SEARCH TEXT inner": b"* SEARCH 3",
            b"SEARCH SENTBEFORE 1-Jan-2000": b"* SEARCH 1",
            b"SEARCH SENTON 3-Jan-2000": b"* SEARCH 2",
            b"SEARCH SENTSINCE 2-Jan-2000": b"* SEARCH 2",
            b"SEARCH ON 9-Sep-2001": b"* SEARCH 1 2 3",
            b"SEARCH BEFORE 9-Sep-2001": b"* SEARCH",
            b"SEARCH SINCE 10-Sep-2001": b"* SEARCH",
            b"SEARCH UID 2:*": b"* SEARCH 2 3",
            b"UID SEARCH 2,3": b"* SEARCH 2 3",
            b"SEARCH KEYWORD $Work": b"* SEARCH",
            b"SEARCH NEW": b"* SEARCH 1 2 3",
            b"SEARCH OLD": b"* SEARCH",
        }
        for query, expected in cases.items():
            reply = self.search(query)
            self.assertEqual(reply[0], expected, query)
            self.assertTrue(reply[1].startswith(b"s OK"), (query, reply))

    def test_errors(self) -> None:
        self.assertEqual(self.search(b"SEARCH CHARSET KOI8-R ALL"),
                         [b"s NO [BADCHARSET (US-ASCII UTF-8)] unsupported charset"])
        self.assertEqual(self.search(b"SEARCH FOO"), [b"s BAD invalid sequence set"])
        self.assertEqual(self.search(b"SEARCH OR ALL"), [b"s BAD missing search argument"])
