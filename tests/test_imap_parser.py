"""
The IMAP parsing helpers: command tokens, sequence sets, FETCH items,
SEARCH keys; each with a property test that random input raises nothing
but the parser's own error; and random whole commands on a connection.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Limits
from gateway.imap.fetch import Item, parse_items
from gateway.imap.parser import (
    MAX_LIST_DEPTH,
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
from tests.imap_grammar import check_wire, responses
from tests.imap_support import MULTIPART, SIMPLE, selected

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

    def test_nesting_bounded(self) -> None:
        depth = MAX_LIST_DEPTH
        tokens = tokenize([b"(" * depth + b"x" + b")" * depth])
        for _ in range(depth):
            tokens = tokens[0]
        self.assertEqual(tokens, [b"x"])
        for pieces in ([b"(" * (depth + 1) + b")" * (depth + 1)],
                       [b"(" * depth + b"(", bytearray(b"literal"), b")" * (depth + 1)],
                       [b"(" * 100_000]):
            self.assertRaises(ParseError, tokenize, pieces)

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
                         [(2, 5), (7, 10)])
        self.assertEqual(resolve([(9, 9), (1, 3), (4, 4), (2, 2)], 10), [(1, 4), (9, 9)])

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
                    b"NOPE", b"BODY[0]", b"BINARY[1]",
                    # Field names are echoed in the response as atoms.
                    b"BODY[HEADER.FIELDS (A(B)]", b"BODY[HEADER.FIELDS (A\x01B)]",
                    b"BODY[HEADER.FIELDS (A\\B)]", b"BODY[HEADER.FIELDS (A:B)]",
                    b"BODY[HEADER.FIELDS.NOT (A%)]"]:
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


# -- whole commands on a selected connection -----------------------------------

def _one(*choices: str) -> st.SearchStrategy[str]:
    return st.sampled_from(choices)


_ODD = st.text(alphabet='()[]<>."\\ *%:,0123456789ABDEFHILNOPRSTUXY{}-&\x01\x7f\xe9',
               min_size=1, max_size=10)
_SET = _one("1", "2", "3", "*", "1:*", "2:1", "1,2", "3:*", "0", "4294967295", "1:2:3") | _ODD
_FLAG = _one("\\Seen", "\\seen", "\\Deleted", "\\Recent", "\\Foo", "\\*", "$Work", "a]b",
             "x%y", "*", "q[r s]", "a}b", '"x"', "NIL") | _ODD
_FLAGS = st.lists(_FLAG, max_size=3).map(lambda f: "(" + " ".join(f) + ")") | _FLAG
_ITEM = _one("FLAGS", "UID", "ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822.SIZE", "RFC822",
             "RFC822.HEADER", "INTERNALDATE", "BODY[]", "BODY.PEEK[1]", "BODY[2.1]",
             "BODY[1.MIME]", "BODY[TEXT]<0.5>", "BODY.PEEK[HEADER.FIELDS (a b)]",
             "BODY[HEADER.FIELDS (a(b)]", "BODY[HEADER.FIELDS.NOT (\x01)]", "BODY[9.9.9]",
             "BODY[]<4294967295.1>", "BINARY[1]", "FAST", "ALL") | _ODD
_ITEMS = st.lists(_ITEM, min_size=1, max_size=3).map(lambda i: "(" + " ".join(i) + ")") | _ITEM
_MAILBOX = _one("INBOX", "Trash", '""', '"&AOk-t&AOk-"', "&Jjo-", "a/b", '"a b"', "%", "*",
                "&AC8-", "\xe9") | _ODD
_KEY = st.recursive(
    _one("ALL", "SEEN", "UNSEEN", "NEW", "1:*", "UID 1:*", "SUBJECT x", "BODY caf\xe9",
         "TEXT hello", "HEADER to bob", "SINCE 1-Jan-2000", "SENTON 32-Jan-2000",
         "LARGER 10", "KEYWORD a]b", "CHARSET UTF-8", "OR", "NOT", "(", ")") | _ODD,
    lambda inner: st.one_of(
        inner.map(lambda k: "NOT " + k),
        st.tuples(inner, inner).map(lambda k: "OR " + k[0] + " " + k[1]),
        st.lists(inner, min_size=1, max_size=3).map(lambda k: "(" + " ".join(k) + ")")),
    max_leaves=6)
_COMMAND = st.one_of(
    st.tuples(_one("FETCH", "UID FETCH"), _SET, _ITEMS),
    st.tuples(_one("STORE", "UID STORE"), _SET,
              _one("FLAGS", "+FLAGS", "-FLAGS.SILENT", "FLAGS.SILENT", "X"), _FLAGS),
    st.tuples(_one("COPY", "UID COPY", "MOVE", "UID MOVE"), _SET, _MAILBOX),
    st.tuples(_one("SEARCH", "UID SEARCH"), st.lists(_KEY, min_size=1, max_size=3).map(" ".join)),
    st.tuples(_one("UID EXPUNGE", "EXPUNGE", "CLOSE", "UNSELECT", "CHECK", "NOOP"),
              _SET | st.just("")),
    st.tuples(_one("SELECT", "EXAMINE", "CREATE", "DELETE", "SUBSCRIBE", "STATUS", "RENAME",
                   "LIST", "LSUB"), _MAILBOX, _MAILBOX | _one("(MESSAGES UNSEEN)", "()", "")),
    st.tuples(_one("ID", "ENABLE", "NAMESPACE", "CAPABILITY", "UID", "APPEND"),
              _ODD | _FLAGS | st.just("")),
).map(lambda words: " ".join(words).encode("utf-8")) | st.binary(max_size=40)


class ConversationFuzzTests(SynchronousTestCase):
    """
    Random commands, most of them nearly right, on a selected connection
    over a mailbox with messages or an empty one: each is answered with its
    tag (no hang), never with C{[SERVERBUG]} or a logged traceback, and
    every response holds to RFC 3501's grammar (L{tests.imap_grammar}).
    Found so far: keywords that are no atoms (C{q[r s]}, C{a]b}, C{NIL})
    stored and echoed in FLAGS, header field names echoed in FETCH labels
    (C{BODY[HEADER.FIELDS (a(b)]}), and folder names in UTF-8 in NO texts.
    """

    @given(st.lists(_COMMAND, min_size=1, max_size=4), st.booleans())
    @settings(max_examples=200, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def test_random_commands(self, commands: list[bytes], empty: bool) -> None:
        proto, t, _ = selected(() if empty else (SIMPLE, MULTIPART),
                               limits=Limits(max_bad_commands=1000))
        failures: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None:
                failures.append(event["log_failure"].getTraceback())

        globalLogPublisher.addObserver(observe)
        try:
            for command in commands:
                if re.search(rb"[\r\n]|\{\d+\+?\}\Z", command):
                    continue  # not one line
                proto.dataReceived(b"T " + command + b"\r\n")
                wire = t.value()
                t.clear()
                self.assertEqual(failures, [], command)
                self.assertNotIn(b"SERVERBUG", wire, command)
                check_wire(wire)
                if proto.state == "LOGOUT" or command.upper().startswith(b"IDLE"):
                    return
                last = responses(wire)[-1] if wire else b""
                self.assertRegex(last, rb"\AT (OK|NO|BAD) ", command)
        finally:
            globalLogPublisher.removeObserver(observe)
