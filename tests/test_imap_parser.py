"""
The IMAP parsing helpers: command tokens, sequence sets, FETCH items,
SEARCH keys; each with a property test that random input raises nothing
but the parser's own error.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.imap.fetch import Item, parse_items
from gateway.imap.parser import (
    Atom,
    ParseError,
    String,
    format_set,
    parse_sequence_set,
    resolve,
    tokenize,
)
from gateway.imap.replies import No
from gateway.imap.search import parse_query

_WIRE = st.binary(max_size=60) | st.text(
    alphabet='()[]<>."\\ *%:,0123456789ABDEFHILNOPRSTUXY{}-', max_size=60).map(str.encode)


class TokenizeTests(SynchronousTestCase):
    def test_nested_lists_and_strings(self) -> None:
        tokens = tokenize([b'a (b "c d" (e)) ', bytearray(b"lit\r\n"), b" f"])
        self.assertEqual(tokens, [b"a", [b"b", b"c d", [b"e"]], b"lit\r\n", b"f"])
        self.assertIsInstance(tokens[0], Atom)
        self.assertIsInstance(tokens[1][1], String)
        self.assertIsInstance(tokens[2], String)

    def test_nil_and_quoted_nil_differ(self) -> None:
        atom, string = tokenize([b'NIL "NIL"'])
        self.assertIsInstance(atom, Atom)
        self.assertIsInstance(string, String)

    def test_section_is_one_atom(self) -> None:
        self.assertEqual(tokenize([b"(BODY.PEEK[HEADER.FIELDS (A B)]<0.5> UID)"]),
                         [[b"BODY.PEEK[HEADER.FIELDS (A B)]<0.5>", b"UID"]])

    def test_errors(self) -> None:
        for bad in [b"(a", b"a)", b'"a', b'"a\\b"', b"a[b", b"{"]:
            self.assertRaises(ParseError, tokenize, [bad])

    @given(_WIRE)
    def test_random_input(self, data: bytes) -> None:
        try:
            tokenize([data])
        except ParseError:
            pass


class SequenceSetTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parse_sequence_set(Atom(b"1:3,5,*:7,*")),
                         [(1, 3), (5, 5), (None, 7), (None, None)])

    def test_resolve(self) -> None:
        self.assertEqual(resolve([(None, 7), (5, 2), (None, None)], 10),
                         [(7, 10), (2, 5), (10, 10)])

    def test_errors(self) -> None:
        for bad in [b"", b"0", b"1:", b"a", b"1,,2", b"1:2:3", b"-1", b"99999999999",
                    b"4294967296"]:
            self.assertRaises(ParseError, parse_sequence_set, Atom(bad))
        self.assertRaises(ParseError, parse_sequence_set, String(b"1"))

    def test_format(self) -> None:
        self.assertEqual(format_set([1, 2, 3, 7, 9, 10]), "1:3,7,9:10")
        self.assertEqual(format_set([5]), "5")
        self.assertEqual(format_set([]), "")

    @given(st.binary(max_size=30) | st.text(alphabet="0123456789:,*", max_size=30)
           .map(str.encode))
    def test_random_input(self, data: bytes) -> None:
        try:
            ranges = parse_sequence_set(Atom(data))
        except ParseError:
            return
        for lo, hi in resolve(ranges, 5):
            self.assertLessEqual(lo, hi)
            self.assertGreaterEqual(lo, 1)


class FetchItemTests(SynchronousTestCase):
    def test_macros(self) -> None:
        self.assertEqual([i.name for i in parse_items(Atom(b"fast"))],
                         [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"])

    def test_sections(self) -> None:
        items = parse_items([Atom(b"BODY.PEEK[1.2.MIME]"),
                             Atom(b"body[header.fields.not (x-a Y)]<10.20>"),
                             Atom(b"BODY[]")])
        self.assertEqual(items[0], Item(b"BODY", True, True, (1, 2), b"MIME"))
        self.assertEqual(items[1].fields, (b"X-A", b"Y"))
        self.assertEqual(items[1].label(), b"BODY[HEADER.FIELDS.NOT (X-A Y)]<10>")
        self.assertEqual(items[2].label(), b"BODY[]")

    def test_errors(self) -> None:
        for bad in [b"BODY[FOO]", b"BODY[MIME]", b"BODY[HEADER.FIELDS]", b"BODY[]<1.0>",
                    b"NOPE", b"BODY[0]", b"BINARY[1]"]:
            self.assertRaises(ParseError, parse_items, Atom(bad))
        self.assertRaises(ParseError, parse_items, [])
        self.assertRaises(ParseError, parse_items, String(b"FLAGS"))

    @given(_WIRE)
    def test_random_input(self, data: bytes) -> None:
        try:
            parse_items(tokenize([data]))
        except ParseError:
            pass


class SearchKeyTests(SynchronousTestCase):
    def test_charset(self) -> None:
        parse_query([Atom(b"CHARSET"), Atom(b"utf-8"), Atom(b"ALL")])
        self.assertRaises(No, parse_query, [Atom(b"CHARSET"), Atom(b"KOI8-R"), Atom(b"ALL")])

    def test_body_keys_need_messages(self) -> None:
        self.assertFalse(parse_query(tokenize([b"OR SEEN (UID 1:* LARGER 5)"])).needs_body)
        self.assertTrue(parse_query(tokenize([b"NOT SUBJECT x"])).needs_body)

    def test_errors(self) -> None:
        for bad in [b"", b"OR SEEN", b"LARGER x", b"SINCE 32-Jan-2000", b"SINCE 1-Foo-2000",
                    b"()", b"BOGUS", b"HEADER x", b"UID"]:
            self.assertRaises(ParseError, parse_query, tokenize([bad]))

    @given(_WIRE)
    def test_random_input(self, data: bytes) -> None:
        try:
            parse_query(tokenize([data]))
        except (ParseError, No):
            pass
