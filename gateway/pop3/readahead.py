# -*- test-case-name: tests.test_pop3_readahead,tests.test_pop3_readahead_review -*-
"""
Reading pipelined RETRs ahead (RFC 2449 PIPELINING): when a client sends
many RETR commands at once, the messages they name are read in one call of
the store's thread (L{IFolderSession.read_messages}) instead of one thread
hop per message, and the later RETRs are answered from memory.

Bounded: one batch at a time, at most L{READ_AHEAD} octets of messages read
before their RETR was reached (the requested message itself is always
read); a new batch replaces what is left of the previous one.  Flow control
is the protocol's: it starts a batch only once the transport has sent what
the previous one wrote (L{gateway.pop3.transfer.FlowGate}), so a client that
does not read stops the reading ahead, not the other way round.

Message files are never read on the reactor thread here; only which
messages to read is decided here, from the maildrop's fixed view.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone

from gateway.pop3.maildrop import Maildrop

#: Octets of messages read before their RETR is reached, per connection (a
#: constant, not a setting: it trades memory for thread hops, and the trade
#: flattens early).  Measured with bench/pop3_load.py's mailbox (32 KB
#: messages), server CPU per message: 110 us with 64 KiB, 80 us with 256 KiB
#: and the same with 1 MiB.  A session holds it only while its client
#: pipelines RETRs and keeps reading, plus what the transport has not sent
#: yet, which is never more than one batch.
READ_AHEAD = 256 * 1024

#: Pipelined commands looked at to choose a batch.  Without a bound, a client
#: pipelining thousands of RETRs of one message (each one a new batch, the
#: others skipped as repeats) made every RETR scan the whole buffer: 8,000
#: "RETR 1" lines (64 KB) cost 23 s of CPU.  128 covers a full batch of 2 KB
#: messages and keeps the scan below the cost of answering one RETR.
LOOK_AHEAD = 128


class ReadAhead:
    """
    The read-ahead of one POP3 session.

    @param small: messages larger than this are streamed, never read whole
        (L{gateway.pop3.protocol.SMALL_MESSAGE}), so never read ahead.
    """

    def __init__(self, maildrop: Maildrop, small: int, budget: int = READ_AHEAD) -> None:
        self.maildrop = maildrop
        self.small = small
        self.budget = budget
        self._cache: dict[int, bytes] = {}
        self.closed = False

    def take(self, number: int) -> bytes | None:
        """Message C{number} if it was read ahead (given out once)."""
        return self._cache.pop(number, None)

    def plan(self, number: int, upcoming: Iterable[int]) -> list[int]:
        """
        The messages to read in one call: C{number}, then the C{upcoming}
        ones (message numbers named by the RETRs already received), in
        order, skipping deleted, unknown, repeated and large ones, while
        their octets fit in the budget.
        """
        chosen = [number]
        seen = {number}
        total = 0
        for n in upcoming:
            info = self.maildrop.get(n)
            if info is None or n in seen or info.size > self.small:
                continue
            if total + info.size > self.budget:
                break
            chosen.append(n)
            seen.add(n)
            total += info.size
        return chosen

    def read(self, number: int, upcoming: Iterable[int]) -> Deferred[bytes]:
        """
        Read message C{number} and those of C{upcoming} that fit, in one
        worker call; the others wait in memory for their RETR.

        @return: L{Deferred} firing with message C{number}'s octets;
            errback as L{IFolderSession.read_message}.
        """
        numbers = self.plan(number, upcoming)
        self._cache.clear()  # one batch at a time
        messages = self.maildrop.messages
        uids = [messages[n - 1].uid for n in numbers]
        session = self.maildrop.session

        def got(found: dict[int, bytes]) -> Any:
            if self.closed:
                # The connection ended while the batch was read: nothing
                # of it is kept, and there is no one to answer.
                raise ConnectionDone("the session ended during the read")
            for n, uid in zip(numbers[1:], uids[1:]):
                data = found.get(uid)
                if data is not None:
                    self._cache[n] = data
            data = found.get(uids[0])
            if data is None:
                # Moved or gone: the single read takes the locked path or
                # says why.
                return session.read_message(uids[0])
            return data

        def batch_failed(failure: Any) -> Any:
            # One unreadable file (EACCES, EIO) fails the whole batch: read
            # the requested message alone, so that only its own RETR fails.
            if len(uids) == 1 or self.closed:
                return failure
            return session.read_message(uids[0])

        return session.read_messages(uids).addCallbacks(got, batch_failed)

    def clear(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        """The session ended: drop what was read, and the batch under way."""
        self.closed = True
        self._cache.clear()
