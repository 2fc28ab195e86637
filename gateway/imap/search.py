# -*- test-case-name: tests.test_imap_search,tests.test_imap_selected,tests.test_imap_parser -*-
"""
SEARCH and UID SEARCH (RFC 3501 section 6.4.4): the search keys parsed
into a predicate, then run over the session's view.

Keys that the index answers (flags, sizes, dates, sets) never open a
message.  For the others the messages are read in batches (one worker
call per L{BATCH_MESSAGES} messages or L{BATCH_OCTETS} octets), and each
batch is parsed, decoded and tested in a worker thread (the listener's
C{extras["run_in_thread"]}; inline where there is none, as in unit
tests): decoding takes about 0.1 s per 4 MiB, and one user's search of a
large mailbox must not stop every other connection of the gateway.  The
command waits for one batch before reading the next, so that it holds at
most a batch in memory.  Text keys are a
case-insensitive substring match (section 6.4.4) on decoded text
(L{gateway.imap.decode}): header fields with their encoded words decoded,
and the bodies of text parts with their transfer encoding and charset
undone.  The search string is UTF-8 (US-ASCII is a subset).

The work per message is bounded: only the first C{max_search_text_size}
octets of a message (a setting, 4 MiB by default) are decoded and searched,
so a match in the tail of a larger message is not found.  We chose this
over a byte-wise match of the raw message: the raw octets of a base64 or
quoted-printable body rarely contain what the user typed, so a byte-wise
match would silently miss most text anyway, while the beginning of a large
message (its headers and its text part, usually first) is what people
search.

The keys nest (C{NOT}, C{OR}, parentheses) at most L{MAX_SEARCH_DEPTH}
levels deep, a BAD beyond: both the parser and the predicate it builds
recurse once per level, and a thousand C{NOT}s would otherwise end in a
C{RecursionError}.  A command holds at most L{MAX_SEARCH_KEYS} keys, of
which L{MAX_SEARCH_TEXT_KEYS} may read message text (C{NO [LIMIT]}
beyond): a hundred C{NOT TEXT x} keys took 0.6 s per 4 MB message.  A
sequence set is resolved once per command and looked up by bisection, so
that a set of thousands of ranges costs little per message.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_tz
from typing import Any

from gateway.imap import decode, mime
from gateway.imap.parser import (
    Atom,
    ParseError,
    Range,
    Token,
    contains,
    parse_sequence_set,
    resolve,
)
from gateway.imap.replies import No
from gateway.store.model import MessageInfo, NoSuchMessage

_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")
_MONTHS = [b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP",
           b"OCT", b"NOV", b"DEC"]
_FLAG_KEYS = {
    b"ANSWERED": ("\\Answered", True), b"DELETED": ("\\Deleted", True),
    b"DRAFT": ("\\Draft", True), b"FLAGGED": ("\\Flagged", True), b"SEEN": ("\\Seen", True),
    b"UNANSWERED": ("\\Answered", False), b"UNDELETED": ("\\Deleted", False),
    b"UNDRAFT": ("\\Draft", False), b"UNFLAGGED": ("\\Flagged", False),
    b"UNSEEN": ("\\Seen", False),
}
_ADDRESS_KEYS = {b"FROM", b"TO", b"CC", b"BCC", b"SUBJECT"}
_CHARSETS = {b"UTF-8", b"US-ASCII"}
#: How deep search keys may nest, each C{NOT}, C{OR} and parenthesized
#: list one level.  Mail readers nest a few levels (an OR per field
#: searched); the parser and the predicate recurse about twice per level,
#: far below Python's limit of 1,000 frames.
MAX_SEARCH_DEPTH = 50
#: How many search keys one command may hold, and how many of them may
#: look at message text (FROM, SUBJECT, HEADER, BODY, TEXT...): each text
#: key scans up to C{max_search_text_size} of decoded text per message,
#: and with literals for their strings a command may hold any number of
#: them.  A mail reader's search has a few; beyond, C{NO [LIMIT]} (RFC 5530).
MAX_SEARCH_KEYS = 1000
MAX_SEARCH_TEXT_KEYS = 50
_TEXT_KEYS = _ADDRESS_KEYS | {b"HEADER", b"BODY", b"TEXT"}
#: A search that reads messages reads and tests them in batches of at
#: most this many messages, or this many octets (the index's sizes; a
#: batch holds at least one message).
BATCH_MESSAGES = 100
BATCH_OCTETS = 1 << 20


@dataclass
class Candidate:
    """One message as a predicate sees it; C{part} is set only when a key
    needs the message."""

    seq: int
    info: MessageInfo
    recent: bool
    largest_seq: int
    largest_uid: int
    part: mime.Part | None = None
    _bodies: list[str] | None = None
    _headers: str | None = None

    def bodies(self) -> list[str]:
        """The folded, decoded text of each text part (computed once)."""
        if self._bodies is None:
            assert self.part is not None
            self._bodies = [decode.fold(t) for t in decode.body_texts(self.part)]
        return self._bodies

    def headers(self) -> str:
        """The folded, decoded header fields of the message and its parts."""
        if self._headers is None:
            assert self.part is not None
            self._headers = decode.fold("\n".join(decode.all_headers(self.part)))
        return self._headers


Predicate = Callable[[Candidate], bool]


class Query:
    """Parsed search keys: C{test} a predicate, C{needs_body} whether it
    reads messages."""

    def __init__(self, test: Predicate, needs_body: bool) -> None:
        self.test = test
        self.needs_body = needs_body


def parse_query(args: list[Token], max_keys: int = MAX_SEARCH_KEYS,
                max_text_keys: int = MAX_SEARCH_TEXT_KEYS) -> Query:
    """
    @param max_keys: keys in the whole query, at most (else C{NO [LIMIT]}).
    @param max_text_keys: of them, keys that read message text.
    @raise ParseError: for malformed keys.
    @raise No: C{[BADCHARSET]} for a charset other than UTF-8 or US-ASCII.
    """
    args = list(args)
    if len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == b"CHARSET":
        if isinstance(args[1], list) or bytes(args[1]).upper() not in _CHARSETS:
            raise No("[BADCHARSET (US-ASCII UTF-8)] unsupported charset")
        args = args[2:]
    if not args:
        raise ParseError("SEARCH needs search keys")
    parser = _Parser(args, limits=(max_keys, max_text_keys))
    tests = []
    while not parser.done():
        tests.append(parser.key())
    return Query(_all(tests), parser.needs_body)


def _all(tests: list[Predicate]) -> Predicate:
    return lambda c: all(t(c) for t in tests)


class _Parser:
    def __init__(self, tokens: list[Token], depth: int = 0,
                 counts: list[int] | None = None,
                 limits: tuple[int, int] = (MAX_SEARCH_KEYS, MAX_SEARCH_TEXT_KEYS)) -> None:
        self.tokens = tokens
        self.i = 0
        self.needs_body = False
        self.depth = depth
        #: keys and text keys so far, shared with the parsers of inner lists
        self.counts = [0, 0] if counts is None else counts
        self.limits = limits  # at most so many keys, and text keys

    def done(self) -> bool:
        return self.i >= len(self.tokens)

    def next(self) -> Token:
        if self.done():
            raise ParseError("missing search argument")
        token = self.tokens[self.i]
        self.i += 1
        return token

    def string(self) -> str:
        token = self.next()
        if isinstance(token, list):
            raise ParseError("string expected")
        return decode.fold(bytes(token).decode("utf-8", "replace"))

    def number(self) -> int:
        token = self.next()
        if not isinstance(token, Atom) or not token.isdigit() or len(token) > 10:
            raise ParseError("number expected")
        return int(token)

    def date(self) -> tuple[int, int, int]:
        token = self.next()
        match = _DATE.match(bytes(token)) if not isinstance(token, list) else None
        if match is None or match.group(2).upper() not in _MONTHS:
            raise ParseError("invalid date")
        day, month, year = (int(match.group(1)), _MONTHS.index(match.group(2).upper()) + 1,
                            int(match.group(3)))
        try:
            datetime.date(year, month, day)
        except ValueError:
            raise ParseError("invalid date") from None
        return (year, month, day)

    def key(self) -> Predicate:
        token = self.next()
        if isinstance(token, list):
            if not token:
                raise ParseError("empty parenthesized search keys")
            with self._nested():
                inner = _Parser(token, self.depth, self.counts, self.limits)
                tests = []
                while not inner.done():
                    tests.append(inner.key())
            self.needs_body |= inner.needs_body
            return _all(tests)
        if not isinstance(token, Atom):
            raise ParseError("search key expected")
        word = token.upper()
        self._count(word in _TEXT_KEYS)
        if word == b"ALL":
            return lambda c: True
        if word in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[word]
            return lambda c: (flag in c.info.flags) == present
        if word == b"RECENT":
            return lambda c: c.recent
        if word == b"OLD":
            return lambda c: not c.recent
        if word == b"NEW":
            return lambda c: c.recent and "\\Seen" not in c.info.flags
        if word in (b"KEYWORD", b"UNKEYWORD"):
            keyword = bytes(self._atom()).decode("ascii", "replace")
            return lambda c: (keyword in c.info.flags) == (word == b"KEYWORD")
        if word in (b"LARGER", b"SMALLER"):
            n = self.number()
            return (lambda c: c.info.size > n) if word == b"LARGER" else (
                lambda c: c.info.size < n)
        if word in (b"BEFORE", b"ON", b"SINCE"):
            day = self.date()
            return _compare(word, day, lambda c: time.gmtime(c.info.internal_date)[:3])
        if word in (b"SENTBEFORE", b"SENTON", b"SENTSINCE"):
            day = self.date()
            self.needs_body = True
            return _compare(word[4:], day, _sent_date)
        if word in _ADDRESS_KEYS:
            text = self.string()
            self.needs_body = True
            name = word.decode().lower()
            return lambda c: _header_match(c, name, text)
        if word == b"HEADER":
            name = self.string()
            text = self.string()
            self.needs_body = True
            return lambda c: _header_match(c, name, text)
        if word == b"BODY":
            text = self.string()
            self.needs_body = True
            return lambda c: any(text in body for body in c.bodies())
        if word == b"TEXT":
            text = self.string()
            self.needs_body = True
            return lambda c: text in c.headers() or any(text in body for body in c.bodies())
        if word == b"NOT":
            with self._nested():
                negated = self.key()
            return lambda c: not negated(c)
        if word == b"OR":
            with self._nested():
                left, right = self.key(), self.key()
            return lambda c: left(c) or right(c)
        if word == b"UID":
            return _in_set(parse_sequence_set(self._atom()), lambda c: c.largest_uid,
                           lambda c: c.info.uid)
        return _in_set(parse_sequence_set(token), lambda c: c.largest_seq, lambda c: c.seq)

    def _count(self, text: bool) -> None:
        self.counts[0] += 1
        self.counts[1] += text
        keys, text_keys = self.limits
        if self.counts[0] > keys:
            raise No(f"[LIMIT] too many search keys (at most {keys})")
        if self.counts[1] > text_keys:
            raise No(f"[LIMIT] too many search keys on message text (at most {text_keys})")

    @contextmanager
    def _nested(self) -> Iterator[None]:
        """One level deeper for the keys parsed inside (L{MAX_SEARCH_DEPTH})."""
        if self.depth >= MAX_SEARCH_DEPTH:
            raise ParseError(f"search keys nested too deep (more than {MAX_SEARCH_DEPTH} "
                             "levels of NOT, OR and parentheses)")
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def _atom(self) -> Atom:
        token = self.next()
        if not isinstance(token, Atom):
            raise ParseError("atom expected")
        return token


def _in_set(ranges: list[Range], largest: Callable[[Candidate], int],
            value: Callable[[Candidate], int]) -> Predicate:
    """A sequence-set key: C{*} is resolved against the largest number of
    the view, the same for every message of one command, so once."""
    resolved: dict[int, list[tuple[int, int]]] = {}

    def test(c: Candidate) -> bool:
        top = largest(c)
        spans = resolved.get(top)
        if spans is None:
            spans = resolved[top] = resolve(ranges, top)
        return contains(spans, value(c))
    return test


def _compare(op: bytes, day: tuple[int, int, int],
             get: Callable[[Candidate], Any]) -> Predicate:
    def test(c: Candidate) -> bool:
        value = get(c)
        if value is None:
            return False
        if op == b"BEFORE":
            return bool(value < day)
        if op == b"ON":
            return bool(value == day)
        return bool(value >= day)
    return test


def _sent_date(c: Candidate) -> tuple[int, int, int] | None:
    assert c.part is not None
    value = c.part.message.get("date")
    parsed = parsedate_tz(str(value)) if value is not None else None
    return None if parsed is None else (parsed[0], parsed[1], parsed[2])


def _header_match(c: Candidate, name: str, text: str) -> bool:
    """Does a C{name} field of the message contain C{text}?  With an
    empty C{text}: does the message have the field (section 6.4.4)?"""
    assert c.part is not None
    values = decode.header_fields(c.part, name)
    return values is not None and any(text in decode.fold(v) for v in values)


class SearchCommand:
    """Mixed into L{gateway.imap.protocol.IMAPServer}."""

    session: Any
    untagged: Any
    context: Any
    transport: Any

    async def cmd_SEARCH(self, tag: bytes, args: list[Token], uid: bool = False) -> str | None:
        """@return: the tagged OK's text; C{None} (no reply) if the
        connection closed while messages were read."""
        limits = self.context.limits
        query = parse_query(args, limits.max_search_keys, limits.max_search_text_keys)
        session = self.session
        messages = session.messages()
        largest_uid = messages[-1].uid if messages else 0
        candidates = [Candidate(seq, info, info.uid in session.recent, len(messages), largest_uid)
                      for seq, info in enumerate(messages, 1)]
        if query.needs_body:
            found_texts = await self._search_texts(query.test, candidates,
                                                   limits.max_search_text_size)
            if found_texts is None:
                return None
            matched = found_texts
        else:
            matched = [c for c in candidates if query.test(c)]
        found = [c.info.uid if uid else c.seq for c in matched]
        self.untagged(" ".join(["SEARCH", *map(str, found)]))
        return "UID SEARCH completed" if uid else "SEARCH completed"

    async def _search_texts(self, test: Predicate, candidates: list[Candidate],
                            limit: int) -> list[Candidate] | None:
        """The candidates that pass C{test}, read and tested a batch at a
        time (see the module docstring); a message gone meanwhile is left
        out.  C{None} if the connection closes meanwhile: the rest of a
        large folder is not read for a client that is gone (and whose
        session, closed, would refuse the reads)."""
        session = self.session
        run = self.context.extras.get("run_in_thread")
        matched: list[Candidate] = []
        for batch in _batches(candidates):
            if self._closing():
                return None
            texts = await session.read_messages([c.info.uid for c in batch])
            if self._closing():
                return None
            for c in batch:
                if c.info.uid not in texts:  # moved meanwhile: the locked path
                    try:
                        texts[c.info.uid] = await session.read_message(c.info.uid)
                    except NoSuchMessage:
                        pass
            present = [c for c in batch if c.info.uid in texts]
            if run is None:
                matched += _test_texts(test, present, texts, limit)
            else:
                matched += await run(_test_texts, test, present, texts, limit)
        return matched

    def _closing(self) -> bool:
        return self.transport is None or bool(self.transport.disconnecting)


def _batches(candidates: list[Candidate]) -> Iterator[list[Candidate]]:
    batch: list[Candidate] = []
    octets = 0
    for c in candidates:
        if batch and (len(batch) >= BATCH_MESSAGES or octets + c.info.size > BATCH_OCTETS):
            yield batch
            batch, octets = [], 0
        batch.append(c)
        octets += c.info.size
    if batch:
        yield batch


def _test_texts(test: Predicate, batch: list[Candidate], texts: dict[int, bytes],
                limit: int) -> list[Candidate]:
    """(any thread) Parse the first C{limit} octets of each message of
    C{batch} and keep those that pass C{test}; each parse is dropped
    after its test."""
    passed = []
    for c in batch:
        c.part = mime.parse(texts[c.info.uid][:limit])
        if test(c):
            passed.append(c)
        c.part, c._bodies, c._headers = None, None, None
    return passed
