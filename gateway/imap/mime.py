# -*- test-case-name: tests.test_imap_mime,tests.test_imap_fetch,tests.test_imap_selected -*-
"""
The MIME structure of a message as IMAP sees it (RFC 3501 sections 6.4.5
and 7.4.2): raw byte ranges of each part for C{BODY[section]}, and the
ENVELOPE and BODYSTRUCTURE data items.

Parts are split on the raw bytes, so a section is returned exactly as
stored; the standard library's C{email} package (compat32 policy, which
keeps header text as sent) only reads the headers.  Address lists, groups
included, are read by L{gateway.imap.address}; parameters by our own
lenient L{split_params}.

Where RFC 3501 leaves a malformed message open, we answer as Dovecot does,
so that clients see what they are used to: a multipart without parts or
boundary has one empty text/plain part (the grammar needs one), RFC 2231
continuations are joined but an extended value stays encoded under
C{name*}, parts nested deeper than L{MAX_DEPTH} are application/octet-stream,
and a text part's line count is its number of line ends.  Every output is
valid under the formal syntax (section 9), whatever the input.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from gateway.imap.address import Address, parse_address_list

_HEADER_PARSER = BytesHeaderParser(policy=compat32)
#: Parts nested deeper than this are not split further; like Dovecot, such a
#: part is shown as application/octet-stream.
MAX_DEPTH = 20


# -- wire strings (RFC 3501 section 4.3) --------------------------------------

def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def nstring(value: bytes | str | None) -> bytes:
    """NIL, a quoted string, or a literal when the value holds CR, LF, NUL
    or 8-bit octets (which a quoted string cannot carry)."""
    if value is None:
        return b"NIL"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if b"\0" in value:
        # RFC 3501 section 9: neither a quoted string nor a literal (CHAR8)
        # may hold NUL; Dovecot shows it as U+FFFD.
        value = value.replace(b"\0", "\ufffd".encode())
    if any(c in (0x0D, 0x0A) or c > 0x7F for c in value):
        return literal(value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def raw(value: str) -> bytes:
    """Header text as sent (compat32 keeps 8-bit octets as surrogates, or
    as text when it could decode them)."""
    return str(value).encode("utf-8", "surrogateescape")


def header_all(message: Message, name: str) -> list[str]:
    """The raw values of a header field (C{raw_items} keeps 8-bit octets as
    surrogates; C{get} would replace them)."""
    name = name.lower()
    return [value for key, value in message.raw_items() if key.lower() == name]


def header(message: Message, name: str) -> str | None:
    values = header_all(message, name)
    return values[0] if values else None


def unfold(value: str | None) -> str | None:
    if value is None:
        return None
    return re.sub(r"\r?\n(?=[ \t])", "", str(value)).strip("\r\n")


# -- the part tree ------------------------------------------------------------

@dataclass
class Part:
    """
    One MIME entity: C{header} is its raw header block (with the blank line
    that ends it), C{body} its content; C{children} the parts of a
    multipart, or the one embedded message of a message/rfc822.
    """

    header: bytes
    body: bytes
    message: Message
    children: list[Part] = field(default_factory=list)
    overflow: bool = False  # nested too deep to be split
    #: The lower-case media type (L{content_type}).
    content_type: str = "text/plain"

    @property
    def maintype(self) -> str:
        return "application" if self.overflow else self.content_type.partition("/")[0]

    @property
    def subtype(self) -> str:
        return "octet-stream" if self.overflow else self.content_type.partition("/")[2]

    @property
    def is_multipart(self) -> bool:
        """A multipart, even one without parts or boundary (which
        L{bodystructure} shows with one empty text part, as Dovecot does:
        RFC 3501's grammar needs at least one)."""
        return self.maintype == "multipart"

    @property
    def is_rfc822(self) -> bool:
        return self.maintype == "message" and self.subtype == "rfc822"


# The blank line that ends a header block; bare LF line ends are read too
# (a Maildir filled by another program may hold them), as Dovecot does.
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MEDIA_TYPE = re.compile(r"[^\x00-\x20\x7f()<>@,;:\\\"/\[\]?=]+/[^\x00-\x20\x7f()<>@,;:\\\"/\[\]?=]+\Z")


def parse(data: bytes, depth: int = 0, default: str = "text/plain") -> Part:
    """Split a message (or a part) into its L{Part} tree."""
    if data.startswith(b"\r\n") or data.startswith(b"\n"):
        size = 2 if data.startswith(b"\r\n") else 1
        head, body = data[:size], data[size:]
    else:
        found = _HEADER_END.search(data)
        head, body = (data, b"") if found is None else (
            data[:found.end()], data[found.end():])
    message = _HEADER_PARSER.parsebytes(head)
    content_type = unfold(header(message, "content-type"))
    part = Part(head, body, message, content_type=media_type(content_type, default))
    if depth > MAX_DEPTH:  # a bomb of nested parts; stop looking
        part.overflow = part.maintype in ("multipart", "message")
        return part
    if part.maintype == "multipart":
        boundary = _boundary(content_type or "")
        if boundary:
            child_default = "message/rfc822" if part.subtype == "digest" else "text/plain"
            part.children = [parse(chunk, depth + 1, child_default)
                             for chunk in _split(body, raw(boundary))]
    elif part.is_rfc822:
        part.children = [parse(body, depth + 1)]
    return part


def media_type(content_type: str | None, default: str = "text/plain") -> str:
    """
    The lower-case C{type/subtype} of a Content-Type value: C{default}
    when there is none, and text/plain when it is not a valid media type
    (RFC 2045 section 5.2).  Comments and white space around the C{/} go
    (RFC 2045 section 5.1 is a structured field).
    """
    if content_type is None:
        return default
    first = re.sub(r"\s+", "", split_params(content_type)[0]).lower()
    return first if _MEDIA_TYPE.match(first) else "text/plain"


def _boundary(content_type: str) -> str | None:
    """The boundary parameter, with L{split_params} (linear in the value,
    unlike C{email.message.Message.get_boundary}, which is quadratic in
    the number of semicolons inside a quoted string)."""
    for name, value in merge_rfc2231(split_params(content_type)[1]):
        if name.lower() == "boundary":
            return value.rstrip() or None
        if name.lower() == "boundary*":  # charset'language'percent-encoded
            text = urllib.parse.unquote(value.split("'", 2)[-1], "utf-8", "surrogateescape")
            return text.rstrip() or None
    return None


def _split(body: bytes, boundary: bytes) -> list[bytes]:
    # RFC 2046 section 5.1.1: the CRLF before a delimiter belongs to it.
    # The line end after a delimiter is looked at, not taken, so that an
    # empty part (a delimiter line right after another) is seen, as in
    # Dovecot; a bare LF is read as a line end.
    delimiter = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary)
                           + rb"(--)?[ \t]*(?=\r?\n|\Z)")
    chunks: list[bytes] = []
    start = None
    for match in delimiter.finditer(body):
        if start is not None:
            chunks.append(body[start:max(start, match.start())])
        if match.group(1):
            return chunks
        end = match.end()
        start = end + (2 if body.startswith(b"\r\n", end) else 1 if end < len(body) else 0)
    if start is not None:
        chunks.append(body[start:])
    return chunks


def find(root: Part, numbers: tuple[int, ...]) -> Part | None:
    """
    The part named by a section's numbers (RFC 3501 section 6.4.5), or
    C{None} when there is none.  A message's parts are those of its
    multipart body, or else its body alone as part 1; a message/rfc822
    part's parts are those of the message inside it (also at the top:
    C{BODY[1.1]} of a message/rfc822 message is the inner body).  A
    non-multipart message has only a part 1 (C{BODY[1.1]} of a text/plain
    message does not exist); like Dovecot, a leaf of a multipart takes
    one more C{.1} as itself.
    """
    part = root
    state = "message"  # or "part" (of a multipart), or "one" (taken as a part 1)
    for n in numbers:
        if state != "message" and part.is_rfc822:
            part, state = part.children[0], "message"
        if part.is_multipart:
            if not 1 <= n <= len(part.children):
                return None
            part, state = part.children[n - 1], "part"
        elif n == 1 and state != "one":
            state = "one"
        else:
            return None
    return part


def header_fields(header: bytes, names: list[bytes], exclude: bool) -> bytes:
    """The header lines (with their continuations) whose field name is, or
    with C{exclude} is not, in C{names}; then the blank line."""
    wanted = {n.lower() for n in names}
    out: list[bytes] = []
    keep = False
    for line in re.split(rb"\r?\n", header):  # bare LF line ends too
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        keep = (name in wanted) != exclude
        if keep:
            out.append(line)
    return b"".join(line + b"\r\n" for line in out) + b"\r\n"


# -- ENVELOPE (RFC 3501 section 7.4.2) -----------------------------------------

def addresses(message: Message, name: str) -> list[Address]:
    """The addresses of every C{name} header field, with group markers."""
    out: list[Address] = []
    for value in header_all(message, name):
        out += parse_address_list(unfold(value) or "")
    return out


def address_list(found: list[Address]) -> bytes:
    if not found:
        return b"NIL"
    return b"(" + b"".join(
        b"(" + b" ".join(nstring(None if x is None else raw(x))
                         for x in (a.name, a.route, a.mailbox, a.host)) + b")"
        for a in found) + b")"


def envelope(message: Message) -> bytes:
    def text(name: str) -> bytes:
        value = unfold(header(message, name))
        return nstring(None if value is None else raw(value))

    sender = addresses(message, "from")
    # RFC 3501 section 7.4.2: Sender and Reply-To, when absent or empty,
    # are the From addresses.
    return b"(" + b" ".join([
        text("date"), text("subject"), address_list(sender),
        address_list(addresses(message, "sender") or sender),
        address_list(addresses(message, "reply-to") or sender),
        address_list(addresses(message, "to")), address_list(addresses(message, "cc")),
        address_list(addresses(message, "bcc")),
        text("in-reply-to"), text("message-id"),
    ]) + b")"


# -- parameters (RFC 2045 section 5.1, RFC 2231) ----------------------------------

_CONTINUATION = re.compile(r"(.+?)\*([0-9]{1,3})(\*?)\Z")
_ATTRIBUTE_CHAR = re.compile(r"[!#$&+\-.0-9A-Z^_`a-z{|}~]")


def split_params(value: str) -> tuple[str, list[tuple[str, str]]]:
    """
    A structured header value (Content-Type, Content-Disposition) as its
    first word and its C{(name, value)} parameters in order, quoted
    strings unquoted; lenient, never raises.
    """
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    depth = 0
    for c in value:
        if escaped:
            current.append(c)
            escaped = False
        elif quoted:
            if c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
            else:
                current.append(c)
        elif depth:  # a comment (RFC 5322 section 3.2.2)
            depth += (c == "(") - (c == ")")
        elif c == '"':
            quoted = True
            current.append("\0")  # marks "was quoted" for an empty value
        elif c == "(":
            depth = 1
        elif c == ";":
            pieces.append("".join(current))
            current = []
        elif c not in "\r\n":
            current.append(c)
    pieces.append("".join(current))
    first = pieces[0].replace("\0", "").strip()
    params: list[tuple[str, str]] = []
    for piece in pieces[1:]:
        name, eq, val = piece.partition("=")
        name = name.replace("\0", "").strip()
        if not eq or not name:
            continue
        val = val.strip()
        params.append((name, val.replace("\0", "")))
    return first, params


def merge_rfc2231(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """
    RFC 2231 section 3 continuations joined, as Dovecot does
    (C{rfc2231-parser.c}): an extended value stays encoded under
    C{name*} (C{charset'language'percent-encoded}, so BODYSTRUCTURE stays
    7-bit and the client decodes it); plain sections are percent-encoded
    when joined to extended ones.  The first of duplicate names wins.
    """
    out: dict[str, tuple[str, str]] = {}
    sections: dict[str, dict[int, tuple[bool, str]]] = {}
    names: dict[str, str] = {}
    order: list[str] = []
    for name, value in params:
        match = _CONTINUATION.match(name)
        if match is not None:
            base = match.group(1).lower()
            names.setdefault(base, match.group(1))
            if base not in sections:
                sections[base] = {}
                order.append("*" + base)
            sections[base].setdefault(int(match.group(2)), (bool(match.group(3)), value))
            continue
        key = name.lower()
        if key not in out:
            out[key] = (name, value)
            order.append(key)
    merged: list[tuple[str, str]] = []
    for key in order:
        if not key.startswith("*"):
            merged.append(out[key])
            continue
        base = key[1:]
        parts = sections[base]
        chunks: list[tuple[bool, str]] = []
        n = 0
        while n in parts:  # RFC 2231: sections are numbered from 0 without gaps
            chunks.append(parts[n])
            n += 1
        if not chunks:
            continue
        name = names[base]
        if not any(extended for extended, _ in chunks):
            if base not in out:
                merged.append((name, "".join(v for _, v in chunks)))
            continue
        text = "" if chunks[0][0] else "''"
        for extended, value in chunks:
            text += value if extended else "".join(
                c if _ATTRIBUTE_CHAR.match(c) else "".join(
                    f"%{b:02X}" for b in c.encode("utf-8", "surrogateescape"))
                for c in value)
        if base + "*" not in out:
            merged.append((name + "*", text))
    return merged


def _params(value: str | None, defaults: tuple[tuple[str, str], ...] = ()) -> bytes:
    params = [] if value is None else merge_rfc2231(split_params(value)[1])
    present = {name.lower() for name, _ in params}
    params = [(n, v) for n, v in defaults if n.lower() not in present] + params
    if not params:
        return b"NIL"
    return b"(" + b" ".join(nstring(raw(name.upper())) + b" " + nstring(raw(value))
                            for name, value in params) + b")"


# -- BODYSTRUCTURE and BODY (RFC 3501 section 7.4.2) ----------------------------

#: RFC 3501 needs at least one part in a multipart; a multipart without
#: parts (or boundary) shows one empty text part, as in Dovecot.
_EMPTY_BODY = b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0)'
_EMPTY_BODYSTRUCTURE = _EMPTY_BODY[:-1] + b" NIL NIL NIL NIL)"


def _extension(message: Message) -> list[bytes]:
    disposition = unfold(header(message, "content-disposition"))
    kind = None if disposition is None else split_params(disposition)[0]
    if not kind:
        disp = b"NIL"
    else:
        disp = b"(" + nstring(raw(kind.upper())) + b" " + _params(disposition) + b")"
    language = unfold(header(message, "content-language"))
    tags = [] if language is None else [
        x.strip() for x in re.sub(r"\([^)]*\)", "", language).replace(",", " ").split()]
    lang = b"NIL" if not tags else b"(" + b" ".join(nstring(raw(x)) for x in tags) + b")"
    location = unfold(header(message, "content-location"))
    return [disp, lang, nstring(None if not location else raw(location.strip()))]


def lines(body: bytes) -> int:
    """The body's size in text lines: its line ends (as Dovecot counts)."""
    return body.count(b"\n")


def bodystructure(part: Part, extensible: bool = True) -> bytes:
    """BODYSTRUCTURE (C{extensible}) or BODY of a part."""
    message = part.message
    content_type = unfold(header(message, "content-type"))
    if part.is_multipart:
        inner = b"".join(bodystructure(child, extensible) for child in part.children) or (
            _EMPTY_BODYSTRUCTURE if extensible else _EMPTY_BODY)
        items = [inner, nstring(raw(part.subtype.upper()))]
        if extensible:
            items += [_params(content_type), *_extension(message)]
        return b"(" + b" ".join(items) + b")"
    maintype, subtype = part.maintype, part.subtype
    if part.overflow:
        params = b"NIL"
    elif maintype == "text":
        params = _params(content_type, (("charset", "US-ASCII"),))
    else:
        params = _params(content_type)
    encoding = (unfold(header(message, "content-transfer-encoding")) or "").strip()
    encoding = split_params(encoding)[0] or "7BIT"
    items = [
        nstring(raw(maintype.upper())), nstring(raw(subtype.upper())), params,
        nstring(_opt(message, "content-id")), nstring(_opt(message, "content-description")),
        nstring(raw(encoding.upper())), str(len(part.body)).encode(),
    ]
    if part.is_rfc822:
        embedded = part.children[0]
        items += [envelope(embedded.message), bodystructure(embedded, extensible),
                  str(lines(part.body)).encode()]
    elif maintype == "text":
        items.append(str(lines(part.body)).encode())
    if extensible:
        items += [nstring(_opt(message, "content-md5")), *_extension(message)]
    return b"(" + b" ".join(items) + b")"


def _opt(message: Message, name: str) -> bytes | None:
    value = unfold(header(message, name))
    return None if value is None else raw(value.strip())
