"""
Regression tests from a review of the MIME layer of FETCH and SEARCH
(L{gateway.imap.mime}, L{gateway.imap.decode}), each checked against
RFC 3501 / RFC 2045-2046 and, where the RFC leaves room, Dovecot 2.3.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.imap import decode, mime
from tests.imap_grammar import check_body, check_envelope
from tests.test_imap_mime import fetched

EMPTY_PART = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
              b"--b\r\n--b\r\nContent-Type: text/html\r\n\r\nhi\r\n--b--\r\n")
LF_ONLY = (b"From: a@b\nSubject: lf\nContent-Type: multipart/mixed; boundary=b\n\n"
           b"--b\n\none\n--b\nContent-Type: text/html\n\ntwo\n--b--\n")
TOP_RFC822 = (b"Content-Type: message/rfc822\r\n\r\nFrom: x@y\r\n"
              b"Content-Type: multipart/mixed; boundary=q\r\n\r\n"
              b"--q\r\n\r\np1\r\n--q\r\n\r\np2\r\n--q--\r\n")


def section(message: bytes, *numbers: int) -> bytes | None:
    part = mime.find(mime.parse(message), numbers)
    return None if part is None else part.body


class SplitTests(SynchronousTestCase):
    def test_empty_part_between_delimiters(self) -> None:
        """A delimiter line right after another is an empty part: the line
        end after a delimiter is not also taken as the CRLF before the next
        one (Dovecot agrees: two parts, the second text/html)."""
        root = mime.parse(EMPTY_PART)
        self.assertEqual([c.body for c in root.children], [b"", b"hi"])
        self.assertEqual(root.children[1].header, b"Content-Type: text/html\r\n\r\n")
        check_body(fetched(EMPTY_PART), True)

    def test_bare_lf_line_ends(self) -> None:
        """A Maildir written by another program may hold LF line ends: the
        header still ends at the blank line and parts are still split."""
        root = mime.parse(LF_ONLY)
        self.assertEqual(root.header, LF_ONLY.split(b"\n\n")[0] + b"\n\n")
        self.assertEqual([c.body for c in root.children], [b"one", b"two"])
        self.assertEqual([c.subtype for c in root.children], ["plain", "html"])
        self.assertEqual(mime.header_fields(root.header, [b"Subject"], False),
                         b"Subject: lf\r\n\r\n")
        check_body(fetched(LF_ONLY), True)


class MediaTypeTests(SynchronousTestCase):
    def test_comments_and_spaces_in_content_type(self) -> None:
        """RFC 2045 section 5.1: Content-Type is a structured field, so
        comments and white space around the '/' are not part of the type;
        a text part keeps its line count."""
        for value in (b"text/html (comment); charset=utf-8",
                      b"text / html ; charset=utf-8", b"TEXT/HTML;charset=utf-8"):
            message = b"Content-Type: " + value + b"\r\n\r\n<p>\r\n"
            self.assertEqual(mime.bodystructure(mime.parse(message)),
                             b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 5 1 '
                             b'NIL NIL NIL NIL)', value)
        message = b"Content-Type: multipart/mixed (c); boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n"
        self.assertIn(b' "MIXED" ("BOUNDARY" "b")', mime.bodystructure(mime.parse(message)))

    def test_invalid_type_is_text_plain_and_missing_is_default(self) -> None:
        """RFC 2045 section 5.2; RFC 2046 section 5.1.5 (digest)."""
        self.assertEqual(mime.media_type("text"), "text/plain")
        self.assertEqual(mime.media_type("a/b/c"), "text/plain")
        self.assertEqual(mime.media_type(None, "message/rfc822"), "message/rfc822")
        self.assertEqual(mime.media_type("", "message/rfc822"), "text/plain")

    def test_boundary_parameter_parsed_in_linear_time(self) -> None:
        """email's get_boundary is quadratic in the semicolons of a quoted
        parameter (80,000 took 4 s): a million of them, which that would
        take hours over (and trial's timeout would end), parse at once."""
        message = (b'Content-Type: multipart/mixed; boundary=b; x="' + b";" * 1_000_000
                   + b'"\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n')
        root = mime.parse(message)
        self.assertEqual(len(root.children), 1)
        self.assertEqual(root.children[0].body, b"x")


class SectionTests(SynchronousTestCase):
    def test_non_multipart_message_has_only_part_one(self) -> None:
        """RFC 3501 section 6.4.5: a non-multipart message with no
        encapsulated message only has a part 1."""
        message = b"Subject: x\r\n\r\nhello\r\n"
        self.assertEqual(section(message, 1), b"hello\r\n")
        self.assertIsNone(section(message, 1, 1))
        self.assertIsNone(section(message, 2))

    def test_top_level_message_rfc822(self) -> None:
        """Part 1 of a message/rfc822 message is the encapsulated message;
        its parts are that message's parts (as in Dovecot)."""
        inner = TOP_RFC822.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(section(TOP_RFC822, 1), inner)
        self.assertEqual(section(TOP_RFC822, 1, 1), b"p1")
        self.assertEqual(section(TOP_RFC822, 1, 2), b"p2")
        self.assertIsNone(section(TOP_RFC822, 1, 3))
        simple = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nbody\r\n"
        self.assertEqual(section(simple, 1, 1), b"body\r\n")

    def test_part_zero_does_not_exist(self) -> None:
        self.assertIsNone(section(EMPTY_PART, 0))


class WireTests(SynchronousTestCase):
    def test_nul_never_sent_in_envelope_or_structure(self) -> None:
        """RFC 3501 section 9: CHAR8 excludes NUL, so neither a quoted
        string nor a literal may carry one (Dovecot sends U+FFFD)."""
        message = (b"Subject: a\x00b\r\nFrom: \"x\x00y\" <a@b>\r\n"
                   b"Content-Type: text/plain; name=\"n\x00\"\r\n\r\nx\r\n")
        root = mime.parse(message)
        self.assertNotIn(b"\x00", mime.envelope(root.message))
        self.assertNotIn(b"\x00", mime.bodystructure(root))
        self.assertEqual(mime.nstring(b"a\x00b"), b"{5}\r\na\xef\xbf\xbdb")
        check_envelope(fetched(message, b"ENVELOPE"))


class DecodeReviewTests(SynchronousTestCase):
    def test_transfer_encoding_with_comment(self) -> None:
        """BODYSTRUCTURE reads "base64 (comment)" as BASE64; SEARCH must
        decode the body the same way."""
        message = (b"Content-Type: text/plain\r\n"
                   b"Content-Transfer-Encoding: base64 (comment)\r\n\r\naGVsbG8=\r\n")
        self.assertEqual(list(decode.body_texts(mime.parse(message))), ["hello"])
        message = message.replace(b"base64 (comment)", b'"Quoted-Printable"').replace(
            b"aGVsbG8=", b"h=C3=A9")
        self.assertEqual(list(decode.body_texts(mime.parse(message))), ["h\u00e9\r\n"])
