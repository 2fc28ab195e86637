# -*- test-case-name: tests.test_imap_parser -*-
"""
IMAP command assembly and tokens (RFC 3501 section 4, RFC 7888 literals).

A command may span several lines joined by literals: C{a LOGIN {5}} CRLF,
then five octets, then the rest of the line.  L{literal_at_end} finds the
announcement, L{tokenize} splits the assembled pieces into atoms, quoted
strings (with C{\\\\} and C{\\"} escapes, which Twisted's parser lacks) and
literals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LITERAL = re.compile(rb"\{(\d{1,20})(\+?)\}$")

#: RFC 3501 ATOM-CHAR: any CHAR except atom-specials.
_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0, 0x20)) | {0x7F}


class ParseError(ValueError):
    """The command is malformed; the message is safe to show the client."""


@dataclass(frozen=True)
class Literal:
    """The announced size of a literal and whether it is LITERAL+ (no wait)."""

    size: int
    non_synchronizing: bool


def literal_at_end(line: bytes) -> tuple[bytes, Literal] | None:
    """
    @return: C{(text before the announcement, Literal)} if C{line} ends with
        C{{N}} or C{{N+}}, else C{None}.
    """
    match = _LITERAL.search(line)
    if match is None:
        return None
    return line[: match.start()], Literal(int(match.group(1)), bool(match.group(2)))


def tokenize(pieces: list[bytes | bytearray]) -> list[bytes]:
    """
    Split a command into tokens.  C{pieces} alternates text (C{bytes}) and
    literal contents (C{bytearray}, taken whole as one token).

    @raise ParseError: unbalanced quotes, bad escapes, stray specials.
    """
    tokens: list[bytes] = []
    for piece in pieces:
        if isinstance(piece, bytearray):
            tokens.append(bytes(piece))
            continue
        i = 0
        n = len(piece)
        while i < n:
            c = piece[i]
            if c == 0x20:
                i += 1
            elif c == 0x22:  # quoted string
                out = bytearray()
                i += 1
                while True:
                    if i >= n:
                        raise ParseError("unterminated quoted string")
                    c = piece[i]
                    if c == 0x5C:
                        if i + 1 >= n or piece[i + 1] not in (0x22, 0x5C):
                            raise ParseError("bad escape in quoted string")
                        out.append(piece[i + 1])
                        i += 2
                    elif c == 0x22:
                        i += 1
                        break
                    elif c in (0x0D, 0x0A, 0x00):
                        raise ParseError("bad character in quoted string")
                    else:
                        out.append(c)
                        i += 1
                tokens.append(bytes(out))
            else:
                start = i
                while i < n and piece[i] != 0x20:
                    if piece[i] in _ATOM_SPECIALS and piece[i] not in b"]%*":
                        raise ParseError("unexpected character")
                    i += 1
                tokens.append(piece[start:i])
    return tokens
