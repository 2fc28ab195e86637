# -*- test-case-name: tests.test_imap_search -*-
"""
The text of a message as SEARCH compares it (RFC 3501 section 6.4.4): a
header field with its RFC 2047 encoded words decoded, a text part's body
with its Content-Transfer-Encoding (quoted-printable, base64) and charset
undone.  Everything is folded for a case-insensitive match (L{fold}).

Like Dovecot (C{message-search.c}, C{message-decoder.c}), only the bodies
of text/* and message/* parts are searched (a PDF's base64 is not text),
multipart preambles and epilogues are not, an unknown or broken charset is
read as UTF-8 with replacement characters, 8-bit header text as UTF-8, and
nothing here raises on malformed input.
"""

from __future__ import annotations

import binascii
import codecs
import re
import unicodedata
from collections.abc import Iterator

from gateway.imap import mime

_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")
# RFC 2047 section 2 (and RFC 2231 section 5: charset*language).
_ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
#: Names of US-ASCII, read as UTF-8 (8-bit octets there are most likely UTF-8).
_ASCII_ALIASES = {"us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "us"}


def fold(text: str) -> str:
    """Case-folded and composed (NFC), so that C{Ä} (one code point) and
    C{A} + combining diaeresis compare equal, and C{ß} matches C{SS}."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return text.casefold()


def to_text(data: bytes, charset: str | None) -> str:
    """
    C{data} in C{charset}; an unknown charset, one that is not a text
    encoding (C{base64}, C{rot13}) or invalid octets give UTF-8 with
    replacement characters rather than an error.
    """
    name = (charset or "").strip().strip('"').lower()
    if not name or name in _ASCII_ALIASES:
        name = "utf-8"
    try:
        # bytes.decode refuses codecs that are not text encodings.
        return data.decode(codecs.lookup(name).name, "replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return data.decode("utf-8", "replace")


def header_value(value: str) -> str:
    """
    A header field's value (as the compat32 parser keeps it: 8-bit octets
    as surrogates) unfolded, with RFC 2047 encoded words decoded.
    """
    text = mime.raw(mime.unfold(value) or "").decode("utf-8", "replace")
    if "=?" not in text:
        return text
    out: list[str] = []
    pos = 0
    after_word = False
    for match in _ENCODED_WORD.finditer(text):
        decoded = _encoded_word(match)
        if decoded is None:
            continue  # left as it is, with the text around it
        between = text[pos:match.start()]
        # RFC 2047 section 6.2: white space between encoded words goes.
        if not (after_word and not between.strip()):
            out.append(between)
        out.append(decoded)
        pos = match.end()
        after_word = True
    out.append(text[pos:])
    return "".join(out)


def _encoded_word(match: re.Match[str]) -> str | None:
    charset, kind, payload = match.groups()
    data = payload.encode("utf-8")
    try:
        if kind in "qQ":
            raw = binascii.a2b_qp(data, header=True)
        elif _NOT_BASE64.search(data):
            return None  # not base64 at all: shown as it is
        else:
            raw = _base64(data)
    except (binascii.Error, ValueError):
        return None
    return to_text(raw, charset)


def _base64(data: bytes) -> bytes:
    """Lenient base64 (RFC 2045 section 6.8: characters outside the
    alphabet are ignored; a missing padding is supplied, a lone trailing
    character dropped).

    @raise binascii.Error: when nothing sensible remains."""
    data = _NOT_BASE64.sub(b"", data)
    data = data.split(b"=", 1)[0]  # "=" ends the data
    data = data[:len(data) - len(data) % 4 if len(data) % 4 == 1 else len(data)]
    return binascii.a2b_base64(data + b"=" * (-len(data) % 4))


def header_fields(part: mime.Part, name: str) -> list[str] | None:
    """The decoded values of a header field of the part, C{None} when the
    part has no such field."""
    values = mime.header_all(part.message, name)
    return [header_value(v) for v in values] if values else None


def headers_text(part: mime.Part) -> str:
    """All the header fields of a part as C{Name: value} lines."""
    return "\n".join(f"{key}: {header_value(value)}"
                     for key, value in part.message.raw_items())


def transfer_decoded(part: mime.Part) -> bytes:
    """The part's body with its Content-Transfer-Encoding undone (RFC 2045
    section 6); an unknown encoding is left as it is."""
    encoding = (mime.unfold(mime.header(part.message, "content-transfer-encoding")) or "")
    # As BODYSTRUCTURE reads it: comments and quotes go (RFC 2045 section 6.1).
    encoding = mime.split_params(encoding)[0].lower()
    body = part.body
    if encoding == "base64":
        try:
            # The usual case at C speed (it skips line ends and other
            # characters outside the alphabet); the careful path on error.
            return binascii.a2b_base64(body)
        except (binascii.Error, ValueError):
            pass
        try:
            return _base64(body)
        except (binascii.Error, ValueError):
            return body
    if encoding == "quoted-printable":
        try:
            return binascii.a2b_qp(body)
        except (binascii.Error, ValueError):
            return body
    return body


def _charset(part: mime.Part) -> str | None:
    content_type = mime.unfold(mime.header(part.message, "content-type"))
    if content_type is None:
        return None
    for name, value in mime.split_params(content_type)[1]:
        if name.lower() == "charset":
            return value
    return None


def parts(root: mime.Part) -> Iterator[mime.Part]:
    """Every part, depth first, the root included."""
    stack = [root]
    while stack:
        part = stack.pop()
        yield part
        stack.extend(reversed(part.children))


def is_searchable(part: mime.Part) -> bool:
    """A leaf whose body is text: text/* or message/* (not an
    encapsulated message, whose own parts are searched)."""
    return not part.children and not part.is_multipart and (
        part.maintype in ("text", "message"))


def body_texts(root: mime.Part) -> Iterator[str]:
    """The decoded body of each text part."""
    for part in parts(root):
        if is_searchable(part):
            yield to_text(transfer_decoded(part), _charset(part))


def all_headers(root: mime.Part) -> Iterator[str]:
    """The decoded headers of the message and of each of its parts."""
    for part in parts(root):
        yield headers_text(part)
