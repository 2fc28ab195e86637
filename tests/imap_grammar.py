"""
Checks of FETCH responses against RFC 3501's formal syntax (section 9),
on what a real client library parses out of them: C{imapclient}'s
response parser (the one it uses on imaplib's data) reads the bytes, and
L{check_body} / L{check_envelope} hold the parsed values to the grammar
(types, field counts, group markers) that the lenient parser does not
enforce.
"""

from __future__ import annotations

import re
from typing import Any

from imapclient.response_parser import parse_fetch_response

_LITERAL = re.compile(rb"\{(\d+)\}\r\n")


def imaplib_data(wire: bytes) -> list[Any]:
    """
    Untagged FETCH responses as imaplib hands them to its caller: without
    C{* } and C{FETCH}, each literal as a C{(text before, data)} pair.
    """
    data: list[Any] = []
    pos = 0
    while pos < len(wire):
        assert wire.startswith(b"* ", pos), wire[pos:pos + 40]
        seq, _, rest = wire[pos + 2:].partition(b" ")
        assert rest.startswith(b"FETCH "), rest[:40]
        pos += 2 + len(seq) + 1 + len(b"FETCH ")
        head = seq + b" "
        while True:
            literal = _LITERAL.search(wire, pos)
            end = wire.find(b"\r\n", pos)
            assert end >= 0, "response not ended by CRLF"
            if literal is None or literal.start() > end:
                data.append(head + wire[pos:end])
                pos = end + 2
                break
            size = int(literal.group(1))
            start = literal.end()
            data.append((head + wire[pos:start - 2], wire[start:start + size]))
            head = b""
            pos = start + size
    return data


def parse_fetch(wire: bytes) -> dict[int, dict[bytes, Any]]:
    """The FETCH responses in C{wire}, by sequence number."""
    return dict(parse_fetch_response(imaplib_data(wire), uid_is_key=False))


def _nstring(value: Any) -> bool:
    return value is None or isinstance(value, bytes)


def check_params(params: Any) -> None:
    # body-fld-param = "(" string SP string *(SP string SP string) ")" / nil
    if params is None:
        return
    assert isinstance(params, tuple) and params and len(params) % 2 == 0, params
    assert all(isinstance(p, bytes) for p in params), params


def _extension(fields: tuple[Any, ...], what: str) -> None:
    # body-fld-dsp, body-fld-lang, body-fld-loc
    if not fields:
        return
    dsp = fields[0]
    assert dsp is None or (isinstance(dsp, tuple) and len(dsp) == 2
                           and isinstance(dsp[0], bytes)), (what, dsp)
    if dsp is not None:
        check_params(dsp[1])
    if len(fields) > 1:
        lang = fields[1]
        assert _nstring(lang) or (isinstance(lang, tuple) and lang and all(
            isinstance(x, bytes) for x in lang)), (what, lang)
    if len(fields) > 2:
        assert _nstring(fields[2]), (what, fields[2])


def check_body(body: Any, extensible: bool) -> None:
    """
    Hold a parsed BODY or BODYSTRUCTURE to RFC 3501 section 9 (body,
    body-type-1part, body-type-mpart, body-ext-*).
    """
    if isinstance(body, (list, tuple)) and body and isinstance(body[0], (list, tuple)):
        if isinstance(body[0], list):  # imapclient's BodyData, at the top
            parts, rest = body[0], tuple(body[1:])
        else:  # nested: the parts, then the subtype
            n = next((i for i, x in enumerate(body) if not isinstance(x, tuple)), len(body))
            parts, rest = list(body[:n]), tuple(body[n:])
        assert parts, "a multipart needs at least one part"
        for part in parts:
            check_body(part, extensible)
        assert isinstance(rest[0], bytes), rest  # media-subtype
        if extensible:
            assert len(rest) >= 2, rest
            check_params(rest[1])
            _extension(rest[2:], "multipart")
        else:
            assert len(rest) == 1, rest
        return
    body = tuple(body)
    assert len(body) >= 7, body
    kind, subtype, params, body_id, desc, encoding, size = body[:7]
    assert isinstance(kind, bytes) and isinstance(subtype, bytes), body
    check_params(params)
    assert _nstring(body_id) and _nstring(desc), body
    assert isinstance(encoding, bytes) and encoding, body
    assert isinstance(size, int) and size >= 0, body
    rest = body[7:]
    if (kind.upper(), subtype.upper()) == (b"MESSAGE", b"RFC822"):
        assert len(rest) >= 3, body
        check_envelope(rest[0])
        check_body(rest[1], extensible)
        assert isinstance(rest[2], int) and rest[2] >= 0, body
        rest = rest[3:]
    elif kind.upper() == b"TEXT":
        assert rest and isinstance(rest[0], int) and rest[0] >= 0, body
        rest = rest[1:]
    if extensible:
        assert len(rest) >= 1 and _nstring(rest[0]), body  # body-fld-md5
        _extension(rest[1:], "part")
    else:
        assert rest == (), body


def _address(address: Any) -> tuple[Any, ...]:
    if hasattr(address, "mailbox"):
        return (address.name, address.route, address.mailbox, address.host)
    return tuple(address)


def check_envelope(envelope: Any) -> None:
    """RFC 3501 envelope: ten fields; address lists of 4-tuples of
    nstrings in which groups open with C{(NIL NIL name NIL)} and close with
    C{(NIL NIL NIL NIL)}, and every other address has a mailbox and host."""
    if hasattr(envelope, "from_"):
        fields = [envelope.date, envelope.subject, envelope.from_, envelope.sender,
                  envelope.reply_to, envelope.to, envelope.cc, envelope.bcc,
                  envelope.in_reply_to, envelope.message_id]
        texts = [fields[1], fields[8], fields[9]]  # imapclient parses the date
    else:
        fields = list(envelope)
        assert len(fields) == 10, envelope
        texts = [fields[0], fields[1], fields[8], fields[9]]
    assert all(_nstring(t) for t in texts), envelope
    for addresses in fields[2:8]:
        if addresses is None:
            continue
        assert isinstance(addresses, (tuple, list)) and addresses, envelope
        in_group = False
        for address in addresses:
            name, route, mailbox, host = _address(address)
            assert all(_nstring(x) for x in (name, route, mailbox, host)), address
            if host is None:
                if mailbox is None:
                    assert in_group, ("group end outside a group", addresses)
                    assert name is None and route is None
                    in_group = False
                else:
                    assert not in_group, ("nested group", addresses)
                    in_group = True
            else:
                assert mailbox is not None, address
        assert not in_group, ("unclosed group", addresses)


# -- any response (RFC 3501 section 9, response) -------------------------------

_TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c\x7d\x7e]+\Z")
_ATOM = rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c\x7d\x7e]+"
_FLAG = re.compile(rb"(\\(Answered|Flagged|Deleted|Seen|Draft|Recent|\*)|" + _ATOM + rb")\Z")
_NUMBER_DATA = re.compile(rb"(0|[1-9][0-9]*) (EXISTS|RECENT)\Z|[1-9][0-9]* EXPUNGE\Z")
_SEARCH = re.compile(rb"SEARCH( [1-9][0-9]*)*\Z")
_FLAGS_DATA = re.compile(rb"(FLAGS|OK \[PERMANENTFLAGS) \(([^()]*)\)")


def responses(wire: bytes) -> list[bytes]:
    """Split a server's output into responses (a literal's CRLFs kept)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(wire):
        start = pos
        while True:
            end = wire.find(b"\r\n", pos)
            assert end >= 0, ("response not ended by CRLF", wire[start:start + 80])
            literal = _LITERAL.search(wire, pos, end + 2)
            if literal is None or literal.end() != end + 2:
                break
            pos = literal.end() + int(literal.group(1))
        out.append(wire[start:end])
        pos = end + 2
    return out


def check_text(text: bytes) -> None:
    """resp-text: an optional [code] then text, all TEXT-CHAR (7-bit)."""
    assert text and all(0x01 <= c <= 0x7F and c not in (0x0D, 0x0A) for c in text), text
    if text.startswith(b"["):
        assert b"]" in text, text


def check_flags(flags: bytes) -> None:
    for flag in flags.split():
        assert _FLAG.match(flag), ("invalid flag", flag, flags)


def check_response(response: bytes) -> None:
    """
    Hold one response to RFC 3501's grammar, as far as a client's parser
    would trip on it: the status responses and their text, the numbers of
    EXISTS, EXPUNGE and SEARCH, flags, and FETCH data through imapclient
    (L{parse_fetch}) with the flags it holds.
    """
    if response.startswith(b"+ ") or response == b"+":
        return
    head, _, rest = response.partition(b" ")
    if head != b"*":
        assert _TAG.match(head), ("bad tag", response)
        status, _, text = rest.partition(b" ")
        assert status in (b"OK", b"NO", b"BAD"), response
        check_text(text)
        return
    kind, _, text = rest.partition(b" ")
    if kind in (b"OK", b"NO", b"BAD", b"BYE"):
        check_text(text)
    if kind.isdigit() and text.startswith(b"FETCH "):
        for data in parse_fetch(response + b"\r\n").values():
            if b"FLAGS" in data:  # imapclient reads a keyword of digits as a number
                check_flags(b" ".join(f if isinstance(f, bytes) else b"%d" % f
                                      for f in data[b"FLAGS"]))
        return
    assert all(c < 0x80 for c in response), response  # no literal here
    if kind.isdigit():
        assert _NUMBER_DATA.match(rest), response
    elif kind == b"SEARCH":
        assert _SEARCH.match(rest), response
    for match in _FLAGS_DATA.finditer(rest):
        check_flags(match.group(2))


def check_wire(wire: bytes) -> None:
    for response in responses(wire):
        check_response(response)
