# -*- test-case-name: tests.test_store_model -*-
"""
Value types and errors of the mail store contract
(L{gateway.interfaces.IMailStore}).  Protocols import these; they never
import the store implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.errors import GatewayError

#: IMAP system flags and their Maildir info letters (Maildir spec, "info").
#: C{P} (passed) is kept as the keyword C{$Forwarded}.
SYSTEM_FLAGS = {
    "\\Seen": "S",
    "\\Answered": "R",
    "\\Flagged": "F",
    "\\Deleted": "T",
    "\\Draft": "D",
    "$Forwarded": "P",
}

#: The folders every new account gets, with their RFC 6154 special use.
DEFAULT_FOLDERS = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}

#: The hierarchy delimiter folder names use (Maildir++ stores "a.b" as ".a.b").
DELIMITER = "/"


@dataclass(frozen=True)
class MessageInfo:
    """
    What the index knows of one message, without opening its file.

    @ivar uid: the IMAP UID, stable for the folder's UIDVALIDITY.
    @ivar key: the Maildir unique name (the file name before C{":2,"});
        stable across flag changes and C{new/}->C{cur/} moves, so POP3 UIDL
        uses it.
    @ivar size: octets as stored (CRLF line ends, as sent to clients).
    @ivar flags: IMAP flag names (system flags and keywords).
    @ivar internal_date: POSIX seconds (IMAP INTERNALDATE).
    """

    uid: int
    key: str
    size: int
    flags: frozenset[str]
    internal_date: float


@dataclass(frozen=True)
class FolderInfo:
    """
    One folder of an account, for LIST.

    @ivar name: the full name with L{DELIMITER}, C{"INBOX"} for the inbox.
    @ivar special_use: C{"\\\\Sent"} etc. (RFC 6154) or C{None}.
    """

    name: str
    special_use: str | None = None
    subscribed: bool = False
    has_children: bool = False


@dataclass(frozen=True)
class FolderStatus:
    """The numbers of IMAP STATUS and SELECT."""

    messages: int
    recent: int
    unseen: int
    uidvalidity: int
    uidnext: int


@dataclass(frozen=True)
class Changes:
    """
    What changed in a folder since a session last looked.

    @ivar added: new messages, in UID order.
    @ivar expunged: UIDs that are gone, in UID order.
    @ivar flags: messages whose flags changed (their new info).
    """

    added: tuple[MessageInfo, ...] = ()
    expunged: tuple[int, ...] = ()
    flags: tuple[MessageInfo, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.expunged or self.flags)


@dataclass(frozen=True)
class Quota:
    """Per-account limits; C{None} is unlimited."""

    max_bytes: int | None = None
    max_messages: int | None = None


@dataclass(frozen=True)
class Usage:
    bytes: int = 0
    messages: int = 0


class StoreError(GatewayError):
    """A store operation failed; carries its SMTP meaning."""


class NoSuchFolder(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(550, "5.2.0", f"no such folder: {name}")
        self.name = name


class FolderExists(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(550, "5.2.0", f"folder already exists: {name}")
        self.name = name


class InvalidFolderName(StoreError):
    def __init__(self, name: str, why: str) -> None:
        super().__init__(550, "5.2.0", f"invalid folder name {name!r}: {why}")
        self.name = name


class NoSuchMessage(StoreError):
    def __init__(self, uid: int) -> None:
        super().__init__(550, "5.2.0", f"no such message: {uid}")
        self.uid = uid


class MailboxInUse(StoreError):
    """POP3's exclusive lock is held by another session (RFC 2449 IN-USE)."""

    def __init__(self, account: str) -> None:
        super().__init__(450, "4.2.1", "mailbox in use")
        self.account = account


class QuotaExceeded(StoreError):
    """
    The account is over quota.  Temporary (452 4.2.2) by default, as Postfix
    and Dovecot answer; permanent (552 5.2.2) when the message alone is
    larger than the quota.
    """

    def __init__(self, account: str, permanent: bool = False) -> None:
        if permanent:
            super().__init__(552, "5.2.2", "mailbox full: message larger than the quota")
        else:
            super().__init__(452, "4.2.2", "mailbox full, try again later")
        self.account = account


class NoSuchAccount(StoreError):
    def __init__(self, account: str) -> None:
        super().__init__(550, "5.1.1", "no such mailbox")
        self.account = account


@dataclass(frozen=True)
class DeliveryReport:
    """
    The outcome of one L{IMailStore.deliver} call, per recipient account.

    @ivar stored: the accounts whose copy is on disk (fsynced).
    @ivar refused: account -> the L{StoreError} that refused it.
    """

    stored: tuple[str, ...] = ()
    refused: dict[str, StoreError] = field(default_factory=dict)
