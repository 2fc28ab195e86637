"""
After a message, the SMTP server processes no command until the message's
reply, but pauses the transport only when a byte arrives meanwhile (most
clients wait for the reply; pausing cost two C{epoll_ctl} calls per
message).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from gateway.smtp.delivery import Delivery
from tests.test_protocols import lines
from tests.test_smtp_transaction import Book, TransactionTestCase


class GatedStore:
    """The real in-memory store behind a gate the test opens."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.gates: list[Deferred[None]] = []

    def deliver(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        gate: Deferred[None] = Deferred()
        self.gates.append(gate)
        return gate.addCallback(lambda _: self.store.deliver(*args, **kwargs))


MESSAGE = b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\nDATA\r\n"


class HoldTests(TransactionTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gated = GatedStore(self.store)
        self.delivery = Delivery(self.gated, self.spool, Book(),  # type: ignore[arg-type]
                                 "mail.example.edu", self.clock)

    def test_waiting_client_costs_no_pause(self) -> None:
        proto, t = self.open()
        proto.dataReceived(MESSAGE)
        lines(t)
        proto.dataReceived(b"hello\r\n.\r\n")
        self.assertEqual(lines(t), [])  # the store works
        self.assertEqual(t.producerState, "producing")  # but reading goes on
        self.gated.gates[0].callback(None)
        self.assertTrue(lines(t)[0].startswith(b"250 2.0.0 OK queued"))
        self.assertEqual(t.producerState, "producing")
        proto.dataReceived(b"NOOP\r\n")
        self.assertEqual(lines(t), [b"250 2.0.0 OK"])

    def test_command_arriving_during_the_delivery_waits_and_pauses(self) -> None:
        proto, t = self.open()
        proto.dataReceived(MESSAGE)
        lines(t)
        proto.dataReceived(b"hello\r\n.\r\n")
        proto.dataReceived(b"NOOP\r\n")
        self.assertEqual(lines(t), [])  # not before the message's reply
        self.assertEqual(t.producerState, "paused")
        self.gated.gates[0].callback(None)
        replies = lines(t)
        self.assertTrue(replies[0].startswith(b"250 2.0.0 OK queued"))
        self.assertEqual(replies[1:], [b"250 2.0.0 OK"])
        self.assertEqual(t.producerState, "producing")
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)

    def test_pipelined_in_the_same_read(self) -> None:
        proto, t = self.open()
        proto.dataReceived(MESSAGE)
        lines(t)
        proto.dataReceived(b"hello\r\n.\r\n" + MESSAGE + b"second\r\n.\r\nQUIT\r\n")
        self.assertEqual(lines(t), [])
        self.assertEqual(t.producerState, "paused")
        self.gated.gates[0].callback(None)
        codes = [line[:3] for line in lines(t)]
        self.assertEqual(codes, [b"250", b"250", b"250", b"354"])
        self.gated.gates[1].callback(None)
        self.assertEqual([line[:3] for line in lines(t)], [b"250", b"221"])
        self.assertEqual(len(self.inbox("bob@example.edu")), 2)

    def test_refused_message_then_commands(self) -> None:
        proto, t = self.open()
        proto.dataReceived(MESSAGE)
        lines(t)
        proto.dataReceived(b"bare\nline\r\n.\r\nNOOP\r\n")
        self.assertEqual(lines(t), [b"550 5.6.0 bare CR or LF in message (RFC 5321 section 2.3.8)",
                                    b"250 2.0.0 OK"])
        self.assertEqual(self.gated.gates, [])
        self.assertEqual(t.producerState, "producing")
