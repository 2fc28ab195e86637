# -*- test-case-name: tests.test_imap_mailboxes -*-
"""
How a failed command is answered: L{No} for a refusal, L{ParseError} (BAD)
for a malformed command, and the store's errors mapped to RFC 5530
response codes.
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


class No(Exception):
    """The command failed; the text (with its response code) is client-safe."""


def store_refusal(error: StoreError, trycreate: bool = False) -> str:
    """The text of the NO reply for a store error (RFC 5530 codes)."""
    if isinstance(error, NoSuchFolder):
        return ("[TRYCREATE] " if trycreate else "[NONEXISTENT] ") + error.text
    if isinstance(error, FolderExists):
        return "[ALREADYEXISTS] " + error.text
    if isinstance(error, InvalidFolderName):
        return "[CANNOT] " + error.text
    if isinstance(error, QuotaExceeded):
        return "[OVERQUOTA] " + error.text
    if error.temporary:
        return "[UNAVAILABLE] " + error.text
    return error.text
