# -*- test-case-name: tests.test_imap_parser -*-
"""
IMAP command assembly and tokens (RFC 3501 sections 4 and 9, RFC 7888
literals), and sequence sets.

A command may span several lines joined by literals: C{a LOGIN {5}} CRLF,
then five octets, then the rest of the line.  L{literal_at_end} finds the
announcement, L{tokenize} turns the assembled pieces into a tree: L{Atom}s,
L{String}s (quoted, with C{\\\\} and C{\\"} escapes, which Twisted's parser
lacks, or literal) and Python lists for parenthesized lists.  Both token
types are C{bytes}, so a handler that wants plain values can ignore the
difference; it matters where NIL and "NIL" differ.

An atom that contains C{[} runs to the matching C{]} whatever it holds, so
C{BODY.PEEK[HEADER.FIELDS (From To)]<0.100>} is one atom (RFC 3501
section 9, C{fetch-att}).

Parenthesized lists nest at most L{MAX_LIST_DEPTH} deep: the commands that
walk the token tree (SEARCH keys above all) may then recurse over it
without meeting Python's recursion limit, whatever the client sends.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from typing import Union

_LITERAL = re.compile(rb"\{(\d{1,20})(\+?)\}$")

#: RFC 3501 atom-specials, less those we let into atoms: C{%} and C{*}
#: (list-wildcards, sequence sets), C{]} (resp-specials) and C{\\} (flags).
_NOT_ATOM = set(b'(){ "') | set(range(0, 0x20)) | set(range(0x7F, 0x100))

#: RFC 3501 section 9, ATOM-CHAR: any CHAR but atom-specials.  What a
#: server echoes as an atom (a keyword, a header field name) must be made of
#: these alone; our tokenizer lets more into atoms.
ATOM_CHARS = frozenset(range(0x21, 0x7F)) - frozenset(b'(){%*"\\]')

#: How deep parenthesized lists may nest in a command.  No command needs
#: more than a few levels; SEARCH, the deepest, has its own lower bound
#: (L{gateway.imap.search.MAX_SEARCH_DEPTH}).
MAX_LIST_DEPTH = 64


class ParseError(ValueError):
    """
    The command is malformed (answered BAD); the message is safe to show
    the client.

    @cvar counted: whether the BAD counts toward the connection's
        C{max_bad_commands}: a garbled command does, a well-formed one that
        names messages the client's view lacks does not
        (L{gateway.imap.replies.BadSequence}).
    """

    counted = True


class Atom(bytes):
    """An unquoted token."""


class String(bytes):
    """A quoted string or a literal."""


Token = Union[Atom, String, list]  # list of Token


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


def tokenize(pieces: list[bytes | bytearray]) -> list[Token]:
    """
    Split a command into tokens.  C{pieces} alternates text (C{bytes}) and
    literal contents (C{bytearray}, taken whole as one L{String}).

    @raise ParseError: unbalanced quotes or parentheses, bad escapes, stray
        specials.
    """
    stack: list[list[Token]] = [[]]
    for piece in pieces:
        if isinstance(piece, bytearray):
            stack[-1].append(String(bytes(piece)))
            continue
        _scan(bytes(piece), stack)
    if len(stack) != 1:
        raise ParseError("unbalanced parentheses")
    return stack[0]


def _scan(piece: bytes, stack: list[list[Token]]) -> None:
    i, n = 0, len(piece)
    while i < n:
        c = piece[i]
        if c == 0x20:
            i += 1
        elif c == 0x28:  # (
            if len(stack) > MAX_LIST_DEPTH:
                raise ParseError(f"parentheses nested too deep (more than {MAX_LIST_DEPTH} levels)")
            new: list[Token] = []
            stack[-1].append(new)
            stack.append(new)
            i += 1
        elif c == 0x29:  # )
            if len(stack) == 1:
                raise ParseError("unbalanced parentheses")
            stack.pop()
            i += 1
        elif c == 0x22:
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
            stack[-1].append(String(bytes(out)))
        else:
            start = i
            while i < n and piece[i] not in _NOT_ATOM:
                if piece[i] == 0x5B:  # [ ... ] may hold anything but CR LF
                    end = piece.find(b"]", i)
                    if end < 0:
                        raise ParseError("unterminated [")
                    i = end
                i += 1
            if i == start:
                raise ParseError("unexpected character")
            stack[-1].append(Atom(piece[start:i]))


# -- sequence sets (RFC 3501 section 9, sequence-set) -----------------------

_NUMBER = re.compile(rb"[1-9][0-9]{0,9}\Z")

#: Larger than any sequence number or UID (32 bits).
_AFTER_ANY = 1 << 32

#: A range; C{None} stands for C{*}.
Range = tuple[int | None, int | None]


def parse_sequence_set(text: bytes) -> list[Range]:
    """
    C{b"1:3,5,7:*"} -> C{[(1, 3), (5, 5), (7, None)]}.

    @raise ParseError: for anything else.
    """
    if not isinstance(text, Atom) and isinstance(text, (String, list)):
        raise ParseError("invalid sequence set")
    ranges: list[Range] = []
    for item in bytes(text).split(b","):
        ends = item.split(b":")
        if len(ends) > 2:
            raise ParseError("invalid sequence set")
        values = [_seq_number(e) for e in ends]
        ranges.append((values[0], values[-1]))
    return ranges


def _seq_number(text: bytes) -> int | None:
    if text == b"*":
        return None
    if not _NUMBER.match(text) or int(text) > 0xFFFFFFFF:
        raise ParseError("invalid sequence set")
    return int(text)


def resolve(ranges: list[Range], largest: int) -> list[tuple[int, int]]:
    """
    The ranges as C{(low, high)} with C{*} replaced by C{largest} (RFC 3501
    section 9: C{*} is the largest number in use; C{3:1} is C{1:3}),
    sorted and merged: overlapping or adjacent ranges become one, so that
    L{contains} can bisect.
    """
    spans = []
    for a, b in ranges:
        lo = largest if a is None else a
        hi = largest if b is None else b
        spans.append((min(lo, hi), max(lo, hi)))
    spans.sort()
    out: list[tuple[int, int]] = []
    for lo, hi in spans:
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def contains(resolved: list[tuple[int, int]], value: int) -> bool:
    """Is C{value} in a set from L{resolve}?  In time logarithmic in the
    number of ranges: SEARCH asks this for every message of the folder."""
    i = bisect_right(resolved, (value, _AFTER_ANY)) - 1
    return i >= 0 and resolved[i][0] <= value <= resolved[i][1]


def format_set(values: list[int]) -> str:
    """C{[1, 2, 3, 7]} -> C{"1:3,7"}, keeping the order (for COPYUID)."""
    out: list[str] = []
    start = prev = None
    for v in values:
        if prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = v
    if start is not None:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)
