# -*- test-case-name: tests.test_imap_fetch,tests.test_imap_selected -*-
"""
FETCH (RFC 3501 sections 6.4.5 and 7.4.2): the data items a client asks
for, parsed into L{Item}s, and the response for one message.

Partial fetches answer with the origin only (C{BODY[]<0>}) and exactly
C{count} octets, the fault of Twisted's server (twisted/twisted#5613).
Items that the index answers (FLAGS, UID, INTERNALDATE, RFC822.SIZE) never
open the message file: L{needs_body} tells the caller.

A FETCH of many messages writes them one at a time through L{Backpressure},
a push producer registered with the transport: when the transport's buffer
is full (a client that asks for C{1:* BODY[]} and does not read), no
further message is read until it drains, so the server holds at most one
message (and the transport's buffer) per connection, not the folder.

Nor all of a large message, when the client asks only for its octets as
they are (C{RFC822}, C{BODY[]}, C{BODY.PEEK[]}, with or without a
partial range: what mbsync, offlineimap and Thunderbird's chunked
download ask for; L{streamable}): a message over L{STREAM_SIZE} is then
copied from its file a piece at a time (L{render_pieces} yields a
L{Span} where the octets go), so that a 30 MB attachment costs a piece
of memory, and a partial fetch of it reads only the range asked for.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from gateway.imap import mime
from gateway.imap.parser import ATOM_CHARS, Atom, ParseError, Token
from gateway.store.model import MessageInfo

_MACROS = {
    b"ALL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"],
    b"FAST": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"],
    b"FULL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"],
}
_SIMPLE = {b"FLAGS", b"UID", b"INTERNALDATE", b"RFC822.SIZE", b"RFC822", b"RFC822.HEADER",
           b"RFC822.TEXT", b"ENVELOPE", b"BODY", b"BODYSTRUCTURE"}
_INDEX_ONLY = {b"FLAGS", b"UID", b"INTERNALDATE", b"RFC822.SIZE"}
_SECTION = re.compile(
    rb"(BODY|BODY\.PEEK|BINARY\.PEEK|BINARY)\[([^\]]*)\](?:<(\d{1,10})\.(\d{1,10})>)?\Z", re.IGNORECASE)
_PART = re.compile(rb"[1-9][0-9]{0,4}\Z")
_FIELD_NAME_CHARS = ATOM_CHARS - {ord(":")}
#: A FETCH response is written in pieces of about this size, each once
#: the client has read the previous one (L{render_pieces}, L{Backpressure}).
FLUSH_SIZE = 65536
#: A message larger than this is copied from its file a piece at a time
#: when the items allow it (L{streamable}); smaller ones are read whole,
#: in one worker call.
STREAM_SIZE = 262144
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@dataclass(frozen=True)
class Item:
    """
    One FETCH data item.

    @ivar name: C{FLAGS}, C{UID}, ... or C{BODY} with C{section} set for
        C{BODY[...]}.
    @ivar numbers: the section's part numbers.
    @ivar text: C{""}, C{HEADER}, C{HEADER.FIELDS}, C{HEADER.FIELDS.NOT},
        C{TEXT} or C{MIME}.
    @ivar fields: the header names of HEADER.FIELDS[.NOT].
    @ivar partial: C{(origin, count)} or C{None}.
    """

    name: bytes
    section: bool = False
    peek: bool = False
    numbers: tuple[int, ...] = ()
    text: bytes = b""
    fields: tuple[bytes, ...] = ()
    partial: tuple[int, int] | None = None

    def label(self) -> bytes:
        if not self.section:
            return self.name
        spec = b".".join(str(n).encode() for n in self.numbers)
        if self.text:
            spec = spec + b"." + self.text if spec else self.text
        if self.fields:
            spec += b" (" + b" ".join(self.fields) + b")"
        out = b"BODY[" + spec + b"]"
        if self.partial is not None:
            out += b"<%d>" % self.partial[0]
        return out


def parse_items(arg: Token) -> list[Item]:
    """
    The FETCH argument: a macro, one item, or a parenthesized list of items.

    @raise ParseError: for anything else.
    """
    if isinstance(arg, list):
        if not arg:
            raise ParseError("empty FETCH item list")
        atoms = arg
    elif isinstance(arg, Atom) and arg.upper() in _MACROS:
        return [Item(name) for name in _MACROS[arg.upper()]]
    else:
        atoms = [arg]
    return [_item(a) for a in atoms]


def _item(token: Token) -> Item:
    if not isinstance(token, Atom):
        raise ParseError("invalid FETCH item")
    upper = token.upper()
    if upper in _SIMPLE:
        return Item(upper)
    match = _SECTION.match(bytes(token))
    if match is None or match.group(1).upper().startswith(b"BINARY"):
        raise ParseError("invalid FETCH item")
    kind, spec, origin, count = match.groups()
    partial = None if origin is None else (int(origin), int(count))
    if partial is not None and partial[1] == 0:
        raise ParseError("invalid partial range")
    numbers, text, fields = _section(spec)
    return Item(b"BODY", True, kind.upper() == b"BODY.PEEK", numbers, text, fields, partial)


def _section(spec: bytes) -> tuple[tuple[int, ...], bytes, tuple[bytes, ...]]:
    fields: tuple[bytes, ...] = ()
    head, space, rest = spec.partition(b" ")
    numbers: list[int] = []
    words = head.split(b".") if head else []
    if b"" in words:
        # "1." or "1..TEXT": no section (RFC 3501 section 9, section-spec);
        # "1." was answered as BODY[1], a label the client did not ask for.
        raise ParseError("invalid section")
    for word in words:
        if not _PART.match(word):
            break
        numbers.append(int(word))
    text = b".".join(words[len(numbers):]).upper()
    if text in (b"HEADER.FIELDS", b"HEADER.FIELDS.NOT"):
        rest = rest.strip()
        if not (rest.startswith(b"(") and rest.endswith(b")")):
            raise ParseError("HEADER.FIELDS needs a list of field names")
        names = rest[1:-1].replace(b'"', b" ").split()
        # Echoed in the response's label as atoms: field names (RFC 5322
        # section 3.6.8, printable but ":") that are atoms too.
        if not names or any(not _FIELD_NAME_CHARS.issuperset(n) for n in names):
            raise ParseError("invalid header field name")
        fields = tuple(n.upper() for n in names)
    elif space or text not in (b"", b"HEADER", b"TEXT", b"MIME"):
        raise ParseError("invalid section")
    if text == b"MIME" and not numbers:
        raise ParseError("MIME needs a part number")
    return tuple(numbers), text, fields


def needs_body(items: list[Item]) -> bool:
    return any(item.name not in _INDEX_ONLY for item in items)


def octets(data: bytes) -> bytes:
    """A message's octets as a FETCH literal may carry them: RFC 3501's
    literal is CHAR8, which excludes NUL; a stored NUL goes out as 0x80 (as
    Dovecot sends it), so that sizes and offsets stay those of the file."""
    return data.replace(b"\0", b"\x80") if b"\0" in data else data


def streamable(items: list[Item]) -> bool:
    """Do these items ask for nothing of the message but its octets as
    they are (or a range of them), so that it need not be read whole?"""
    return all(item.name in _INDEX_ONLY or item.name == b"RFC822"
               or (item.section and not item.numbers and item.text == b"")
               for item in items)


@dataclass(frozen=True)
class Span:
    """Where L{render_pieces} leaves C{count} octets of the message's
    file, from C{origin}, for its caller to copy."""

    origin: int
    count: int


def sets_seen(items: list[Item]) -> bool:
    """Does fetching these items set \\Seen (RFC 3501 section 6.4.5)?"""
    return any((item.section and not item.peek) or item.name in (b"RFC822", b"RFC822.TEXT")
               for item in items)


def flags_list(flags: frozenset[str] | set[str], recent: bool) -> bytes:
    names = sorted(flags) + (["\\Recent"] if recent else [])
    return b"(" + " ".join(names).encode("utf-8", "replace") + b")"


def internal_date(seconds: float) -> bytes:
    """C{"17-Jul-1996 02:44:25 +0000"}, always in UTC."""
    t = time.gmtime(seconds)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def section_data(root: mime.Part, data: bytes, item: Item) -> bytes:
    if not item.numbers:
        part = root
        if item.text == b"":
            return data
    else:
        found = mime.find(root, item.numbers)
        if found is None:
            return b""
        part = found
        if item.text == b"":
            return part.body
        if item.text == b"MIME":
            return part.header
        if not part.is_rfc822:
            return b""
        part = part.children[0]
    if item.text == b"HEADER":
        return part.header
    if item.text == b"TEXT":
        return part.body
    return mime.header_fields(part.header, list(item.fields), item.text.endswith(b".NOT"))


def render(info: MessageInfo, items: list[Item], recent: bool, uid: bool,
           data: bytes | None) -> bytes:
    """
    The parenthesized FETCH data of one message.

    @param data: the message, if L{needs_body}.
    """
    return b"".join(piece for piece in render_pieces(info, items, recent, uid, data)
                    if isinstance(piece, bytes))


def render_pieces(info: MessageInfo, items: list[Item], recent: bool, uid: bool,
                  data: bytes | None, file_size: int | None = None) -> Iterator[bytes | Span]:
    """
    L{render}'s output one item at a time, each made only when asked for:
    C{FETCH 1 (BODY.PEEK[] BODY.PEEK[] ...)} names a 35 MB message hundreds
    of times in one line, and its response must not be built whole.

    @param file_size: instead of C{data}, for L{streamable} items: the
        size of the message's file; its octets are then L{Span}s.
    """
    yield b"("
    first = True
    if uid and not any(item.name == b"UID" for item in items):
        yield b"UID %d" % info.uid
        first = False
    root = mime.parse(data) if data is not None else None
    for item in items:
        if file_size is not None and item.name not in _INDEX_ONLY:
            origin, count = item.partial or (0, file_size)
            origin = min(origin, file_size)
            count = min(count, file_size - origin)
            yield b"%s%s {%d}\r\n" % (b"" if first else b" ", item.label(), count)
            if count:
                yield Span(origin, count)
            first = False
            continue
        name = item.name
        if name == b"FLAGS":
            value = flags_list(info.flags, recent)
        elif name == b"UID":
            value = b"%d" % info.uid
        elif name == b"INTERNALDATE":
            value = internal_date(info.internal_date)
        elif name == b"RFC822.SIZE":
            value = b"%d" % info.size
        else:
            assert root is not None and data is not None
            if name == b"RFC822":
                value = mime.literal(octets(data))
            elif name == b"RFC822.HEADER":
                value = mime.literal(octets(root.header))
            elif name == b"RFC822.TEXT":
                value = mime.literal(octets(root.body))
            elif name == b"ENVELOPE":
                value = mime.envelope(root.message)
            elif name in (b"BODY", b"BODYSTRUCTURE") and not item.section:
                value = mime.bodystructure(root, name == b"BODYSTRUCTURE")
            else:
                chunk = section_data(root, data, item)
                if item.partial is not None:
                    origin, count = item.partial
                    chunk = chunk[origin:origin + count]
                value = mime.literal(octets(chunk))
        yield (b"" if first else b" ") + item.label() + b" " + value
        first = False
    yield b")"


@implementer(IPushProducer)
class Backpressure:
    """
    A push producer for a FETCH loop: the transport pauses it when its
    write buffer is full and resumes it once drained; L{ready} waits for
    that before the loop reads the next message.

    Use it as a context manager: registered on entry, unregistered on exit.

    @ivar clock: while paused, the transport is looked at every
        L{POLL} seconds: a connection closed meanwhile (idle timeout,
        shutdown) resumes nobody, and a TLS transport does not finish
        closing while a producer is registered.
    """

    POLL = 1.0

    def __init__(self, transport: Any, clock: Any) -> None:
        self.transport = transport
        self.clock = clock
        self.paused = False
        self.stopped = False
        self.registered = False
        self._waiting: Deferred[None] | None = None

    def __enter__(self) -> Backpressure:
        try:
            self.transport.registerProducer(self, True)
            self.registered = True
        except RuntimeError:
            # Another producer holds the transport (none does in IMAP
            # today); write without flow control rather than fail.
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self.registered:
            self.registered = False
            self.transport.unregisterProducer()
        self._wake()

    async def ready(self) -> bool:
        """Wait while the transport is full; C{False} once the connection
        is going away (stop writing then)."""
        while self.registered and self.paused and not self._gone():
            self._waiting = Deferred()
            poll = self.clock.callLater(self.POLL, self._wake)
            try:
                await self._waiting
            finally:
                if poll.active():
                    poll.cancel()
        return not self._gone()

    @property
    def closing(self) -> bool:
        """Is the connection going away (stop working for it)?"""
        return self._gone()

    def _gone(self) -> bool:
        return self.stopped or bool(getattr(self.transport, "disconnecting", False))

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    # IPushProducer

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self.stopped = True
        self._wake()
