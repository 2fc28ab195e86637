"""
The MIME layer of FETCH, without sockets: RFC 5322 address lists with
groups (L{gateway.imap.address}), ENVELOPE and BODYSTRUCTURE on awkward
messages (L{gateway.imap.mime}), each held to RFC 3501's grammar through
imapclient's parser (L{tests.imap_grammar}).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.imap import mime
from gateway.imap.address import (
    GROUP_END,
    MISSING_DOMAIN,
    MISSING_MAILBOX,
    Address,
    group_start,
    parse_address_list,
)
from tests.imap_grammar import check_body, check_envelope, parse_fetch


def fetched(message: bytes, item: bytes = b"BODYSTRUCTURE") -> object:
    """What imapclient reads from our FETCH response for one message."""
    root = mime.parse(message)
    if item == b"ENVELOPE":
        value = mime.envelope(root.message)
    else:
        value = mime.bodystructure(root, item == b"BODYSTRUCTURE")
    return parse_fetch(b"* 1 FETCH (" + item + b" " + value + b")\r\n")[1][item]


GROUPS = (b"From: Alice <alice@example.edu>\r\n"
          b"To: undisclosed-recipients:;\r\n"
          b"Cc: A group: a@x.example, \"B. Bee\" <b@y.example>;, carol@z.example\r\n"
          b"Subject: groups\r\n\r\nbody\r\n")

NESTED = (b"From: a@x.example\r\nSubject: outer\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: multipart/mixed; boundary=\"o\"\r\n\r\n"
          b"--o\r\nContent-Type: text/plain\r\n\r\none\r\ntwo\r\n"
          b"--o\r\nContent-Type: message/rfc822\r\n"
          b"Content-Disposition: attachment; filename=\"fwd.eml\"\r\n\r\n"
          b"From: Bob <bob@y.example>\r\nTo: team: c@z.example;\r\nSubject: inner\r\n"
          b"Content-Type: multipart/alternative; boundary=i\r\n\r\n"
          b"--i\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
          b"Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9\r\n"
          b"--i\r\nContent-Type: text/html\r\n\r\n<p>Caf&eacute;</p>\r\n--i--\r\n"
          b"--o--\r\n")


class AddressTests(SynchronousTestCase):
    def test_groups(self) -> None:
        """RFC 3501 section 7.4.2: a group is a start address with the
        group name as mailbox and NIL host, and an end address of NILs."""
        self.assertEqual(parse_address_list("undisclosed-recipients:;"),
                         [group_start("undisclosed-recipients"), GROUP_END])
        self.assertEqual(parse_address_list('A group: a@x, "B. Bee" <b@y>;, c@z'), [
            group_start("A group"), Address(None, None, "a", "x"),
            Address("B. Bee", None, "b", "y"), GROUP_END, Address(None, None, "c", "z")])

    def test_unterminated_group_is_closed(self) -> None:
        self.assertEqual(parse_address_list("team: a@x"),
                         [group_start("team"), Address(None, None, "a", "x"), GROUP_END])

    def test_forms(self) -> None:
        cases = {
            '"john doe"@example.com': [Address(None, None, "john doe", "example.com")],
            "a@x (Alice)": [Address("Alice", None, "a", "x")],
            "=?utf-8?q?Caf=C3=A9,_x?= <c@x>": [Address("=?utf-8?q?Caf=C3=A9,_x?=", None, "c", "x")],
            "<@r1,@r2:u@h>": [Address(None, "@r1,@r2", "u", "h")],
            "x@[192.0.2.1]": [Address(None, None, "x", "[192.0.2.1]")],
            "Al. Smith <a@x>": [Address("Al. Smith", None, "a", "x")],
            "a@x,, ,b@y": [Address(None, None, "a", "x"), Address(None, None, "b", "y")],
        }
        for value, expected in cases.items():
            self.assertEqual(parse_address_list(value), expected, value)

    def test_missing_parts_are_filled(self) -> None:
        """A NIL host would read as a group marker: like Dovecot, missing
        parts get placeholder names."""
        self.assertEqual(parse_address_list("alice"),
                         [Address(None, None, "alice", MISSING_DOMAIN)])
        self.assertEqual(parse_address_list("Bob <>"),
                         [Address("Bob", None, MISSING_MAILBOX, MISSING_DOMAIN)])
        self.assertEqual(parse_address_list("@x"), [Address(None, None, MISSING_MAILBOX, "x")])

    def test_malformed_never_raises(self) -> None:
        for value in ['"unterminated', "<a@b", "(open comment", "a@[1.2", ":;", ";;;",
                      "<<>>", "a@b@c", "\\", "a:b:c;d;e", "\udcff@\udcfe"]:
            parse_address_list(value)  # no exception

    @given(st.text(alphabet=st.sampled_from(list('ab @.,;:<>()"\\[]=?\t\udcff')), max_size=60))
    @settings(max_examples=300, deadline=None)
    def test_any_header_gives_a_valid_envelope(self, value: str) -> None:
        message = ("From: " + value + "\r\nTo: " + value + "\r\n\r\n").encode(
            "utf-8", "surrogateescape")
        check_envelope(fetched(message, b"ENVELOPE"))


class EnvelopeTests(SynchronousTestCase):
    def test_group_envelope(self) -> None:
        envelope = fetched(GROUPS, b"ENVELOPE")
        check_envelope(envelope)
        self.assertEqual(mime.envelope(mime.parse(GROUPS).message), (
            b'(NIL "groups" (("Alice" NIL "alice" "example.edu")) '
            b'(("Alice" NIL "alice" "example.edu")) (("Alice" NIL "alice" "example.edu")) '
            b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
            b'((NIL NIL "A group" NIL)(NIL NIL "a" "x.example")'
            b'("B. Bee" NIL "b" "y.example")(NIL NIL NIL NIL)(NIL NIL "carol" "z.example")) '
            b'NIL NIL NIL)'))

    def test_empty_sender_and_reply_to_are_from(self) -> None:
        """RFC 3501 section 7.4.2: absent *or empty* Sender/Reply-To."""
        message = b"From: a@x\r\nSender:\r\nReply-To:  \r\n\r\n"
        self.assertEqual(mime.envelope(mime.parse(message).message),
                         b'(NIL NIL ((NIL NIL "a" "x")) ((NIL NIL "a" "x")) '
                         b'((NIL NIL "a" "x")) NIL NIL NIL NIL NIL)')

    def test_encoded_words_and_8bit_kept_as_sent(self) -> None:
        message = (b"From: =?utf-8?b?w6lsw6hu?= <e@x>\r\n"
                   b"To: \xc3\xa9l\xc3\xa8ne <e@x>\r\nSubject: =?iso-8859-1?q?caf=E9?=\r\n\r\n")
        envelope = mime.envelope(mime.parse(message).message)
        self.assertIn(b'"=?iso-8859-1?q?caf=E9?="', envelope)
        self.assertIn(b'(("=?utf-8?b?w6lsw6hu?=" NIL "e" "x"))', envelope)
        self.assertIn(b"(({7}\r\n\xc3\xa9l\xc3\xa8ne NIL", envelope)
        check_envelope(fetched(message, b"ENVELOPE"))

    def test_quoted_strings_escaped(self) -> None:
        message = b'From: "a \\"quoted\\" name" <"odd\\\\local"@x>\r\n\r\n'
        self.assertIn(b'(("a \\"quoted\\" name" NIL "odd\\\\local" "x"))',
                      mime.envelope(mime.parse(message).message))


class ParameterTests(SynchronousTestCase):
    def test_split(self) -> None:
        self.assertEqual(mime.split_params('text/plain; charset="a;b" (c) ; format=flowed'),
                         ("text/plain", [("charset", "a;b"), ("format", "flowed")]))
        self.assertEqual(mime.split_params('x; a=""; =b; c'), ("x", [("a", "")]))

    def test_rfc2231_as_dovecot(self) -> None:
        """Continuations joined; an extended value stays encoded under
        name* (Dovecot's rfc2231-parser test case)."""
        params = mime.split_params(
            "x; key4*=us-ascii''foo; key*2=ba%; key2*0=a; key3*0*=us-ascii'en'xyz; "
            'key*0="foo"; key2*1*=b%25; key3*1=plop%; key*1=baz')[1]
        self.assertEqual(mime.merge_rfc2231(params), [
            ("key4*", "us-ascii''foo"), ("key", "foobazba%"), ("key2*", "''ab%25"),
            ("key3*", "us-ascii'en'xyzplop%25")])

    def test_duplicates_and_gaps(self) -> None:
        params = mime.split_params("x; a=1; A=2; b*0=x; b*2=z")[1]
        self.assertEqual(mime.merge_rfc2231(params), [("a", "1"), ("b", "x")])


class BodyStructureTests(SynchronousTestCase):
    def structure(self, message: bytes) -> bytes:
        value = mime.bodystructure(mime.parse(message))
        check_body(fetched(message), True)
        check_body(fetched(message, b"BODY"), False)
        return value

    def test_nested_message(self) -> None:
        """message/rfc822: the envelope, structure and line count of the
        encapsulated message; disposition parameters."""
        value = self.structure(NESTED)
        embedded = NESTED.split(b'fwd.eml"\r\n\r\n')[1].rsplit(b"\r\n--o--", 1)[0]
        self.assertEqual((len(embedded), embedded.count(b"\n")), (281, 14))
        self.assertIn(b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 281 '
                      b'(NIL "inner" (("Bob" NIL "bob" "y.example"))', value)
        self.assertIn(b'((NIL NIL "team" NIL)(NIL NIL "c" "z.example")(NIL NIL NIL NIL))', value)
        self.assertIn(b'("TEXT" "PLAIN" ("CHARSET" "iso-8859-1") NIL NIL '
                      b'"QUOTED-PRINTABLE" 6 0 NIL NIL NIL NIL)', value)
        self.assertIn(b'"ALTERNATIVE" ("BOUNDARY" "i") NIL NIL NIL) 14 NIL '
                      b'("ATTACHMENT" ("FILENAME" "fwd.eml")) NIL NIL)', value)
        self.assertIn(b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 8 1 NIL', value)
        inner = fetched(NESTED)[0][1]
        self.assertEqual(inner[9], 14)
        check_envelope(inner[7])

    def test_multipart_without_parts_or_boundary(self) -> None:
        """RFC 3501 needs one part: an empty text/plain one (Dovecot)."""
        for content_type in (b"multipart/mixed", b'multipart/mixed; boundary="zz"'):
            message = b"Content-Type: " + content_type + b"\r\n\r\nno parts here\r\n"
            value = self.structure(message)
            self.assertTrue(value.startswith(
                b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)'
                b' "MIXED"'), value)
            self.assertEqual(mime.bodystructure(mime.parse(message), False),
                             b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0) '
                             b'"MIXED")')

    def test_missing_and_broken_content_type(self) -> None:
        for header in (b"", b"Content-Type: \r\n", b"Content-Type: text\r\n",
                       b"Content-Type: ;;;\r\n", b"Content-Type: text/plain; charset\r\n"):
            value = self.structure(header + b"MIME-Version: 1.0\r\n\r\nline\r\n")
            self.assertTrue(value.startswith(b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII")'), value)

    def test_digest_parts_default_to_message(self) -> None:
        message = (b'Content-Type: multipart/digest; boundary="d"\r\n\r\n'
                   b"--d\r\n\r\nSubject: one\r\n\r\nbody\r\n--d--\r\n")
        self.assertIn(b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 20 (NIL "one"',
                      self.structure(message))

    def test_rfc2231_disposition_and_language(self) -> None:
        message = (b"Content-Type: application/pdf; name*0*=utf-8''r%C3%A9sum;\r\n"
                   b" name*1=\"e 1.pdf\"\r\n"
                   b"Content-Disposition: attachment;\r\n filename*=utf-8'fr'r%C3%A9sum%C3%A9.pdf\r\n"
                   b"Content-Language: en (English), fr-CA\r\n"
                   b"Content-Location: http://example.org/a.pdf\r\n"
                   b"Content-Transfer-Encoding: BASE64 (comment)\r\n\r\nAAAA\r\n")
        self.assertEqual(self.structure(message), (
            b'("APPLICATION" "PDF" ("NAME*" "utf-8\'\'r%C3%A9sume%201.pdf") NIL NIL "BASE64" 6 '
            b'NIL ("ATTACHMENT" ("FILENAME*" "utf-8\'fr\'r%C3%A9sum%C3%A9.pdf")) ("en" "fr-CA") '
            b'"http://example.org/a.pdf")'))

    def test_text_line_counts(self) -> None:
        self.assertIn(b'"7BIT" 0 0', self.structure(b"Subject: x\r\n\r\n"))
        self.assertIn(b'"7BIT" 3 0', self.structure(b"Subject: x\r\n\r\nabc"))
        self.assertIn(b'"7BIT" 10 2', self.structure(b"Subject: x\r\n\r\nabc\r\ndef\r\n"))
        self.assertIn(b'"7BIT" 0 0', self.structure(b"Subject: x"))

    def test_nesting_bomb(self) -> None:
        """Parts nested deeper than MAX_DEPTH are shown as opaque data."""
        message = b"".join(b"Content-Type: message/rfc822\r\n\r\n"
                           for _ in range(mime.MAX_DEPTH + 5)) + b"x\r\n"
        value = self.structure(message)
        self.assertIn(b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "7BIT"', value)
        deep = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n' * 40) + b"x\r\n"
        self.structure(deep)

    @given(st.lists(st.sampled_from([
        b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: message/rfc822\r\n",
        b"Content-Type: text/plain; charset*0*=utf-8''%C3; charset*1=x\r\n",
        b"Content-Disposition: inline; filename=\"a\r\n", b"Content-Language: ,\r\n",
        b"Content-Transfer-Encoding:\r\n", b"To: g:;\r\n", b"From: <\r\n", b"\r\n", b"--b\r\n",
        b"--b--\r\n", b"text\r\n", b"\xff\xfe\r\n", b"Content-Type: multipart/digest; boundary=b\r\n",
    ]), max_size=25))
    @settings(max_examples=300, deadline=None)
    def test_any_message_gives_a_valid_structure(self, pieces: list[bytes]) -> None:
        message = b"".join(pieces)
        check_body(fetched(message), True)
        check_body(fetched(message, b"BODY"), False)
