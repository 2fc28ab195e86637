"""POP3 TRANSACTION and UPDATE states over the store (RFC 1939, RFC 2449)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.pop3.protocol import POP3Factory
from gateway.pop3.transfer import MessageProducer
from gateway.testing import MemoryStore
from tests.test_protocols import connect, lines

ONE = b"Subject: one\r\n\r\nbody one\r\n.leading dot\r\n"
TWO = b"Subject: two\r\nX: y\r\n\r\nl1\r\nl2\r\nl3\r\n"


def send(proto: Any, t: Any, data: bytes) -> None:
    """Feed commands and drive the pull producers (large messages) as a real
    transport would; the flow gate, a push producer, stays registered."""
    proto.dataReceived(data)
    while isinstance(t.producer, MessageProducer):
        t.producer.resumeProducing()


class POP3TransactionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(clock=self.clock)
        report = self.successResultOf(self.store.deliver(["bob@example.edu"], ONE))
        self.assertEqual(report.stored, ("bob@example.edu",))
        self.successResultOf(self.store.deliver(["bob@example.edu"], TWO))

    def login(self, **kw: Any) -> tuple[Any, Any]:
        proto, t = connect(POP3Factory, "pop3", tls="implicit", clock=self.clock, **kw)
        proto.context.extras["store"] = self.store
        proto.handshakeCompleted()
        lines(t)
        proto.dataReceived(b"USER bob@example.edu\r\nPASS battery staple\r\n")
        replies = lines(t)
        self.assertEqual(replies[-1], b"+OK logged in, 2 messages (%d octets)" % (len(ONE) + len(TWO)))
        return proto, t

    def test_stat_list_uidl(self) -> None:
        proto, t = self.login()
        proto.dataReceived(b"STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nUIDL 1\r\nLIST 3\r\n")
        replies = lines(t)
        self.assertEqual(replies[0], b"+OK 2 %d" % (len(ONE) + len(TWO)))
        self.assertEqual(replies[1:5], [b"+OK 2 messages", b"1 %d" % len(ONE), b"2 %d" % len(TWO), b"."])
        self.assertEqual(replies[5], b"+OK 2 %d" % len(TWO))
        self.assertEqual(replies[6], b"+OK unique-id listing follows")
        key1 = replies[7].split()[1]
        self.assertRegex(key1, rb"^[\x21-\x7e]{1,70}$")
        self.assertEqual(replies[10], b"+OK 1 " + key1)
        self.assertEqual(replies[11], b"-ERR no such message")

    def test_retr_stuffs_and_marks_seen(self) -> None:
        proto, t = self.login()
        send(proto, t, b"RETR 1\r\n")
        self.assertEqual(t.value(), b"+OK %d octets\r\n" % len(ONE)
                         + ONE.replace(b"\r\n.leading", b"\r\n..leading") + b".\r\n")
        # \Seen is written once, when the session ends (also when dropped).
        proto.connectionLost(None)
        session = self.successResultOf(self.store.open_folder("bob@example.edu", "INBOX"))
        self.assertIn("\\Seen", session.messages()[0].flags)
        self.assertNotIn("\\Seen", session.messages()[1].flags)

    def test_top(self) -> None:
        proto, t = self.login()
        send(proto, t, b"TOP 2 1\r\n")
        self.assertEqual(lines(t), [b"+OK top of message follows", b"Subject: two", b"X: y", b"",
                                    b"l1", b"."])
        proto.dataReceived(b"TOP 2\r\nTOP 9 1\r\n")
        self.assertEqual(lines(t), [b"-ERR TOP needs a message number and a line count",
                                    b"-ERR no such message"])

    def test_dele_takes_effect_at_quit(self) -> None:
        proto, t = self.login()
        proto.dataReceived(b"DELE 1\r\nDELE 1\r\nSTAT\r\nRETR 1\r\nQUIT\r\n")
        replies = lines(t)
        self.assertEqual(replies[:4], [b"+OK message 1 deleted", b"-ERR no such message",
                                       b"+OK 1 %d" % len(TWO), b"-ERR no such message"])
        self.assertEqual(replies[4], b"+OK bye")
        session = self.successResultOf(self.store.open_folder("bob@example.edu", "INBOX"))
        self.assertEqual(len(session.messages()), 1)

    def test_dropped_connection_deletes_nothing(self) -> None:
        proto, t = self.login()
        proto.dataReceived(b"DELE 1\r\nDELE 2\r\n")
        proto.connectionLost(None)
        session = self.successResultOf(self.store.open_folder("bob@example.edu", "INBOX"))
        self.assertEqual(len(session.messages()), 2)
        # ... and the lock is free again.
        other, t2 = self.login()
        self.assertEqual(other.state, "TRANSACTION")

    def test_rset(self) -> None:
        proto, t = self.login()
        proto.dataReceived(b"DELE 2\r\nRSET\r\nSTAT\r\n")
        self.assertEqual(lines(t)[1:], [b"+OK 2 messages", b"+OK 2 %d" % (len(ONE) + len(TWO))])

    def test_mailbox_in_use(self) -> None:
        first, _ = self.login()
        proto, t = connect(POP3Factory, "pop3", tls="implicit", clock=self.clock)
        proto.context.extras["store"] = self.store
        proto.handshakeCompleted()
        lines(t)
        proto.dataReceived(b"USER bob@example.edu\r\nPASS battery staple\r\n")
        self.assertEqual(lines(t)[-1], b"-ERR [IN-USE] mailbox in use by another session")
        self.assertEqual(proto.state, "AUTHORIZATION")
        first.dataReceived(b"QUIT\r\n")
        proto.dataReceived(b"USER bob@example.edu\r\nPASS battery staple\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"+OK logged in"))

    def test_transaction_commands_need_login(self) -> None:
        proto, t = connect(POP3Factory, "pop3", tls="implicit", clock=self.clock)
        proto.handshakeCompleted()
        lines(t)
        proto.dataReceived(b"STAT\r\nRETR 1\r\nDELE 1\r\n")
        self.assertEqual(lines(t), [b"-ERR not authenticated"] * 3)

    def test_pipelined_retr_in_order(self) -> None:
        proto, t = self.login()
        send(proto, t, b"RETR 2\r\nRETR 1\r\nNOOP\r\n")
        out = t.value()
        self.assertTrue(out.startswith(b"+OK %d octets\r\nSubject: two" % len(TWO)))
        self.assertLess(out.index(b"Subject: two"), out.index(b"Subject: one"))
        self.assertTrue(out.endswith(b".\r\n+OK\r\n"))

    def test_bad_numbers(self) -> None:
        proto, t = self.login()
        proto.dataReceived(b"RETR 0\r\nRETR -1\r\nRETR x\r\nDELE 99\r\n")
        self.assertEqual(lines(t), [b"-ERR no such message"] * 4)


class UIDLTests(SynchronousTestCase):
    def test_key_kept_when_valid(self) -> None:
        from gateway.pop3.protocol import uidl

        self.assertEqual(uidl("1700000000.M1P2Q3R4.host,S=10,W=10"),
                         "1700000000.M1P2Q3R4.host,S=10,W=10")

    def test_long_or_odd_keys_are_digested_stably(self) -> None:
        from gateway.pop3.protocol import uidl

        long_key = "1700000000.M1P2Q3R4." + "h" * 80 + ",S=1"
        self.assertEqual(uidl(long_key), uidl(long_key))
        self.assertLessEqual(len(uidl(long_key)), 70)
        self.assertNotEqual(uidl(long_key), uidl(long_key + "0"))
        self.assertRegex(uidl("with space"), r"^[0-9a-f]{40}$")
