# -*- test-case-name: tests.test_imap_selected -*-
"""
The MIME structure of a message as IMAP sees it (RFC 3501 sections 6.4.5
and 7.4.2): raw byte ranges of each part for C{BODY[section]}, and the
ENVELOPE and BODYSTRUCTURE data items.

Parts are split on the raw bytes, so a section is returned exactly as
stored; the standard library's C{email} package (compat32 policy, which
keeps header text as sent) only reads the headers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import collapse_rfc2231_value, getaddresses

_HEADER_PARSER = BytesHeaderParser(policy=compat32)


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
    if any(c in (0x0D, 0x0A, 0x00) or c > 0x7F for c in value):
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

    @property
    def maintype(self) -> str:
        return self.message.get_content_maintype()

    @property
    def subtype(self) -> str:
        return self.message.get_content_subtype()

    @property
    def is_multipart(self) -> bool:
        return self.maintype == "multipart" and bool(self.children)

    @property
    def is_rfc822(self) -> bool:
        return self.maintype == "message" and self.subtype == "rfc822"


def parse(data: bytes, depth: int = 0, default: str = "text/plain") -> Part:
    """Split a message (or a part) into its L{Part} tree."""
    if data.startswith(b"\r\n"):
        header, body = b"\r\n", data[2:]
    else:
        end = data.find(b"\r\n\r\n")
        header, body = (data, b"") if end < 0 else (data[:end + 4], data[end + 4:])
    message = _HEADER_PARSER.parsebytes(header)
    if message.get("content-type") is None:
        message.set_default_type(default)
    part = Part(header, body, message)
    if depth > 20:  # a bomb of nested parts; stop looking
        return part
    if part.maintype == "multipart":
        boundary = message.get_boundary()
        if boundary:
            child_default = "message/rfc822" if part.subtype == "digest" else "text/plain"
            part.children = [parse(chunk, depth + 1, child_default)
                             for chunk in _split(body, raw(boundary))]
    elif part.is_rfc822:
        part.children = [parse(body, depth + 1)]
    return part


def _split(body: bytes, boundary: bytes) -> list[bytes]:
    # RFC 2046 section 5.1.1: the CRLF before a delimiter belongs to it.
    delimiter = re.compile(rb"(?:\A|\r\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r\n|\Z)")
    chunks: list[bytes] = []
    start = None
    for match in delimiter.finditer(body):
        if start is not None:
            chunks.append(body[start:match.start()])
        if match.group(1):
            return chunks
        start = match.end()
    if start is not None:
        chunks.append(body[start:])
    return chunks


def find(root: Part, numbers: tuple[int, ...]) -> Part | None:
    """The part named by a section's numbers (RFC 3501 section 6.4.5)."""
    part = root
    for n in numbers:
        if part.is_rfc822 and part is not root:
            part = part.children[0]
        if part.is_multipart:
            if n > len(part.children):
                return None
            part = part.children[n - 1]
        elif n != 1:
            return None
    return part


def header_fields(header: bytes, names: list[bytes], exclude: bool) -> bytes:
    """The header lines (with their continuations) whose field name is, or
    with C{exclude} is not, in C{names}; then the blank line."""
    wanted = {n.lower() for n in names}
    out: list[bytes] = []
    keep = False
    for line in header.split(b"\r\n"):
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

def envelope(message: Message) -> bytes:
    def text(name: str) -> bytes:
        value = unfold(header(message, name))
        return nstring(None if value is None else raw(value))

    def addresses(name: str, fallback: str | None = None) -> bytes:
        values = header_all(message, name)
        if not values and fallback:
            values = header_all(message, fallback)
        if not values:
            return b"NIL"
        items = []
        for display, address in getaddresses([unfold(v) or "" for v in values]):
            if not address and not display:
                continue
            mailbox, at, host = address.rpartition("@")
            if not at:
                mailbox, host = address, ""
            items.append(b"(" + b" ".join([
                nstring(raw(display) if display else None), b"NIL",
                nstring(raw(mailbox)), nstring(raw(host) if host else None)]) + b")")
        return b"(" + b"".join(items) + b")" if items else b"NIL"

    return b"(" + b" ".join([
        text("date"), text("subject"), addresses("from"), addresses("sender", "from"),
        addresses("reply-to", "from"), addresses("to"), addresses("cc"), addresses("bcc"),
        text("in-reply-to"), text("message-id"),
    ]) + b")"


# -- BODYSTRUCTURE and BODY (RFC 3501 section 7.4.2) ----------------------------

def _params(message: Message, header: str) -> bytes:
    params = message.get_params(header=header)
    if not params or len(params) < 2:
        return b"NIL"
    out = []
    for name, value in params[1:]:
        out += [nstring(raw(name.upper())), nstring(raw(collapse_rfc2231_value(value)))]
    return b"(" + b" ".join(out) + b")"


def _extension(message: Message) -> list[bytes]:
    disposition = message.get("content-disposition")
    if disposition is None:
        disp = b"NIL"
    else:
        kind = str(disposition).replace("\r\n", "").split(";", 1)[0].strip()
        disp = b"(" + nstring(raw(kind.upper())) + b" " + _params(
            message, "content-disposition") + b")"
    language = unfold(message.get("content-language"))
    lang = b"NIL" if language is None else b"(" + b" ".join(
        nstring(raw(x.strip())) for x in language.split(",") if x.strip()) + b")"
    location = unfold(message.get("content-location"))
    return [disp, lang, nstring(None if location is None else raw(location))]


def bodystructure(part: Part, extensible: bool = True) -> bytes:
    """BODYSTRUCTURE (C{extensible}) or BODY of a part."""
    message = part.message
    if part.is_multipart:
        inner = b"".join(bodystructure(child, extensible) for child in part.children)
        items = [inner, nstring(raw(part.subtype.upper()))]
        if extensible:
            items += [_params(message, "content-type"), *_extension(message)]
        return b"(" + b" ".join(items) + b")"
    maintype = "text" if part.maintype == "multipart" else part.maintype
    subtype = "plain" if part.maintype == "multipart" else part.subtype
    params = _params(message, "content-type")
    if params == b"NIL" and maintype == "text":
        params = b'("CHARSET" "US-ASCII")'
    encoding = unfold(message.get("content-transfer-encoding")) or "7BIT"
    items = [
        nstring(raw(maintype.upper())), nstring(raw(subtype.upper())), params,
        nstring(_opt(message, "content-id")), nstring(_opt(message, "content-description")),
        nstring(raw(encoding.strip().upper())), str(len(part.body)).encode(),
    ]
    if part.is_rfc822:
        embedded = part.children[0]
        items += [envelope(embedded.message), bodystructure(embedded, extensible),
                  str(part.body.count(b"\n")).encode()]
    elif maintype == "text":
        items.append(str(part.body.count(b"\n")).encode())
    if extensible:
        items += [nstring(_opt(message, "content-md5")), *_extension(message)]
    return b"(" + b" ".join(items) + b")"


def _opt(message: Message, name: str) -> bytes | None:
    value = unfold(header(message, name))
    return None if value is None else raw(value)
