"""
IMAP IDLE (RFC 2177) over the Maildir store while the account's index is
closed for idleness (issue 7: 10,000 IDLE clients of 10,000 users): the
client still hears of deliveries, of other sessions' changes and of what
other programs do to the Maildir.  What the idle account costs meanwhile
is tested in L{tests.test_store_idle}.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from gateway.imap.protocol import IMAPFactory
from gateway.store.maildir import MaildirStore
from tests.imap_support import ALICE, SIMPLE, send
from tests.test_protocols import connect, lines
from tests.test_store_contract import synchronous

IDLE = 30.0  # the store's default index_idle


class IdleOverMaildirTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000_000)
        self.root = FilePath(self.mktemp()).path
        self.store = MaildirStore(self.root, run_in_thread=synchronous, clock=self.clock,
                                  hostname="test.example")
        self.addCleanup(self.store.close)
        self.proto, self.t = connect(IMAPFactory, "imap", tls="implicit", clock=self.clock)
        self.proto.store = self.store  # instead of connect's MemoryStore
        self.proto.handshakeCompleted()
        self.store.deliver([ALICE], SIMPLE)
        self.inbox = os.path.join(self.root, "example.edu", "alice")
        self.assertEqual(send(self.proto, self.t, b'L LOGIN alice@example.edu "correct horse"'
                              )[-1][:4], b"L OK")
        self.assertEqual(send(self.proto, self.t, b"S SELECT INBOX")[-1][:4], b"S OK")
        self.assertEqual(send(self.proto, self.t, b"I IDLE"), [b"+ idling"])
        # The directories' mtimes settle (see gateway.store.folder), a tick
        # records them, and the account idles until its index is closed.
        past = time.time_ns() - 100 * 10**9
        for sub in ("new", "cur"):
            os.utime(os.path.join(self.inbox, sub), ns=(past, past))
        self.clock.advance(1)
        self.clock.advance(IDLE)
        self.assertTrue(self.index().suspended)
        self.assertEqual(lines(self.t), [])

    def index(self) -> Any:
        return self.store._accounts[ALICE].index

    def test_delivery(self) -> None:
        self.store.deliver([ALICE], SIMPLE)
        self.assertEqual(lines(self.t), [b"* 2 EXISTS", b"* 2 RECENT"])

    def test_another_session_changes_flags(self) -> None:
        other = self.successResultOf(self.store.open_folder(ALICE, "INBOX"))
        self.successResultOf(other.set_flags([1], ["\\Flagged", "$Work"], "add"))
        self.assertEqual(lines(self.t), [b"* 1 FETCH (FLAGS ($Work \\Flagged \\Recent))"])
        self.successResultOf(other.set_flags([1], ["\\Deleted"], "add"))
        lines(self.t)
        self.successResultOf(other.expunge())
        self.assertEqual(lines(self.t), [b"* 1 EXPUNGE"])

    def test_another_program_delivers(self) -> None:
        with open(os.path.join(self.inbox, "new", "external.1"), "wb") as f:
            f.write(b"Subject: from outside\r\n\r\nbody\r\n")
        self.assertEqual(lines(self.t), [])
        self.clock.advance(1)  # the store's next tick
        self.assertEqual(lines(self.t), [b"* 2 EXISTS", b"* 2 RECENT"])

    def test_another_program_expunges(self) -> None:
        [name] = os.listdir(os.path.join(self.inbox, "cur"))
        os.unlink(os.path.join(self.inbox, "cur", name))
        self.clock.advance(1)
        self.assertEqual(lines(self.t), [b"* 1 EXPUNGE"])

    def test_done(self) -> None:
        self.assertEqual(send(self.proto, self.t, b"DONE"), [b"I OK IDLE terminated"])
