# -*- test-case-name: tests.test_auth_cache -*-
"""
An optional cache of recently verified passwords ([auth] cache_ttl, off by
default), so that a client logging in again and again with the same
password (a mail client polling, a submission client sending one message
per connection) does not pay the key derivation each time: 4096 rounds
of PBKDF2 cost about 1.6 ms of CPU per login, against microseconds here.

A security trade-off, hence off unless configured:

  - what is kept is a keyed digest, C{HMAC-SHA-256(key, account NUL
    password)}, with a random key drawn at start and held only in this
    process's memory: no password and nothing that can be checked outside
    the process;
  - only successes are kept, for C{ttl} seconds of the injected clock,
    at most C{max_entries} of them (the oldest go first);
  - the whole cache is forgotten as soon as the users table changes (a
    password changed, an account disabled or removed, a reload of the
    users file), so it never admits a password the file no longer holds;
  - but for C{ttl} seconds, someone able to read this process's memory
    could test guesses against the digests with one HMAC each instead of
    4096 rounds of PBKDF2; and a cached login is answered sooner than one
    that is computed (it can only be the right password, so this tells
    nothing a successful login does not).

Failures are never cached: a wrong password always costs the full
derivation, and unknown accounts the same as known ones.
"""

from __future__ import annotations

import hmac
import os
from collections import OrderedDict
from typing import Any

from twisted.internet.interfaces import IReactorTime


class PasswordCache:
    """
    @param ttl: seconds an entry stays valid.
    @param clock: the time of the entries.
    @param max_entries: the most entries kept.
    """

    def __init__(self, ttl: float, clock: IReactorTime, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, float] = OrderedDict()  # digest -> expiry
        self._table: Any = None
        self.hits = 0

    def _digest(self, account: str, password: bytes) -> bytes:
        return hmac.digest(self._key, account.encode("utf-8") + b"\0" + password, "sha256")

    def _same_table(self, table: object) -> bool:
        """Forget everything when the users table is not the one the
        entries were made under."""
        if table is not self._table:
            self._entries.clear()
            self._table = table
            return False
        return True

    def verified(self, table: object, account: str, password: bytes) -> bool:
        """Was C{password} verified for C{account} under this C{table}, less
        than C{ttl} seconds ago?"""
        if not self._same_table(table):
            return False
        digest = self._digest(account, password)
        expiry = self._entries.get(digest)
        if expiry is None:
            return False
        if expiry <= self._clock.seconds():
            del self._entries[digest]
            return False
        self.hits += 1
        return True

    def remember(self, table: object, account: str, password: bytes) -> None:
        """Keep a success, verified under C{table} (ignored if the table has
        changed since)."""
        if self._table is not None and table is not self._table:
            return
        self._table = table
        digest = self._digest(account, password)
        self._entries.pop(digest, None)
        self._entries[digest] = self._clock.seconds() + self.ttl
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
