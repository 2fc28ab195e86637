# -*- test-case-name: tests.test_imap_mailboxes -*-
"""
How a failed command is answered: L{No} for a refusal, L{ParseError} (BAD)
for a malformed command, L{BadSequence} (BAD, not counted toward the
bad-command limit) for message numbers the client's view lacks, and the
store's errors mapped to RFC 5530 response codes.
"""

from __future__ import annotations

from gateway.imap.parser import ParseError
from gateway.store.model import (
    FolderExists,
    InvalidFolderName,
    NoSuchFolder,
    QuotaExceeded,
    StoreError,
)

Bad = ParseError


class BadSequence(ParseError):
    """
    A well-formed command naming message sequence numbers beyond the
    number of messages, C{*} in an empty mailbox included: BAD, as RFC 3501
    and RFC 9051 (section 9, C{seq-number}) and Dovecot answer, but not
    counted toward C{max_bad_commands}.  It is no garbage: a client
    repeats C{FETCH 1:*} on empty folders all day, and one that pipelines
    a command after EXPUNGE names numbers it has not yet seen go away.
    """

    counted = False


class No(Exception):
    """The command failed; the text (with its response code) is client-safe."""


def store_refusal(error: StoreError, trycreate: bool = False) -> str:
    """The text of the NO reply for a store error (RFC 5530 codes)."""
    if isinstance(error, NoSuchFolder):
        text = ("[TRYCREATE] " if trycreate else "[NONEXISTENT] ") + error.text
    elif isinstance(error, FolderExists):
        text = "[ALREADYEXISTS] " + error.text
    elif isinstance(error, InvalidFolderName):
        text = "[CANNOT] " + error.text
    elif isinstance(error, QuotaExceeded):
        text = "[OVERQUOTA] " + error.text
    elif error.temporary:
        text = "[UNAVAILABLE] " + error.text
    else:
        text = error.text
    return ascii_text(text)


def ascii_text(text: str) -> str:
    """
    C{text} fit for a response: RFC 3501 section 9 allows printable
    US-ASCII only (C{TEXT-CHAR}), and a store error may quote a folder
    name in any script: other characters become Python escapes
    (C{\\xe9}), which keep the name recognisable.
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii")
                   for c in text)
