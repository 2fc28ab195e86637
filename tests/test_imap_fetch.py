"""
FETCH conversations: responses on awkward messages read back with
imapclient's parser and held to RFC 3501's grammar, section numbers into
encapsulated messages, and write backpressure (a client that does not read
does not make the server read the folder into memory).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Limits
from gateway.imap import fetch
from tests.imap_grammar import check_body, check_envelope, parse_fetch
from tests.imap_support import SIMPLE, logged_in, selected, send
from tests.support import TLSStringTransport
from tests.test_imap_mime import GROUPS, NESTED
from tests.test_protocols import lines

NO_STRUCTURE = (b"From: alice\r\nTo: :;\r\nCc: \"unterminated\r\n"
                b"Content-Type: multipart/mixed\r\n\r\nno boundary\r\n")


def wire(proto: Any, t: Any, command: bytes) -> bytes:
    proto.dataReceived(command + b"\r\n")
    data = t.value()
    t.clear()
    return data


class FetchParsesTests(SynchronousTestCase):
    def test_real_parser_reads_every_item(self) -> None:
        proto, t, _ = selected((SIMPLE, GROUPS, NESTED, NO_STRUCTURE))
        data = wire(proto, t, b"a FETCH 1:* (UID FLAGS ENVELOPE BODY BODYSTRUCTURE "
                              b"BODY.PEEK[HEADER.FIELDS (To Cc)] BODY.PEEK[1.MIME])")
        self.assertTrue(data.endswith(b"a OK FETCH completed\r\n"), data[-200:])
        found = parse_fetch(data[:data.rindex(b"a OK")])
        self.assertEqual(sorted(found), [1, 2, 3, 4])
        for items in found.values():
            check_envelope(items[b"ENVELOPE"])
            check_body(items[b"BODYSTRUCTURE"], True)
            check_body(items[b"BODY"], False)
        self.assertEqual([a.mailbox for a in found[2][b"ENVELOPE"].to],
                         [b"undisclosed-recipients", None])
        self.assertEqual(found[4][b"ENVELOPE"].to[0].mailbox, b"")
        self.assertEqual(found[4][b"ENVELOPE"].from_[0].host, b"MISSING_DOMAIN")
        self.assertEqual(found[3][b"BODY[1.MIME]"], b"Content-Type: text/plain\r\n\r\n")

    def test_sections_of_an_encapsulated_message(self) -> None:
        """RFC 3501 section 6.4.5: 2.HEADER is the embedded message's
        header, 2.1 its first part."""
        proto, t, _ = selected((NESTED,))
        data = wire(proto, t, b"a FETCH 1 (BODY.PEEK[2.HEADER.FIELDS (Subject)] "
                              b"BODY.PEEK[2.1] BODY.PEEK[2.1.MIME] BODY.PEEK[2.2] "
                              b"BODY.PEEK[2.TEXT]<0.3> BODY.PEEK[2.3] BODY.PEEK[2.1.1])")
        found = parse_fetch(data[:data.rindex(b"a OK")])[1]
        self.assertEqual(found[b"BODY[2.HEADER.FIELDS (SUBJECT)]"], b"Subject: inner\r\n\r\n")
        self.assertEqual(found[b"BODY[2.1]"], b"Caf=E9")
        self.assertEqual(found[b"BODY[2.1.MIME]"],
                         b"Content-Type: text/plain; charset=iso-8859-1\r\n"
                         b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
        self.assertEqual(found[b"BODY[2.2]"], b"<p>Caf&eacute;</p>")
        self.assertEqual(found[b"BODY[2.TEXT]<0>"], b"--i")
        self.assertEqual(found[b"BODY[2.3]"], b"")
        self.assertEqual(found[b"BODY[2.1.1]"], b"Caf=E9")


class BufferingTransport(TLSStringTransport):
    """
    A transport that, like a TCP or TLS one, pauses its streaming producer
    when more than C{limit} octets wait to be sent, and resumes it once
    the client has read them (L{drain}).
    """

    limit = 50_000

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.full = False
        self.pauses = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        if (self.producer is not None and self.streaming and not self.full
                and len(self.value()) > self.limit):
            self.full = True
            self.pauses += 1
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if self.full:
            self.full = False
            if self.producer is not None:
                self.producer.resumeProducing()
        return data


def buffered(messages: tuple[bytes, ...], clock: Clock | None = None
             ) -> tuple[Any, BufferingTransport]:
    """A connection over a L{BufferingTransport}, logged in as alice with
    C{messages} in her INBOX, which it has selected."""
    first, _, _ = logged_in(messages, clock=clock)
    proto = first.factory.buildProtocol(None)
    t = BufferingTransport(peerAddress=IPv4Address("TCP", "192.0.2.8", 40001))
    proto.makeConnection(t)
    proto.handshakeCompleted()
    send(proto, t, b'L LOGIN alice@example.edu "correct horse"')
    reply = send(proto, t, b"S SELECT INBOX")
    assert reply[-1].startswith(b"S OK"), reply
    return proto, t


def big(n: int) -> bytes:
    return (b"From: a@x.example\r\nSubject: big %d\r\n\r\n" % n) + b"0123456789" * 4000


class BackpressureTests(SynchronousTestCase):
    def connect(self, count: int = 6) -> tuple[Any, BufferingTransport, list[int], Clock]:
        clock = Clock()
        proto, t = buffered(tuple(big(n) for n in range(count)), clock)
        opened: list[int] = []
        real = proto.session.read_message

        def read_message(uid: int) -> Any:  # records, then the store's own read
            opened.append(uid)
            return real(uid)

        proto.session.read_message = read_message
        return proto, t, opened, clock

    def test_no_reads_while_the_client_does_not_read(self) -> None:
        proto, t, opened, _ = self.connect()
        proto.dataReceived(b"a FETCH 1:* BODY.PEEK[]\r\n")
        # One message (40 kB) fits, the second fills the buffer: no third read.
        self.assertEqual(opened, [1, 2])
        self.assertTrue(t.full)
        self.assertNotIn(b"a OK", t.value())
        received = t.drain()
        self.assertEqual(opened, [1, 2, 3, 4])
        while t.full:
            received += t.drain()
        received += t.drain()
        self.assertEqual(opened, [1, 2, 3, 4, 5, 6])
        self.assertTrue(received.endswith(b"a OK FETCH completed\r\n"), received[-100:])
        found = parse_fetch(received[:received.rindex(b"a OK")])
        self.assertEqual([found[n][b"BODY[]"] for n in range(1, 7)],
                         [big(n) for n in range(6)])
        self.assertEqual(t.pauses, 3)
        self.assertIsNone(t.producer)  # unregistered at the end
        # The connection goes on: the next command is read.
        self.assertEqual(send(proto, t, b"b NOOP"), [b"b OK NOOP completed"])

    def test_connection_lost_while_paused(self) -> None:
        proto, t, opened, _ = self.connect()
        proto.dataReceived(b"a FETCH 1:* BODY.PEEK[]\r\n")
        producer = t.producer
        producer.stopProducing()  # what a transport does when it is lost
        t.disconnecting = True
        proto.connectionLost(None)
        self.assertEqual(opened, [1, 2])
        self.assertIsNone(t.producer)

    def test_closed_while_paused_unregisters(self) -> None:
        """An idle timeout while the client does not read: the producer
        notices the close (a TLS transport finishes closing only once no
        producer is registered)."""
        proto, t, opened, clock = self.connect()
        proto.dataReceived(b"a FETCH 1:* BODY.PEEK[]\r\n")
        self.assertIsNotNone(t.producer)
        proto.disconnect()
        self.assertTrue(t.disconnecting)
        clock.advance(fetch.Backpressure.POLL)
        self.assertIsNone(t.producer)
        self.assertEqual(opened, [1, 2])
        self.assertEqual([c for c in clock.getDelayedCalls()
                          if getattr(c.func, "__func__", None) is fetch.Backpressure._wake], [])

    def test_index_only_fetch_paused_too(self) -> None:
        proto, t, opened, _ = self.connect(count=2)
        t.limit = 10
        proto.dataReceived(b"a FETCH 1:* (UID FLAGS)\r\n")
        self.assertEqual(lines(t), [b"* 1 FETCH (UID 1 FLAGS (\\Recent))"])
        t.full = True
        t.drain()
        self.assertEqual(t.drain().split(b"\r\n")[-2:], [b"a OK FETCH completed", b""])


    def test_one_message_named_many_times(self) -> None:
        """
        C{FETCH 1 (BODY.PEEK[] BODY.PEEK[] ...)}: each copy is made once
        the client has read the previous ones.  Before, the whole response
        (here 200 copies of a 40 kB message, 8 MB; of a 35 MB one, 7 GB) was
        built in memory before the first octet was written.
        """
        proto, t, opened, _ = self.connect(count=1)
        items = b" ".join(b"BODY.PEEK[]<%d.40100>" % n for n in range(200))
        proto.dataReceived(b"a FETCH 1 (" + items + b")\r\n")
        self.assertEqual(opened, [1])
        self.assertTrue(t.full)
        self.assertLess(len(t.value()), t.limit + 2 * fetch.FLUSH_SIZE)
        received = t.drain()
        while t.full:
            received += t.drain()
        received += t.drain()
        self.assertTrue(received.endswith(b"a OK FETCH completed\r\n"), received[-100:])
        found = parse_fetch(received[:received.rindex(b"a OK")])[1]
        self.assertEqual(len([k for k in found if k.startswith(b"BODY[]")]), 200)
        self.assertEqual(found[b"BODY[]<7>"], big(0)[7:])
        self.assertGreater(t.pauses, 50)


def large(n: int, size: int = 700_000) -> bytes:
    head = b"From: a@x.example\r\nSubject: large %d\r\n\r\n" % n
    line = b"%07d" % n + b" line of a large message, not stuffed\r\n"
    return head + (line * (size // len(line) + 1))[:size - len(head) - 2] + b"\r\n"


class StreamTests(SynchronousTestCase):
    """
    A message over L{fetch.STREAM_SIZE} whose FETCH asks only for its
    octets is copied from its file a piece at a time, never read whole;
    the response is the same as when it is.
    """

    def connect(self, messages: tuple[bytes, ...], buffering: bool = False
                ) -> tuple[Any, Any, list[tuple[str, int]]]:
        if buffering:
            proto, t = buffered(messages)
        else:
            proto, t, _ = selected(messages)
        session, calls = proto.session, []
        read_message, open_message = session.read_message, session.open_message

        def spy_read(uid: int) -> Any:
            calls.append(("read", uid))
            return read_message(uid)

        def spy_open(uid: int) -> Any:
            calls.append(("open", uid))
            return open_message(uid)

        session.read_message, session.open_message = spy_read, spy_open
        return proto, t, calls

    def fetched(self, proto: Any, t: Any, command: bytes) -> dict[bytes, Any]:
        """The items of message 1 in the response to C{command}."""
        out = wire(proto, t, command)
        self.assertIn(b"a OK FETCH completed", out)
        return parse_fetch(out[:out.rindex(b"a OK")])[1]

    def test_whole_message(self) -> None:
        message = large(1)
        self.assertGreater(len(message), fetch.STREAM_SIZE)
        proto, t, calls = self.connect((message, SIMPLE))
        out = wire(proto, t, b"a FETCH 1:2 (UID RFC822.SIZE BODY.PEEK[])")
        self.assertEqual(out, b"* 1 FETCH (UID 1 RFC822.SIZE %d BODY[] {%d}\r\n%s)\r\n"
                         b"* 2 FETCH (UID 2 RFC822.SIZE %d BODY[] {%d}\r\n%s)\r\n"
                         b"a OK FETCH completed\r\n"
                         % (len(message), len(message), message,
                            len(SIMPLE), len(SIMPLE), SIMPLE))
        self.assertEqual(calls, [("open", 1), ("read", 2)])

    def test_rfc822_sets_seen(self) -> None:
        message = large(2)
        proto, t, calls = self.connect((message,))
        found = self.fetched(proto, t, b"a FETCH 1 RFC822")
        self.assertEqual(found[b"RFC822"], message)
        self.assertIn(b"\\Seen", found[b"FLAGS"])
        self.assertEqual(calls, [("open", 1)])

    def test_partial(self) -> None:
        message = large(3)
        proto, t, calls = self.connect((message,))
        out = wire(proto, t, b"a FETCH 1 (BODY.PEEK[]<300000.1000> BODY.PEEK[]<699990.100>"
                   b" BODY.PEEK[]<5000000.10>)")
        self.assertEqual(out, b"* 1 FETCH (BODY[]<300000> {1000}\r\n%s"
                         b" BODY[]<699990> {10}\r\n%s BODY[]<5000000> {0}\r\n)\r\n"
                         b"a OK FETCH completed\r\n" % (message[300000:301000], message[-10:]))
        self.assertEqual(calls, [("open", 1)])

    def test_other_items_read_it_whole(self) -> None:
        message = large(4)
        proto, t, calls = self.connect((message,))
        found = self.fetched(proto, t, b"a FETCH 1 (ENVELOPE BODY.PEEK[])")
        self.assertEqual(found[b"BODY[]"], message)
        self.assertEqual(calls, [("read", 1)])

    def test_backpressure(self) -> None:
        """A client that does not read holds the copy: the transport holds
        at most its limit and a piece."""
        messages = (large(5, 2_000_000), large(6, 300_000))
        proto, t, calls = self.connect(messages, buffering=True)
        proto.dataReceived(b"a FETCH 1:2 BODY.PEEK[]\r\n")
        self.assertTrue(t.full)
        self.assertLess(len(t.value()), t.limit + fetch.FLUSH_SIZE)
        self.assertEqual(calls, [("open", 1)])
        received = t.drain()
        while t.full:
            self.assertLess(len(t.value()), t.limit + fetch.FLUSH_SIZE)
            received += t.drain()
        received += t.drain()
        self.assertTrue(received.endswith(b"a OK FETCH completed\r\n"), received[-100:])
        found = parse_fetch(received[:received.rindex(b"a OK")])
        self.assertEqual([found[1][b"BODY[]"], found[2][b"BODY[]"]], list(messages))
        self.assertEqual(calls, [("open", 1), ("open", 2)])

    def test_no_nul_in_literals(self) -> None:
        """RFC 3501's literal is CHAR8: a NUL stored in a message goes out
        as 0x80, read whole or copied from the file, sizes unchanged."""
        small = b"Subject: nul\r\n\r\na\x00b\r\n"
        big = large(8)[:-10] + b"\x00\x00tail\r\n"
        proto, t, _ = self.connect((small, big))
        out = wire(proto, t, b"a FETCH 1:2 (BODY.PEEK[] BODY.PEEK[TEXT] RFC822.SIZE)")
        self.assertNotIn(b"\x00", out)
        found = parse_fetch(out[:out.rindex(b"a OK")])
        self.assertEqual(found[1][b"BODY[]"], small.replace(b"\x00", b"\x80"))
        self.assertEqual(found[1][b"BODY[TEXT]"], b"a\x80b\r\n")
        self.assertEqual(wire(proto, t, b"b FETCH 2 BODY.PEEK[]")[-40:],
                         big.replace(b"\x00", b"\x80")[-15:] + b")\r\nb OK FETCH completed\r\n")

    def test_file_cut_short(self) -> None:
        """A file shorter than the literal announced (cut by another program
        after it was opened): the response cannot be finished, so the
        connection is aborted (what the command writes after it, a real
        transport drops)."""
        message = large(7)
        proto, t, _ = self.connect((message,))
        session = proto.session

        class Cut:
            def __init__(self) -> None:
                self.closed = False

            def seek(self, offset: int, whence: int = 0) -> int:
                self.position = len(message) if whence == 2 else offset
                return self.position

            def read(self, count: int) -> bytes:
                return message[self.position:min(self.position + count, 100_000)]

            def close(self) -> None:
                self.closed = True

        cut = Cut()
        session.open_message = lambda uid: succeed(cut)
        aborted: list[bytes] = []
        t.abortConnection = lambda: aborted.append(t.value())  # type: ignore[method-assign]
        wire(proto, t, b"a FETCH 1 BODY.PEEK[]")
        self.assertEqual(aborted, [b"* 1 FETCH (BODY[] {%d}\r\n" % len(message)
                                   + message[:100_000]])
        self.assertTrue(cut.closed)


class BackpressureUnitTests(SynchronousTestCase):
    def test_without_transport_support(self) -> None:
        """A transport that already has a producer: FETCH still works,
        without flow control."""
        t = TLSStringTransport()
        t.registerProducer(object(), True)
        clock = Clock()
        with fetch.Backpressure(t, clock) as pressure:
            pressure.pauseProducing()  # nobody would resume it: ignored
            self.assertIs(self.successResultOf(Deferred.fromCoroutine(pressure.ready())), True)
        self.assertIsNotNone(t.producer)

    def test_limits_default(self) -> None:
        self.assertEqual(Limits().max_search_text_size, 4 * 1024 * 1024)
