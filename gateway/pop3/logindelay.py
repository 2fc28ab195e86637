# -*- test-case-name: tests.test_pop3_logindelay -*-
"""
RFC 2449 section 6.5 LOGIN-DELAY: the least number of seconds between two
POP3 logins of one account (C{[limits] pop3_login_delay}; 0 = none).

The time of each account's last successful login is kept in memory, in one
L{LoginDelay} that every POP3 listener of the process shares; it is
forgotten on restart (a restart lets each account in once early, which is
harmless: the delay protects the server's load, not a secret).  Entries
older than the delay are dropped, so memory follows the accounts that
logged in within the last C{delay} seconds.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


class LoginDelay:
    """
    @param delay: seconds; 0 turns the check off.
    @param clock: where the time comes from (C{task.Clock} in tests).
    """

    def __init__(self, delay: float, clock: IReactorTime) -> None:
        self.delay = delay
        self.clock = clock
        self._last: dict[str, float] = {}
        self._prune_at = 1024  # entries; doubled after each prune

    def allowed(self, account: str) -> bool:
        """May C{account} log in now?"""
        if self.delay <= 0:
            return True
        last = self._last.get(account)
        now = self.clock.seconds()
        # A clock set back counts as "long enough ago".
        return last is None or not (last <= now < last + self.delay)

    def record(self, account: str) -> None:
        """C{account} has just logged in."""
        if self.delay <= 0:
            return
        now = self.clock.seconds()
        self._last[account] = now
        if len(self._last) >= self._prune_at:
            self._last = {a: t for a, t in self._last.items() if t <= now < t + self.delay}
            self._prune_at = max(1024, 2 * len(self._last))
