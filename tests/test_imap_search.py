"""
SEARCH on decoded text (RFC 3501 section 6.4.4): the decoding itself
(L{gateway.imap.decode}, pure) and SEARCH conversations on messages whose
text is quoted-printable, base64, in other charsets or in encoded words;
and the bound on the work per message.
"""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Limits
from gateway.imap import decode, mime, search
from gateway.store.model import NoSuchMessage
from tests.imap_support import selected, send

QP_LATIN1 = (b"From: a@x.example\r\nSubject: menu\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: text/plain; charset=iso-8859-1\r\n"
             b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
             b"Le caf=E9 est pr=EA=\r\nt.\r\n")

BASE64_UTF8 = (b"From: b@x.example\r\nSubject: greetings\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=\"UTF-8\"\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes("Grüße aus Köln\r\n".encode()).replace(b"\n", b"\r\n"))

ATTACHMENT = (b"From: c@x.example\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
              b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
              b"preamble mentions zebra\r\n"
              b"--b\r\nContent-Type: text/html; charset=utf-8\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\n"
              + base64.b64encode("<p>Voilà l'élan</p>".encode()) + b"\r\n"
              b"--b\r\nContent-Type: application/octet-stream\r\n"
              b"Content-Disposition: attachment; filename=blob.bin\r\n\r\n"
              b"secretword\r\n--b--\r\n")

ODD_CHARSETS = (b"From: d@x.example\r\nSubject: =?x-unknown?q?mystery_text?=\r\n"
                b"X-Broken: =?utf-8?b?####?= tail\r\n"
                b"Content-Type: multipart/mixed; boundary=c\r\n\r\n"
                b"--c\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n\r\n"
                b"na\xc3\xafve\r\n"
                b"--c\r\nContent-Type: text/plain; charset=rot13\r\n\r\nuryyb\r\n"
                b"--c\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                b"cre\xcc\x80me decomposed\r\n--c--\r\n")

HEADERS = (b"From: =?utf-8?q?Jos=C3=A9?= <jose@x.example>\r\n"
           b"To: =?iso-8859-1?q?Suzanne_M=FCller?= <s@x.example>\r\n"
           b"Subject: =?iso-8859-1?q?Gr=FC=DFe?= und =?utf-8?b?S8O2bG4=?=\r\n"
           b"X-Raw: stra\xc3\x9fe\r\n\r\nplain\r\n")

MESSAGES = (QP_LATIN1, BASE64_UTF8, ATTACHMENT, ODD_CHARSETS, HEADERS)


class DecodeTests(SynchronousTestCase):
    def test_transfer_encodings(self) -> None:
        self.assertEqual(list(decode.body_texts(mime.parse(QP_LATIN1))),
                         ["Le café est prêt.\r\n"])
        self.assertEqual(list(decode.body_texts(mime.parse(BASE64_UTF8))),
                         ["Grüße aus Köln\r\n"])

    def test_only_text_parts(self) -> None:
        """Like Dovecot: not attachments, not the multipart preamble."""
        self.assertEqual(list(decode.body_texts(mime.parse(ATTACHMENT))),
                         ["<p>Voilà l'élan</p>"])

    def test_charset_fallbacks(self) -> None:
        self.assertEqual(decode.to_text(b"na\xc3\xafve", "x-no-such-charset"), "naïve")
        self.assertEqual(decode.to_text(b"uryyb", "rot13"), "uryyb")  # not a text encoding
        self.assertEqual(decode.to_text(b"aGk=", "base64"), "aGk=")
        self.assertEqual(decode.to_text(b"\xff", "utf-8"), "\ufffd")
        self.assertEqual(decode.to_text(b"\xe9", '"ISO-8859-1"'), "é")

    def test_broken_base64_body(self) -> None:
        part = mime.parse(b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8*gd29y!!bGQ=\r\nxy")
        self.assertEqual(decode.transfer_decoded(part), b"hello world")

    def test_header_values(self) -> None:
        message = mime.parse(HEADERS).message
        subject = mime.header(message, "subject")
        assert subject is not None
        self.assertEqual(decode.header_value(subject), "Grüße und Köln")
        raw = mime.header(message, "x-raw")
        assert raw is not None
        self.assertEqual(decode.header_value(raw), "straße")
        self.assertEqual(decode.header_value("=?x-unknown?q?mystery_text?="), "mystery text")
        self.assertEqual(decode.header_value("=?utf-8?b?####?= tail"), "=?utf-8?b?####?= tail")
        self.assertEqual(decode.header_value("=?utf-8?q?a?= =?utf-8?q?b?=  c =?utf-8*en?q?d?="),
                         "ab  c d")

    def test_fold(self) -> None:
        self.assertEqual(decode.fold("GRÜSSE"), decode.fold("grüße"))
        self.assertEqual(decode.fold("e\u0301"), decode.fold("É"))

    @given(st.binary(max_size=300), st.sampled_from(
        ["base64", "quoted-printable", "7bit", "x-foo"]), st.sampled_from(
        ["utf-8", "utf-16", "x-foo", "idna", "rot13", "", "iso-2022-jp", "utf-7"]))
    @settings(max_examples=300, deadline=None)
    def test_any_body_decodes(self, body: bytes, encoding: str, charset: str) -> None:
        message = (f"Content-Type: text/plain; charset={charset}\r\n"
                   f"Content-Transfer-Encoding: {encoding}\r\n"
                   f"Subject: =?{charset or 'x'}?b?{body[:20].hex()}?=\r\n\r\n").encode() + body
        root = mime.parse(message)
        self.assertIsInstance(list(decode.body_texts(root)), list)
        self.assertIsInstance(list(decode.all_headers(root)), list)


class SearchConversationTests(SynchronousTestCase):
    def search(self, query: bytes, **kw: object) -> list[bytes]:
        proto, t, _ = selected(MESSAGES, **kw)
        return send(proto, t, b"s " + query)

    def test_decoded_text(self) -> None:
        cases = {
            b"SEARCH CHARSET UTF-8 BODY {5+}\r\ncaf\xc3\xa9": b"* SEARCH 1",
            b"SEARCH CHARSET UTF-8 BODY {6+}\r\nCAF\xc3\x89 ": b"* SEARCH 1",
            b"SEARCH CHARSET UTF-8 BODY {5+}\r\npr\xc3\xaat": b"* SEARCH 1",  # soft line break
            b"SEARCH CHARSET UTF-8 BODY \"GR\xc3\x9cSSE aus\"": b"* SEARCH 2",
            b"SEARCH CHARSET UTF-8 TEXT {5+}\r\nk\xc3\xb6ln": b"* SEARCH 2 5",
            b"SEARCH CHARSET UTF-8 BODY {5+}\r\nk\xc3\xb6ln": b"* SEARCH 2",
            b"SEARCH CHARSET us-ascii BODY Voil": b"* SEARCH 3",
            b"SEARCH BODY secretword": b"* SEARCH",  # an attachment is not text
            b"SEARCH BODY zebra": b"* SEARCH",  # nor is the preamble
            b"SEARCH TEXT blob.bin": b"* SEARCH 3",  # its MIME header is
            b"SEARCH CHARSET UTF-8 BODY {6+}\r\nna\xc3\xafve": b"* SEARCH 4",
            b"SEARCH BODY uryyb": b"* SEARCH 4",
            b"SEARCH CHARSET UTF-8 BODY {6+}\r\ncr\xc3\xa8me": b"* SEARCH 4",  # NFC
            b"SEARCH SUBJECT \"mystery text\"": b"* SEARCH 4",
            b"SEARCH HEADER X-Broken tail": b"* SEARCH 4",
            b"SEARCH CHARSET UTF-8 SUBJECT {7+}\r\ngr\xc3\xbc\xc3\x9fe": b"* SEARCH 5",
            b"SEARCH CHARSET UTF-8 FROM {5+}\r\nJOS\xc3\x89": b"* SEARCH 5",
            b"SEARCH CHARSET UTF-8 TO {7+}\r\nm\xc3\xbcller": b"* SEARCH 5",
            b"SEARCH FROM jose@x.example": b"* SEARCH 5",
            b"SEARCH CHARSET UTF-8 HEADER X-Raw {7+}\r\nstra\xc3\x9fe": b"* SEARCH 5",
            b"SEARCH HEADER X-Raw \"\"": b"* SEARCH 5",  # has the field
            b"SEARCH HEADER X-Nothing \"\"": b"* SEARCH",
            b"SEARCH OR BODY Voil BODY uryyb": b"* SEARCH 3 4",
            b"SEARCH NOT TEXT a@x.example": b"* SEARCH 2 3 4 5",
        }
        for query, expected in cases.items():
            reply = self.search(query)
            self.assertEqual(reply[0], expected, query)
            self.assertTrue(reply[-1].startswith(b"s OK"), (query, reply))

    def test_unsupported_charset(self) -> None:
        reply = self.search(b"SEARCH CHARSET ISO-8859-1 BODY x")
        self.assertEqual(len(reply), 1)
        self.assertTrue(reply[0].startswith(b"s NO [BADCHARSET ("), reply)
        self.assertEqual(sorted(reply[0].split(b"(")[1].split(b")")[0].split()),
                         [b"US-ASCII", b"UTF-8"])

    def test_size_limit(self) -> None:
        """Only the first max_search_text_size octets of a message are
        searched; the headers are at its start."""
        big = (b"From: e@x.example\r\nSubject: big\r\n\r\n" + b"filler line\r\n" * 100
               + b"the needle at the end\r\n")
        proto, t, _ = selected((big,), limits=Limits(max_search_text_size=len(big) - 30))
        self.assertEqual(send(proto, t, b"a SEARCH BODY needle")[0], b"* SEARCH")
        self.assertEqual(send(proto, t, b"b SEARCH BODY filler SUBJECT big")[0], b"* SEARCH 1")
        proto, t, _ = selected((big,))
        self.assertEqual(send(proto, t, b"c SEARCH BODY needle")[0], b"* SEARCH 1")


class NestingTests(SynchronousTestCase):
    """
    Search keys nest at most L{search.MAX_SEARCH_DEPTH} levels: beyond,
    the command is answered BAD with its tag, never with the
    C{RecursionError} of a thousand C{NOT}s.
    """

    def setUp(self) -> None:
        self.proto, self.t, _ = selected(MESSAGES)

    def search(self, keys: bytes) -> list[bytes]:
        return send(self.proto, self.t, b"s SEARCH " + keys)

    def test_deepest_allowed(self) -> None:
        depth = search.MAX_SEARCH_DEPTH
        self.assertEqual(self.search(b"NOT " * depth + b"ALL"),
                         [b"* SEARCH 1 2 3 4 5", b"s OK SEARCH completed"])
        self.assertEqual(self.search(b"OR 9 " * depth + b"SEEN"),
                         [b"* SEARCH", b"s OK SEARCH completed"])
        # Three levels each: NOT, the parentheses, OR; 16 NOTs cancel out.
        mixed = b"NOT (OR 9 " * (depth // 3) + b"1:2" + b")" * (depth // 3)
        self.assertEqual(self.search(mixed), [b"* SEARCH 1 2", b"s OK SEARCH completed"])

    def test_too_deep_is_bad(self) -> None:
        depth = search.MAX_SEARCH_DEPTH
        too_deep = [b"NOT " * (depth + 1) + b"ALL", b"OR 9 " * (depth + 1) + b"SEEN",
                    b"(" * (depth + 1) + b"ALL" + b")" * (depth + 1),
                    b"NOT (" * (depth // 2 + 1) + b"ALL" + b")" * (depth // 2 + 1)]
        for keys in too_deep:
            self.assertEqual(self.search(keys), [
                b"s BAD search keys nested too deep (more than 50 levels of NOT, OR and "
                b"parentheses)"], keys[:20])

    def test_no_recursion_error_from_a_thousand_levels(self) -> None:
        """Before: C{NO [SERVERBUG]}, after a RecursionError in the parser."""
        for keys in [b"NOT " * 1000 + b"ALL", b"OR ALL " * 1000 + b"ALL",
                     b"OR " * 1000 + b"ALL " * 1001, b"(" * 1000 + b"ALL" + b")" * 1000,
                     b"NOT (" * 500 + b"ALL" + b")" * 500]:
            reply = self.search(keys)
            self.assertEqual(len(reply), 1, reply)
            self.assertTrue(reply[0].startswith(b"s BAD "), reply)

    def test_parentheses_bounded_for_every_command(self) -> None:
        """The tokenizer bounds lists for every command
        (L{parser.MAX_LIST_DEPTH}), whatever walks them afterwards."""
        for command in [b"a FETCH 1 " + b"(" * 2000 + b")" * 2000,
                        b"b STORE 1 +FLAGS " + b"(" * 100 + b")" * 100,
                        b"c ID " + b"(" * 5000]:
            self.assertEqual(send(self.proto, self.t, command),
                             [command[:1] + b" BAD parentheses nested too deep (more than 64 "
                                              b"levels)"])

    def test_many_ranges(self) -> None:
        """A sequence set of thousands of ranges is resolved once per
        command, then bisected for each message."""
        ranges = b",".join(b"%d:%d" % (n, n + 1) for n in range(1, 2000, 3))
        self.assertEqual(self.search(ranges), [b"* SEARCH 1 2 4 5", b"s OK SEARCH completed"])
        self.assertEqual(self.search(b"UID " + ranges),
                         [b"* SEARCH 1 2 4 5", b"s OK SEARCH completed"])
        self.assertEqual(self.search(b"NOT 2:* UID *"), [b"* SEARCH", b"s OK SEARCH completed"])
        self.assertEqual(self.search(b"4:*,1"), [b"* SEARCH 1 4 5", b"s OK SEARCH completed"])


class KeyLimitTests(SynchronousTestCase):
    def test_text_keys_bounded(self) -> None:
        """Each text key scans the decoded text of every message: a hundred
        C{NOT TEXT x} took 0.6 s per 4 MB message, on the reactor."""
        proto, t, _ = selected(MESSAGES)
        most = search.MAX_SEARCH_TEXT_KEYS
        keys = b" ".join(b"NOT TEXT zq%d" % n for n in range(most))
        self.assertEqual(send(proto, t, b"a SEARCH " + keys),
                         [b"* SEARCH 1 2 3 4 5", b"a OK SEARCH completed"])
        self.assertEqual(send(proto, t, b"b SEARCH " + keys + b" FROM x"), [
            b"b NO [LIMIT] too many search keys on message text (at most 50)"])

    def test_limits_from_the_config(self) -> None:
        """C{[limits] max_search_keys} and C{max_search_text_keys}."""
        proto, t, _ = selected(MESSAGES, limits=Limits(max_search_keys=3, max_search_text_keys=1))
        self.assertEqual(send(proto, t, b"a SEARCH TEXT zq FROM x"), [
            b"a NO [LIMIT] too many search keys on message text (at most 1)"])
        self.assertEqual(send(proto, t, b"b SEARCH SEEN SEEN SEEN ALL"), [
            b"b NO [LIMIT] too many search keys (at most 3)"])
        self.assertEqual(send(proto, t, b"c SEARCH TEXT zq SEEN"),
                         [b"* SEARCH", b"c OK SEARCH completed"])

    def test_keys_bounded(self) -> None:
        proto, t, _ = selected(MESSAGES)
        most = search.MAX_SEARCH_KEYS
        self.assertEqual(send(proto, t, b"a SEARCH " + b"SEEN " * (most - 1) + b"ALL"),
                         [b"* SEARCH", b"a OK SEARCH completed"])
        self.assertEqual(send(proto, t, b"b SEARCH " + b"1 " * most + b"2"),
                         [b"b NO [LIMIT] too many search keys (at most 1000)"])


class BatchTests(SynchronousTestCase):
    """A search that reads messages reads them a batch per store call and
    tests each batch in the worker threads (C{extras["run_in_thread"]})."""

    def setUp(self) -> None:
        numbered = tuple(b"Subject: n%d\r\n\r\nbody %s\r\n" % (i, b"even" if i % 2 else b"odd")
                         for i in range(1, 251))
        self.proto, self.t, _ = selected(numbered)
        session = self.proto.session
        self.reads: list[list[int]] = []
        self.single: list[int] = []
        self.runs: list[int] = []
        read_messages, read_message = session.read_messages, session.read_message

        def spy_many(uids: list[int]) -> Any:
            self.reads.append(list(uids))
            return read_messages(uids)

        def spy_one(uid: int) -> Any:
            self.single.append(uid)
            return read_message(uid)

        def runner(f: Any, *args: Any) -> Any:
            self.runs.append(len(args[1]))
            return succeed(f(*args))

        session.read_messages, session.read_message = spy_many, spy_one
        self.proto.context.extras["run_in_thread"] = runner

    def test_batches(self) -> None:
        reply = send(self.proto, self.t, b"a SEARCH BODY even")
        self.assertEqual(reply[0], b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, 251, 2)))
        self.assertEqual([len(r) for r in self.reads], [100, 100, 50])
        self.assertEqual(sum(self.reads, []), list(range(1, 251)))
        self.assertEqual(self.runs, [100, 100, 50])
        self.assertEqual(self.single, [])

    def test_index_keys_read_nothing(self) -> None:
        reply = send(self.proto, self.t, b"b SEARCH 3:5 UNSEEN")
        self.assertEqual(reply[0], b"* SEARCH 3 4 5")
        self.assertEqual((self.reads, self.runs), ([], []))

    def test_octet_bound(self) -> None:
        big = b"Subject: big\r\n\r\n" + b"x" * 600_000 + b"\r\n"
        self.proto, self.t, _ = selected((big, big, b"Subject: small\r\n\r\nx\r\n", big))
        session = self.proto.session
        reads: list[list[int]] = []
        read_messages = session.read_messages
        session.read_messages = lambda uids: reads.append(list(uids)) or read_messages(uids)
        self.assertEqual(send(self.proto, self.t, b"c SEARCH TEXT big")[0], b"* SEARCH 1 2 4")
        self.assertEqual(reads, [[1], [2, 3], [4]])

    def test_moved_or_gone(self) -> None:
        """A message the batch read missed is read alone; one that is gone
        is left out, and the search goes on."""
        session = self.proto.session
        read_messages, read_message = session.read_messages, session.read_message

        def missing(uids: list[int]) -> Any:
            return read_messages(uids).addCallback(
                lambda found: {u: d for u, d in found.items() if u not in (3, 5)})

        alone: list[int] = []

        def gone(uid: int) -> Any:
            alone.append(uid)
            return fail(NoSuchMessage(uid)) if uid == 5 else read_message(uid)

        session.read_messages, session.read_message = missing, gone
        reply = send(self.proto, self.t, b"d SEARCH BODY even 1:6")
        self.assertEqual(reply[0], b"* SEARCH 1 3")
        self.assertEqual(alone, [3, 5])
        self.assertTrue(reply[-1].startswith(b"d OK"), reply)
