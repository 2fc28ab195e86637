# -*- test-case-name: tests.test_pop3_transaction,tests.test_pop3_commands_review -*-
"""
The POP3 maildrop of one session (RFC 1939 sections 5 and 6): the account's
INBOX as it was at login, under the store's exclusive POP3 lock, with the
deletions that take effect only at QUIT.

It talks to the store only through L{IMailStore} and L{IFolderSession}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from gateway.interfaces import IFolderSession, IMailStore
from gateway.store.model import MessageInfo

_log = Logger()


class Maildrop:
    """A locked, fixed view of an INBOX.  Message numbers start at 1."""

    def __init__(self, session: IFolderSession, release: Callable[[], Any]) -> None:
        self.session = session
        self._release: Callable[[], Any] | None = release
        self.messages: list[MessageInfo] = list(session.messages())
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()  # message numbers sent whole (RETR)

    @classmethod
    def open(cls, store: IMailStore, account: str) -> Deferred[Maildrop]:
        """Take the lock, then open the INBOX; the lock is released on failure."""
        d: Deferred[Any] = store.lock_pop3(account)

        def locked(release: Callable[[], Any]) -> Deferred[Maildrop]:
            opened: Deferred[Any] = store.open_folder(account, "INBOX")

            def failed(failure: Any) -> Any:
                release()
                return failure

            return opened.addCallbacks(lambda session: cls(session, release), failed)

        return d.addCallback(locked)

    def get(self, number: int) -> MessageInfo | None:
        """The message numbered C{number}, unless out of range or deleted."""
        if 1 <= number <= len(self.messages) and number not in self.deleted:
            return self.messages[number - 1]
        return None

    def live(self) -> list[tuple[int, MessageInfo]]:
        return [(i, m) for i, m in enumerate(self.messages, 1) if i not in self.deleted]

    def commit(self) -> Deferred[Any]:
        """
        The UPDATE state: remove the deleted messages, all at once.

        @return: a L{Deferred}, failing (never raising) if the store does:
            the caller must still reach L{close}, which releases the lock.
        """
        uids = [self.messages[i - 1].uid for i in sorted(self.deleted)]
        if not uids:
            return succeed([])
        return maybeDeferred(self.session.delete, uids)

    def close(self) -> Deferred[None]:
        """
        Mark the retrieved messages \\Seen (once, at the end, as Dovecot
        does: one index write instead of one per RETR), end the session and
        release the lock.  Idempotent.
        """
        release, self._release = self._release, None
        if release is None:
            return succeed(None)
        seen = [self.messages[i - 1].uid for i in sorted(self.retrieved - self.deleted)
                if "\\Seen" not in self.messages[i - 1].flags]
        d: Deferred[Any] = succeed(None)
        if seen and not self.session.readonly:
            # (maybeDeferred: a store that raises must not keep the lock,
            # taken out of self._release above, for ever.)
            d = maybeDeferred(self.session.set_flags, seen, ["\\Seen"], "add")
            d.addErrback(lambda f: _log.failure("marking retrieved messages seen", f))

        def finish(_: Any) -> None:
            try:
                self.session.close()
            finally:
                release()

        return d.addBoth(finish)
