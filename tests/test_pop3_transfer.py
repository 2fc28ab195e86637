"""Byte-stuffing and TOP for POP3 message transfer."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.pop3.transfer import FlowGate, MessageProducer, Stuffer

MESSAGE = b"Subject: x\r\nFrom: a@b\r\n\r\nline 1\r\n.dot line\r\nline 3\r\n"


def send(data: bytes, body_lines: int | None = None, chunk: int = 7) -> bytes:
    stuffer = Stuffer(body_lines)
    out = b"".join(stuffer.feed(data[i:i + chunk]) for i in range(0, len(data), chunk))
    return out + stuffer.finish()


def unstuff(wire: bytes) -> bytes:
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[:-3]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


class StufferTests(SynchronousTestCase):
    def test_retr(self) -> None:
        self.assertEqual(send(MESSAGE), MESSAGE.replace(b"\r\n.dot", b"\r\n..dot") + b".\r\n")

    def test_no_final_newline(self) -> None:
        self.assertEqual(send(b"a\r\nb"), b"a\r\nb\r\n.\r\n")

    def test_top_zero_lines(self) -> None:
        self.assertEqual(send(MESSAGE, 0), b"Subject: x\r\nFrom: a@b\r\n\r\n.\r\n")

    def test_top_two_lines(self) -> None:
        self.assertEqual(send(MESSAGE, 2, chunk=1),
                         b"Subject: x\r\nFrom: a@b\r\n\r\nline 1\r\n..dot line\r\n.\r\n")

    def test_top_more_than_body(self) -> None:
        self.assertEqual(send(MESSAGE, 100), send(MESSAGE))

    def test_top_without_body(self) -> None:
        self.assertEqual(send(b"Subject: x\r\n", 5), b"Subject: x\r\n.\r\n")

    @given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                    max_size=10), st.integers(min_value=1, max_value=20))
    def test_round_trip(self, lines: list[bytes], chunk: int) -> None:
        message = b"".join(line + b"\r\n" for line in lines)
        wire = send(message, chunk=chunk)
        # The only terminator is the last one: no stuffed line reads as ".".
        self.assertNotIn(b"\r\n.\r\n", b"\r\n" + wire[:-3])
        self.assertEqual(unstuff(wire), message)


class ProducerTests(SynchronousTestCase):
    def test_streams_in_chunks(self) -> None:
        big = (b"x" * 100 + b"\r\n") * 2000
        transport = StringTransport()
        producer = MessageProducer(io.BytesIO(big), transport, Stuffer())
        d = producer.start()
        while not d.called:
            transport.producer.resumeProducing()
        self.successResultOf(d)
        self.assertEqual(transport.value(), big + b".\r\n")
        self.assertIsNone(transport.producer)


class FlowGateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.transport = StringTransport()
        self.gate = FlowGate(self.transport)
        self.gate.attach()

    def test_registered_as_streaming_producer(self) -> None:
        self.assertIs(self.transport.producer, self.gate)
        self.assertTrue(self.transport.streaming)
        self.gate.attach()  # once only
        self.gate.detach()
        self.assertIsNone(self.transport.producer)

    def test_wait_until_resumed(self) -> None:
        self.successResultOf(self.gate.wait())
        self.gate.pauseProducing()  # the transport's buffer is full
        d = self.gate.wait()
        self.assertNoResult(d)
        self.gate.resumeProducing()  # ... and sent
        self.successResultOf(d)

    def test_detach_lets_waiters_go(self) -> None:
        self.gate.pauseProducing()
        d = self.gate.wait()
        self.gate.detach()
        self.successResultOf(d)
        self.successResultOf(self.gate.wait())  # not watched while detached

    def test_closing_fails_waiters(self) -> None:
        self.gate.pauseProducing()
        d = self.gate.wait()
        self.gate.detach(closing=True)
        self.failureResultOf(d, ConnectionDone)
        self.failureResultOf(self.gate.wait(), ConnectionDone)
        self.gate.attach()
        self.assertIsNone(self.transport.producer)

    def test_connection_lost(self) -> None:
        self.gate.pauseProducing()
        d = self.gate.wait()
        self.gate.stopProducing()
        self.failureResultOf(d, ConnectionDone)
