"""
Helpers shared by the POP3 review tests: bob's mailbox as a new session
sees it, a probe of the POP3 lock, and a worker-thread runner that can
hold its calls (a read still in the worker thread).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

BOB = "bob@example.edu"


def stored_messages(test: Any, store: Any) -> list[Any]:
    """The messages of bob's INBOX in C{store}, as a new session sees them."""
    session = test.successResultOf(store.open_folder(BOB, "INBOX"))
    try:
        return list(session.messages())
    finally:
        session.close()


def lock_is_free(store: Any, account: str = BOB) -> bool:
    """Can the POP3 lock of C{account} be taken now?  (It is given back at once.)"""
    result: list[Any] = []
    store.lock_pop3(account).addBoth(result.append)
    if result and callable(result[0]):
        result[0]()
        return True
    return False


class HeldThreads:
    """
    A C{run_in_thread} for L{MaildirStore}: runs at once, or, while
    L{hold} is set, keeps the calls until L{release} (a read that is
    still in the worker thread).
    """

    def __init__(self) -> None:
        self.hold = False
        self.held: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        if not self.hold:
            return maybeDeferred(f, *args, **kw)
        d: Deferred[Any] = Deferred()
        self.held.append((d, lambda: f(*args, **kw), ()))
        return d

    def release(self) -> None:
        self.hold = False
        while self.held:
            d, f, _ = self.held.pop(0)
            maybeDeferred(f).chainDeferred(d)
