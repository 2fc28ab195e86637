# -*- test-case-name: tests.test_imap_mime -*-
"""
RFC 5322 address lists as the IMAP ENVELOPE shows them (RFC 3501 section
7.4.2): each address is C{(name, route, mailbox, host)}, and a group is a
start marker C{(NIL NIL group-name NIL)} and an end marker
C{(NIL NIL NIL NIL)} around its members.

The parser is lenient and total: any header text gives a list of
addresses, never an exception.  Like Dovecot (C{message-address.c}), text
is kept as sent (encoded words are not decoded: that is the client's job),
quoted strings are unquoted, an address-spec's comment becomes its name,
and a missing local part or domain is filled in with C{MISSING_MAILBOX} or
C{MISSING_DOMAIN}: a NIL host would read as a group marker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"

_SPECIALS = "()<>@,;:\\\".[]"
# An encoded word is one atom even when a (non-conforming) sender put
# specials in it (RFC 2047 section 5 forbids them in phrases; mailers differ).
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_ATOM = re.compile(r"[^\s()<>@,;:\\\".\[\]]+")
#: A header with more addresses than this is cut short (bounds the work).
MAX_ADDRESSES = 1000


@dataclass(frozen=True)
class Address:
    name: str | None = None
    route: str | None = None
    mailbox: str | None = None
    host: str | None = None


def group_start(name: str) -> Address:
    return Address(mailbox=name)


GROUP_END = Address()


# -- tokens --------------------------------------------------------------------

@dataclass(frozen=True)
class _Token:
    kind: str  # "atom", "quoted", "literal", "comment" or "special"
    text: str


def tokenize(value: str) -> list[_Token]:
    """RFC 5322 section 3.2 lexical tokens; unterminated quoted strings,
    comments and literals end at the end of the text."""
    tokens: list[_Token] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            i += 1
        elif c == '"':
            text, i = _quoted(value, i + 1, '"')
            tokens.append(_Token("quoted", text))
        elif c == "(":
            depth, i = 1, i + 1
            out = []
            while i < n and depth:
                if value[i] == "\\" and i + 1 < n:
                    out.append(value[i + 1])
                    i += 2
                    continue
                if value[i] == "(":
                    depth += 1
                elif value[i] == ")":
                    depth -= 1
                    if not depth:
                        break
                out.append(value[i])
                i += 1
            tokens.append(_Token("comment", "".join(out).strip()))
            i += 1
        elif c == "[":
            end = value.find("]", i)
            end = n if end < 0 else end + 1
            tokens.append(_Token("literal", value[i:end]))
            i = end
        elif c in _SPECIALS:
            tokens.append(_Token("special", c))
            i += 1
        else:
            match = _ENCODED_WORD.match(value, i) or _ATOM.match(value, i)
            assert match is not None  # c is neither space nor special
            tokens.append(_Token("atom", match.group()))
            i = match.end()
    return tokens


def _quoted(value: str, i: int, close: str) -> tuple[str, int]:
    out = []
    n = len(value)
    while i < n and value[i] != close:
        if value[i] == "\\" and i + 1 < n:
            i += 1
        if value[i] not in "\r\n":
            out.append(value[i])
        i += 1
    return "".join(out), i + 1


# -- address lists -----------------------------------------------------------------

def parse_address_list(value: str) -> list[Address]:
    """The addresses of a header value (already unfolded or not), with
    group markers; an empty list when there are none."""
    out: list[Address] = []
    current: list[_Token] = []
    in_group = False
    angle = False
    for token in tokenize(value):
        if len(out) >= MAX_ADDRESSES:
            break
        if token.kind == "special":
            c = token.text
            if c == "<":
                angle = True
            elif c == ">":
                angle = False
            elif c == ":" and not angle and not in_group and _is_phrase(current):
                out.append(group_start(_phrase(current) or ""))
                in_group, current = True, []
                continue
            elif c == "," and not angle:
                _add(out, current)
                current = []
                continue
            elif c == ";" and not angle:
                _add(out, current)
                current = []
                if in_group:
                    out.append(GROUP_END)
                    in_group = False
                continue
        current.append(token)
    _add(out, current)
    if in_group:
        out.append(GROUP_END)
    return out


def _is_phrase(tokens: list[_Token]) -> bool:
    return all(t.kind in ("atom", "quoted", "comment") or (t.kind == "special" and t.text == ".")
               for t in tokens)


def _phrase(tokens: list[_Token]) -> str | None:
    """Words joined by one space (RFC 5322 section 3.2.5; obs-phrase
    allows dots)."""
    words: list[str] = []
    for t in tokens:
        if t.kind in ("atom", "quoted"):
            words.append(t.text)
        elif t.kind == "special" and t.text == ".":
            if words:
                words[-1] += "."
            else:
                words.append(".")
    text = " ".join(words)
    return text or None


def _add(out: list[Address], tokens: list[_Token]) -> None:
    if not any(t.kind != "comment" for t in tokens):
        return  # empty list element (RFC 5322 section 4.4 obs-addr-list)
    if any(t.kind == "special" and t.text == "<" for t in tokens):
        out.append(_name_addr(tokens))
    else:
        out.append(_addr_spec(tokens, comment_name=True))


def _name_addr(tokens: list[_Token]) -> Address:
    lt = next(i for i, t in enumerate(tokens) if t.kind == "special" and t.text == "<")
    name = _phrase(tokens[:lt])
    inner = tokens[lt + 1:]
    gt = next((i for i, t in enumerate(inner) if t.kind == "special" and t.text == ">"),
              len(inner))
    inner = inner[:gt]
    route = None
    colon = next((i for i, t in enumerate(inner) if t.kind == "special" and t.text == ":"),
                 None)
    if colon is not None and inner[:1] and inner[0].text == "@":
        route = "".join(t.text for t in inner[:colon] if t.kind != "comment") or None
        inner = inner[colon + 1:]
    spec = _addr_spec(inner, comment_name=False)
    return Address(name, route, spec.mailbox, spec.host)


def _addr_spec(tokens: list[_Token], comment_name: bool) -> Address:
    at = next((i for i, t in enumerate(tokens) if t.kind == "special" and t.text == "@"), None)
    local = tokens if at is None else tokens[:at]
    domain = [] if at is None else tokens[at + 1:]
    mailbox = "".join(t.text for t in local if t.kind in ("atom", "quoted", "special"))
    host = "".join(t.text for t in domain if t.kind in ("atom", "literal", "special"))
    name = None
    if comment_name:
        comments = [t.text for t in tokens if t.kind == "comment" and t.text]
        name = comments[-1] if comments else None
    return Address(name, None, mailbox or MISSING_MAILBOX, host or MISSING_DOMAIN)
