"""
POP3 read-ahead of pipelined RETRs and its flow control
(L{gateway.pop3.readahead}, L{gateway.pop3.transfer.FlowGate}), and the
stores' L{IFolderSession.read_messages} it rests on.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from gateway.pop3.maildrop import Maildrop
from gateway.pop3.protocol import SMALL_MESSAGE, POP3Factory
from gateway.pop3.readahead import READ_AHEAD, ReadAhead
from gateway.store.maildir import MaildirStore
from gateway.testing import MemoryStore
from tests.support import TLSStringTransport
from tests.test_pop3_transaction import send
from tests.test_protocols import connect, lines
from tests.test_store_contract import synchronous

BOB = "bob@example.edu"


def message(i: int, size: int = 2000) -> bytes:
    head = b"Subject: %d\r\n\r\n.dot\r\n" % i
    return head + b"x" * (size - len(head) - 2) + b"\r\n"


def wire(i: int, size: int = 2000) -> bytes:
    """The RETR reply for L{message}."""
    return (b"+OK %d octets\r\n" % size
            + message(i, size).replace(b"\r\n.dot", b"\r\n..dot") + b".\r\n")



def login_bob(clock: Clock, store: Any, transport: Any = None) -> tuple[Any, Any]:
    """A POP3S connection logged in as bob over C{store}; over C{transport}
    if given (the same connection over a transport with flow control)."""
    proto, t = connect(POP3Factory, "pop3", tls="implicit", clock=clock)
    if transport is not None:
        proto.transport = t = transport
    proto.context.extras["store"] = store
    proto.handshakeCompleted()
    lines(t)
    proto.dataReceived(b"USER bob@example.edu\r\nPASS battery staple\r\n")
    reply = lines(t)
    assert reply[-1].startswith(b"+OK logged in"), reply
    return proto, t

class SessionSpy:
    """Records the reads a session is asked for, and does them."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.calls: list[tuple[str, list[int]]] = []

    def read_messages(self, uids: list[int]) -> Any:
        self.calls.append(("read_messages", list(uids)))
        return self.session.read_messages(uids)

    def read_message(self, uid: int) -> Any:
        self.calls.append(("read_message", [uid]))
        return self.session.read_message(uid)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


class PacedTransport(TLSStringTransport):
    """
    Flow control like Twisted's TCP transport: the registered streaming
    producer is paused when more than C{threshold} octets wait, and resumed
    once the client has read them all (L{read}).
    """

    threshold = 8192

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.paused_producer = False
        self.most = 0  # the largest backlog seen

    def write(self, data: bytes) -> None:
        super().write(data)
        self.most = max(self.most, len(self.value()))
        if (self.producer is not None and self.streaming
                and len(self.value()) > self.threshold and not self.paused_producer):
            self.paused_producer = True
            self.producer.pauseProducing()

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def read(self) -> bytes:
        data = self.value()
        self.clear()
        if self.paused_producer and self.producer is not None:
            self.paused_producer = False
            self.producer.resumeProducing()
        return data


class ReadAheadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(clock=self.clock)
        for i in range(1, 41):
            self.successResultOf(self.store.deliver([BOB], message(i)))

    def login(self, transport: Any = None) -> tuple[Any, Any, SessionSpy]:
        proto, t = login_bob(self.clock, self.store, transport)
        spy = SessionSpy(proto.maildrop.session)
        proto.maildrop.session = spy
        return proto, t, spy

    def test_pipelined_retrs_read_in_one_call(self) -> None:
        proto, t, spy = self.login()
        proto.dataReceived(b"".join(b"RETR %d\r\n" % i for i in range(1, 11)) + b"NOOP\r\n")
        self.assertEqual(t.value(), b"".join(wire(i) for i in range(1, 11)) + b"+OK\r\n")
        self.assertEqual(spy.calls, [("read_messages", list(range(1, 11)))])

    def test_batches_bounded(self) -> None:
        proto, t, spy = self.login()
        proto.read_ahead.budget = 5000  # two more 2000-octet messages per batch
        proto.dataReceived(b"".join(b"RETR %d\r\n" % i for i in range(1, 8)))
        self.assertEqual(t.value(), b"".join(wire(i) for i in range(1, 8)))
        self.assertEqual([uids for _, uids in spy.calls], [[1, 2, 3], [4, 5, 6], [7]])

    def test_only_retrs_read_ahead_and_deleted_not_sent(self) -> None:
        proto, t, spy = self.login()
        proto.dataReceived(b"RETR 1\r\nDELE 3\r\nTOP 2 0\r\nRETR 3\r\nretr 2\r\nRETR 99\r\n"
                           b"RETR x\r\n")
        replies = t.value()
        self.assertTrue(replies.startswith(wire(1) + b"+OK message 3 deleted\r\n"))
        self.assertIn(b"-ERR no such message\r\n" + wire(2), replies)
        self.assertTrue(replies.endswith(b"-ERR no such message\r\n" * 2))
        # RETR 1 read 3 and 2 with it (3 was live then); TOP read alone.
        self.assertEqual(spy.calls, [("read_messages", [1, 3, 2]), ("read_message", [2])])

    def test_large_messages_streamed_between(self) -> None:
        big = message(0, SMALL_MESSAGE + 10)
        self.successResultOf(self.store.deliver([BOB], big))  # message 41
        proto, t, spy = self.login()
        send(proto, t, b"RETR 1\r\nRETR 41\r\nRETR 2\r\n")
        self.assertEqual(t.value(), wire(1) + wire(0, SMALL_MESSAGE + 10) + wire(2))
        self.assertEqual(spy.calls, [("read_messages", [1, 2])])
        self.assertIs(t.producer, proto.flow)  # the gate is back after streaming

    def test_slow_client_stops_the_reading(self) -> None:
        """
        A client that pipelines every RETR and does not read: the server
        stops once the transport holds what one batch wrote, and goes on as
        the client reads, in order.
        """
        t = PacedTransport()
        proto, t, spy = self.login(t)
        proto.read_ahead.budget = 10_000
        proto.dataReceived(b"".join(b"RETR %d\r\n" % i for i in range(1, 41)))
        self.assertEqual(len(spy.calls), 1)
        self.assertLessEqual(t.most, 10_000 + 2 * 2100)
        received = b""
        for _ in range(100):
            received += t.read()
            if received.count(b"\r\n.\r\n") == 40:
                break
        self.assertEqual(received, b"".join(wire(i) for i in range(1, 41)))
        self.assertLessEqual(t.most, 10_000 + 2 * 2100)
        # Each batch held the requested message and at most 10,000 octets more.
        self.assertLessEqual(max(len(uids) for _, uids in spy.calls), 1 + 10_000 // 2000)

    def test_close_while_waiting_for_the_client(self) -> None:
        t = PacedTransport()
        proto, t, spy = self.login(t)
        proto.read_ahead.budget = 4000
        proto.dataReceived(b"".join(b"RETR %d\r\n" % i for i in range(1, 20)))
        calls = len(spy.calls)
        proto.connectionLost(None)
        proto.flow.stopProducing()  # as the transport does when it closes
        self.assertEqual(len(spy.calls), calls)
        self.assertEqual(self.flushLoggedErrors(), [])
        # The lock is free again.
        other, t2, _ = self.login()
        self.assertEqual(other.state, "TRANSACTION")

    def test_idle_timeout_while_waiting_for_the_client(self) -> None:
        t = PacedTransport()
        proto, t, spy = self.login(t)
        proto.read_ahead.budget = 4000
        proto.dataReceived(b"".join(b"RETR %d\r\n" % i for i in range(1, 20)))
        calls = len(spy.calls)
        self.clock.advance(proto.context.limits.idle_timeout_pop3)
        self.assertTrue(t.disconnecting)
        self.assertIsNone(t.producer)  # or a TLS transport would never close
        t.read()
        self.assertEqual(len(spy.calls), calls)  # nothing more read
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_quit_unregisters_the_gate(self) -> None:
        t = PacedTransport()
        proto, t, _ = self.login(t)
        self.assertIs(t.producer, proto.flow)
        proto.dataReceived(b"RETR 1\r\nRETR 2\r\nRETR 3\r\nRETR 4\r\nRETR 5\r\nQUIT\r\n")
        received = b""
        for _ in range(20):
            received += t.read()
        self.assertTrue(received.endswith(wire(5) + b"+OK bye\r\n"))
        self.assertIsNone(t.producer)  # or a TLS transport would never close
        self.assertTrue(t.disconnecting)


class PlanTests(SynchronousTestCase):
    def setUp(self) -> None:
        store = MemoryStore(clock=Clock())
        for size in (100, 200, SMALL_MESSAGE + 1, 300):
            self.successResultOf(store.deliver([BOB], b"x" * (size - 2) + b"\r\n"))
        self.maildrop = self.successResultOf(Maildrop.open(store, BOB))

    def test_default_budget(self) -> None:
        self.assertEqual(ReadAhead(self.maildrop, SMALL_MESSAGE).budget, READ_AHEAD)

    def test_skips_large_unknown_repeated_deleted(self) -> None:
        self.maildrop.deleted.add(2)
        ahead = ReadAhead(self.maildrop, SMALL_MESSAGE)
        self.assertEqual(ahead.plan(1, [1, 2, 3, 9, 0, 4, 4]), [1, 4])

    def test_budget_stops_at_the_first_that_does_not_fit(self) -> None:
        ahead = ReadAhead(self.maildrop, SMALL_MESSAGE, budget=250)
        self.assertEqual(ahead.plan(4, [1, 2, 1]), [4, 1])  # 1 fits, 2 would pass 250

    def test_read_keeps_the_others_once(self) -> None:
        ahead = ReadAhead(self.maildrop, SMALL_MESSAGE)
        self.assertEqual(len(self.successResultOf(ahead.read(1, iter([2, 4])))), 100)
        self.assertEqual(len(ahead.take(4) or b""), 300)
        self.assertIsNone(ahead.take(4))
        self.successResultOf(ahead.read(1, []))  # a new batch replaces the old
        self.assertIsNone(ahead.take(2))


class ReadMessagesTests(SynchronousTestCase):
    """L{IFolderSession.read_messages} of both stores."""

    def stores(self) -> list[Any]:
        clock = Clock()
        clock.advance(1_800_000_000)
        root = FilePath(self.mktemp())
        maildir = MaildirStore(root.path, run_in_thread=synchronous, clock=clock,
                               hostname="test.example")
        self.addCleanup(maildir.close)
        return [MemoryStore(clock=clock), maildir]

    def test_same_as_read_message(self) -> None:
        for store in self.stores():
            for i in range(3):
                self.successResultOf(store.deliver([BOB], message(i, 500 + i)))
            session = self.successResultOf(store.open_folder(BOB, "INBOX"))
            uids = [m.uid for m in session.messages()]
            found = self.successResultOf(session.read_messages(uids + [999]))
            self.assertEqual(found, {uid: self.successResultOf(session.read_message(uid))
                                     for uid in uids})
            self.assertEqual(self.successResultOf(session.read_messages([])), {})

    def test_moved_file_left_to_read_message(self) -> None:
        store = self.stores()[1]
        self.successResultOf(store.deliver([BOB], message(1)))
        self.successResultOf(store.deliver([BOB], message(2)))
        session = self.successResultOf(store.open_folder(BOB, "INBOX"))
        first, second = (m.uid for m in session.messages())
        # Another program renames the first message's file (a flag change).
        cur = next(os.path.join(d, "cur") for d, subdirs, _ in os.walk(store.root)
                   if "cur" in subdirs and os.listdir(os.path.join(d, "cur")))
        name = sorted(os.listdir(cur))[0]
        os.rename(os.path.join(cur, name), os.path.join(cur, name.split(":")[0] + ":2,F"))
        found = self.successResultOf(session.read_messages([first, second]))
        self.assertEqual(list(found), [second])
        self.assertEqual(self.successResultOf(session.read_message(first)), message(1))
