"""
Edge cases of POP3 pipelining, read-ahead and streaming
(L{gateway.pop3.readahead}, L{gateway.pop3.transfer}, the TRANSACTION
state of L{gateway.pop3.protocol}): the exact bytes of every reply whatever
the pipeline and the pace of the client, messages that vanish or cannot be
read, connections that end while a read is under way, and the memory a
client that does not read can make us hold.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.pop3.protocol import SMALL_MESSAGE, uidl
from gateway.pop3.readahead import READ_AHEAD
from gateway.pop3.transfer import CHUNK, FlowGate, MessageCutShort, MessageProducer, Stuffer
from gateway.store.fs import FileSystem
from gateway.store.maildir import MaildirStore
from gateway.testing import MemoryStore
from tests.pop3_support import BOB, HeldThreads, lock_is_free, stored_messages
from tests.test_pop3_readahead import PacedTransport, SessionSpy, login_bob, message
from tests.test_pop3_transaction import send
from tests.test_protocols import lines

IDLE = 600.0  # Limits().idle_timeout_pop3


def reference(data: bytes, top: int | None = None) -> bytes:
    """
    The multi-line body of a RETR (or, with C{top}, a TOP) reply for a
    message kept with CRLF line ends, written from RFC 1939 sections 3 and
    7 line by line, independently of L{gateway.pop3.transfer.Stuffer}.
    """
    lines_ = data.split(b"\r\n")
    if lines_[-1] == b"":
        lines_.pop()  # the message ended with CRLF (or is empty)
    if top is not None:
        blank = lines_.index(b"") if b"" in lines_ else len(lines_)
        lines_ = lines_[:blank + 1 + top]
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in lines_) + b".\r\n"


def big(size: int, end: bytes = b"end\r\n") -> bytes:
    """
    A message of C{size} octets streamed in several L{CHUNK}s, where a
    chunk starts with a line starting with ".", another chunk boundary
    falls between a CR and its LF just before such a line, a line is a
    lone "." and the message ends with C{end}.
    """
    out = bytearray(b".Header: starts with a dot\r\nSubject: big\r\n\r\n.\r\n")

    def pad_to(n: int) -> None:
        while len(out) < n:
            room = n - len(out)
            line = min(room, 1000) if room - 1000 > 2 or room <= 1000 else room - 500
            out.extend(b"x" * (line - 2) + b"\r\n")

    pad_to(CHUNK)
    out.extend(b".dot at a chunk boundary\r\n")
    pad_to(2 * CHUNK - 3)
    out.extend(b".y\r\n.after a split CRLF\r\n")  # CR at 2*CHUNK-1, LF at 2*CHUNK
    pad_to(size - len(end))
    out.extend(end)
    assert len(out) == size and out[CHUNK:CHUNK + 1] == b"."
    assert out[2 * CHUNK - 1:2 * CHUNK + 1] == b"\r\n"
    return bytes(out)


#: The maildrop of the pipeline tests: every shape a message can take.
MAILBOX = [
    b".first line starts with a dot\r\nSubject: dots\r\n\r\n.\r\n..\r\n.x\r\nend\r\n",
    b"",
    b"Subject: no final newline\r\n\r\nline\r\nlast line",
    big(SMALL_MESSAGE + 40_000),
    b"Subject: header only\r\nX: y\r\n",
    big(SMALL_MESSAGE),  # the largest message sent whole
    big(SMALL_MESSAGE + 1, end=b"\r\n."),  # the smallest streamed, ends with a bare "."
    b"Subject: plain\r\n\r\nhello\r\n",
    b"Subject: body of dots\r\n\r\n.\r\n.\r\n\r\n.\r\n",
]



class PullPacedTransport(PacedTransport):
    """
    L{PacedTransport} with pull producers driven as Twisted's TCP transport
    drives them: asked for data when registered and each time the client
    has read everything.
    """

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        super().registerProducer(producer, streaming)
        if not streaming:
            producer.resumeProducing()

    def read(self) -> bytes:
        data = super().read()
        if self.producer is not None and not self.streaming:
            self.producer.resumeProducing()
        return data

    def read_all(self, step: Callable[[], object] = lambda: None, until: int = -1) -> bytes:
        """Read until nothing more comes (or C{until} octets came), calling
        C{step} before each read."""
        received, idle = b"", 0
        while idle < 2 and len(received) != until:
            step()
            data = self.read()
            received += data
            idle = 0 if data else idle + 1
        return received


class FaultyFS(FileSystem):
    """Opening or reading chosen message files fails."""

    def __init__(self) -> None:
        self.open_fails: dict[bytes, OSError] = {}  # a line of the message -> error
        self.read_fails_after: dict[bytes, int] = {}  # the same -> octets read first
        self.opened: list[Any] = []

    def open_read(self, path: str) -> Any:
        f = super().open_read(path)
        if "/cur/" not in path and "/new/" not in path:
            return f
        head = f.read()
        f.close()
        for mark, error in self.open_fails.items():
            if mark in head:
                raise error
        for mark, after in self.read_fails_after.items():
            if mark in head:
                f = FailingFile(head, after)
                break
        else:
            f = io.BytesIO(head)
        self.opened.append(f)
        return f


class FailingFile(io.BytesIO):
    """Reads fail with EIO once C{after} octets were read."""

    def __init__(self, data: bytes, after: int) -> None:
        super().__init__(data)
        self.after = after

    def read(self, n: int | None = -1) -> bytes:
        if self.tell() >= self.after:
            raise OSError(errno.EIO, "Input/output error")
        return super().read(n if n is not None and n >= 0 else -1)


class Mixin:
    """Sessions over a L{MemoryStore} or a real L{MaildirStore}."""

    clock: Clock
    store: Any
    successResultOf: Any
    assertTrue: Any
    mktemp: Any
    addCleanup: Any

    def memory_store(self, messages: list[bytes]) -> None:
        self.clock = Clock()
        self.store = MemoryStore(clock=self.clock)
        for data in messages:
            self.successResultOf(self.store.deliver([BOB], data))

    def maildir_store(self, messages: list[bytes]) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.threads = HeldThreads()
        self.fs = FaultyFS()
        self.store = MaildirStore(self.mktemp(), run_in_thread=self.threads, clock=self.clock,
                                  fs=self.fs, hostname="test.example")
        self.addCleanup(self.store.close)
        for data in messages:
            self.successResultOf(self.store.deliver([BOB], data))

    def login(self, transport: Any = None) -> tuple[Any, Any]:
        proto, t = login_bob(self.clock, self.store, transport)
        if transport is not None:
            transport.most = 0
        return proto, t

    def lock_is_free(self) -> bool:
        return lock_is_free(self.store)

    def path_of(self, data: bytes) -> str:
        """The Maildir file of the message C{data}."""
        for folder, _, files in os.walk(self.store.root):
            for name in files:
                if "/cur" in folder or "/new" in folder:
                    with open(os.path.join(folder, name), "rb") as f:
                        if f.read() == data:
                            return os.path.join(folder, name)
        raise AssertionError("no such file")

    def stored(self) -> list[Any]:
        return stored_messages(self, self.store)


# -- the bytes on the wire ----------------------------------------------------------


class Model:
    """What RFC 1939 says the server answers, command by command."""

    def __init__(self, messages: list[bytes], keys: list[str]) -> None:
        self.messages = messages
        self.keys = keys
        self.deleted: set[int] = set()

    def live(self) -> list[int]:
        return [n for n in range(1, len(self.messages) + 1) if n not in self.deleted]

    def number(self, text: str) -> int | None:
        if text.isdigit() and int(text) in self.live():
            return int(text)
        return None

    def answer(self, command: str) -> bytes:
        verb, _, arg = command.partition(" ")
        if verb == "STAT":
            return b"+OK %d %d\r\n" % (len(self.live()), sum(len(self.messages[n - 1])
                                                            for n in self.live()))
        if verb in ("LIST", "UIDL"):
            column: Callable[[int], bytes] = (
                (lambda n: b"%d" % len(self.messages[n - 1])) if verb == "LIST"
                else (lambda n: uidl(self.keys[n - 1]).encode("ascii")))
            if arg:
                n = self.number(arg)
                return b"+OK %d %s\r\n" % (n, column(n)) if n else b"-ERR no such message\r\n"
            head = (b"+OK %d messages\r\n" % len(self.live()) if verb == "LIST"
                    else b"+OK unique-id listing follows\r\n")
            return head + b"".join(b"%d %s\r\n" % (n, column(n)) for n in self.live()) + b".\r\n"
        if verb == "RETR":
            n = self.number(arg)
            if n is None:
                return b"-ERR no such message\r\n"
            data = self.messages[n - 1]
            return b"+OK %d octets\r\n" % len(data) + reference(data)
        if verb == "TOP":
            number, _, count = arg.partition(" ")
            if not count.isdigit():
                return b"-ERR TOP needs a message number and a line count\r\n"
            n = self.number(number)
            if n is None:
                return b"-ERR no such message\r\n"
            return b"+OK top of message follows\r\n" + reference(self.messages[n - 1], int(count))
        if verb == "DELE":
            n = self.number(arg)
            if n is None:
                return b"-ERR no such message\r\n"
            self.deleted.add(n)
            return b"+OK message %d deleted\r\n" % n
        if verb == "RSET":
            self.deleted.clear()
            return b"+OK %d messages\r\n" % len(self.live())
        if verb == "NOOP":
            return b"+OK\r\n"
        if verb == "STLS":
            return b"-ERR STLS only before authentication\r\n"
        if verb == "QUIT":
            return b"+OK bye\r\n"
        return b"-ERR unknown command\r\n"


numbers = st.sampled_from(["1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "10", "x", "99"])
commands = st.one_of(
    numbers.map(lambda n: f"RETR {n}"),
    numbers.map(lambda n: f"RETR {n}"),
    numbers.map(lambda n: f"RETR {n}"),
    st.tuples(numbers, st.sampled_from(["0", "1", "3", "100000", "x"])).map(
        lambda a: f"TOP {a[0]} {a[1]}"),
    numbers.map(lambda n: f"DELE {n}"),
    st.sampled_from(["STAT", "LIST", "LIST 3", "LIST 2", "UIDL", "UIDL 4", "NOOP", "RSET",
                     "STLS", "XYZZY"]),
)


class PipelineTests(Mixin, SynchronousTestCase):
    """
    Any pipeline over the maildrop of L{MAILBOX}: the replies are exactly
    those of L{Model}, in order, whether the client sends it at once or in
    pieces, and reads at once or slowly.
    """

    def run_pipeline(self, pipeline: list[str], piece: int, slow: bool, quit: bool) -> None:
        self.memory_store(MAILBOX)
        proto, t = self.login(PullPacedTransport() if slow else None)
        keys = [m.key for m in proto.maildrop.messages]
        model = Model(MAILBOX, keys)
        if quit:
            pipeline = pipeline + ["QUIT"]
        data = b"".join(c.encode("ascii") + b"\r\n" for c in pipeline)
        received = b""
        for i in range(0, len(data), piece):
            if slow:
                proto.dataReceived(data[i:i + piece])
                received += t.read_all()
            else:
                send(proto, t, data[i:i + piece])
        received += t.read_all() if slow else t.value()
        expected = b"".join(model.answer(c) for c in pipeline)
        self.assertEqual(received, expected)
        self.assertEqual(t.disconnecting, quit)
        if quit:
            self.assertEqual(len(self.stored()), len(MAILBOX) - len(model.deleted))
        proto.connectionLost(None)
        self.assertTrue(self.lock_is_free())
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=60, deadline=None)
    @given(st.lists(commands, max_size=25).filter(lambda p: sum(c == "XYZZY" for c in p) < 5),
           st.sampled_from([1, 5, 1000, 100_000]), st.booleans(), st.booleans())
    def test_any_pipeline(self, pipeline: list[str], piece: int, slow: bool,
                          quit: bool) -> None:
        self.run_pipeline(pipeline, piece, slow, quit)

    def test_every_shape_in_one_pipeline(self) -> None:
        """The example worked by hand: each message by RETR and TOP, with
        deleted, unknown and bad commands between."""
        pipeline = ["STAT", "RETR 1", "DELE 2", "RETR 2", "TOP 1 0", "RETR 99", "RETR 4",
                    "UIDL 4", "RETR 3", "TOP 4 2", "TOP 7 1", "XYZZY", "STLS", "RETR 5",
                    "RETR 6", "RETR 7", "RSET", "RETR 2", "LIST", "TOP 9 1", "RETR 9",
                    "RETR 8", "NOOP"]
        for piece, slow in ((100_000, False), (1, False), (100_000, True), (3, True)):
            self.run_pipeline(pipeline, piece, slow, quit=True)

    def test_reference(self) -> None:
        """The model's stuffing, checked on the cases that matter."""
        self.assertEqual(reference(b""), b".\r\n")
        self.assertEqual(reference(b".a\r\n.\r\nb"), b"..a\r\n..\r\nb\r\n.\r\n")
        self.assertEqual(reference(b"H: 1\r\n\r\nl1\r\nl2\r\n", 1), b"H: 1\r\n\r\nl1\r\n.\r\n")
        self.assertEqual(reference(b"H: 1\r\nH: 2\r\n", 0), b"H: 1\r\nH: 2\r\n.\r\n")


class LookAheadTests(Mixin, SynchronousTestCase):
    def test_repeated_retrs_cost_linear_work(self) -> None:
        """
        Thousands of pipelined RETRs of one message: each starts a batch,
        and the batches must not each scan the whole buffer (quadratic: 8,000
        lines cost 23 s of CPU).
        """
        self.memory_store([message(1)])
        proto, t = self.login()
        scanned = [0]
        scan = proto._pipelined_retrs

        def counting() -> Any:
            for n in scan():
                scanned[0] += 1
                yield n

        proto._pipelined_retrs = counting
        proto.dataReceived(b"RETR 1\r\n" * 4000)
        self.assertEqual(t.value().count(b"\r\n.\r\n"), 4000)
        self.assertLessEqual(scanned[0], 4000 * 128)


# -- messages that vanish or cannot be read -----------------------------------------


SMALL = [message(i) for i in range(1, 6)]


class VanishedTests(Mixin, SynchronousTestCase):
    """The real L{MaildirStore}; another program or session at work."""

    def check_gone(self, messages: list[bytes], gone: int, expunge: Callable[[int], None]) -> None:
        self.maildir_store(messages)
        proto, t = self.login()
        proto.dataReceived(b"LIST\r\n")
        lines(t)
        expunge(gone)
        send(proto, t, b"RETR 1\r\nRETR %d\r\nTOP %d 0\r\nRETR 3\r\nDELE %d\r\nNOOP\r\n"
             % (gone, gone, gone))
        model = Model(messages, [])
        self.assertEqual(t.value(),
                         model.answer("RETR 1")
                         + b"-ERR [SYS/TEMP] message removed by another session\r\n" * 2
                         + model.answer("RETR 3") + b"+OK message %d deleted\r\n+OK\r\n" % gone)
        self.assertEqual(self.flushLoggedErrors(), [])
        t.clear()
        proto.dataReceived(b"QUIT\r\n")
        self.assertEqual(t.value(), b"+OK bye\r\n")
        self.assertEqual(len(self.stored()), len(messages) - 1)
        self.assertTrue(self.lock_is_free())

    def unlink(self, number: int) -> None:
        os.unlink(self.path_of(self.messages[number - 1]))

    def imap_expunge(self, number: int) -> None:
        session = self.successResultOf(self.store.open_folder(BOB, "INBOX"))
        uid = [m.uid for m in session.messages()][number - 1]
        self.successResultOf(session.delete([uid]))
        session.close()

    def test_small_message_unlinked(self) -> None:
        self.messages = SMALL
        self.check_gone(SMALL, 2, self.unlink)

    def test_small_message_expunged_by_imap(self) -> None:
        self.messages = SMALL
        self.check_gone(SMALL, 2, self.imap_expunge)

    def test_large_message_unlinked(self) -> None:
        self.messages = [SMALL[0], big(SMALL_MESSAGE + 100), SMALL[2]]
        self.check_gone(self.messages, 2, self.unlink)

    def test_large_message_expunged_by_imap(self) -> None:
        self.messages = [SMALL[0], big(SMALL_MESSAGE + 100), SMALL[2]]
        self.check_gone(self.messages, 2, self.imap_expunge)

    def test_unreadable_message_fails_only_its_retr(self) -> None:
        """One file the batch cannot read (EACCES): its RETR gets -ERR, the
        others of the batch are sent, and it is not marked seen."""
        self.maildir_store(SMALL)
        self.fs.open_fails[b"Subject: 3\r\n"] = PermissionError(errno.EACCES, "Permission denied")
        proto, t = self.login()
        send(proto, t, b"".join(b"RETR %d\r\n" % i for i in range(1, 6)) + b"QUIT\r\n")
        model = Model(SMALL, [])
        self.assertEqual(t.value(), b"".join(model.answer(f"RETR {i}") for i in (1, 2))
                         + b"-ERR [SYS/TEMP] cannot read the message\r\n"
                         + b"".join(model.answer(f"RETR {i}") for i in (4, 5)) + b"+OK bye\r\n")
        self.assertEqual(len(self.flushLoggedErrors(PermissionError)), 1)
        seen = ["\\Seen" in m.flags for m in self.stored()]
        self.assertEqual(seen, [True, True, False, True, True])

    def test_large_message_unreadable_from_the_start(self) -> None:
        """Nothing of it was sent: -ERR, and the session goes on."""
        messages = [SMALL[0], big(SMALL_MESSAGE + 100)]
        self.maildir_store(messages)
        self.fs.read_fails_after[b"Subject: big"] = 0
        proto, t = self.login()
        send(proto, t, b"RETR 2\r\nTOP 2 1\r\nRETR 1\r\n")
        self.assertEqual(t.value(), b"-ERR [SYS/TEMP] cannot read the message\r\n" * 2
                         + Model(messages, []).answer("RETR 1"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)
        self.assertTrue(all(f.closed for f in self.fs.opened))
        self.assertFalse(t.disconnecting)

    def test_read_error_after_part_was_sent_closes(self) -> None:
        """
        Part of a streamed message is out when its file fails: no
        terminator and no -ERR (the client would take either for message
        lines), the connection closes, the file is closed.
        """
        data = big(SMALL_MESSAGE + 100)
        self.maildir_store([data, SMALL[1]])
        self.fs.read_fails_after[b"Subject: big"] = CHUNK
        proto, t = self.login(PullPacedTransport())
        proto.dataReceived(b"RETR 1\r\nRETR 2\r\n")
        received = t.read_all()
        self.assertEqual(received, b"+OK %d octets\r\n" % len(data) + reference(data)[:CHUNK + 2])
        self.assertTrue(t.disconnecting)
        self.assertIsNone(t.producer)
        self.assertTrue(all(f.closed for f in self.fs.opened))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        proto.connectionLost(None)
        self.assertTrue(self.lock_is_free())
        self.assertFalse(any("\\Seen" in m.flags for m in self.stored()))


# -- the connection ends while we work --------------------------------------------


class DroppedTests(Mixin, SynchronousTestCase):
    def drop(self, proto: Any, t: Any, as_tcp: bool) -> None:
        if as_tcp and t.producer is not None:
            t.producer.stopProducing()  # TCP stops the producer, then tells the protocol
        proto.connectionLost(Failure(ConnectionDone()))

    def test_while_the_batch_is_in_the_worker_thread(self) -> None:
        for as_tcp in (False, True):
            self.maildir_store(SMALL)
            proto, t = self.login()
            self.threads.hold = True
            proto.dataReceived(b"DELE 5\r\nRETR 1\r\nRETR 2\r\nRETR 3\r\n")
            self.assertEqual(t.value(), b"+OK message 5 deleted\r\n")
            self.assertEqual(len(self.threads.held), 1)  # the batch
            self.drop(proto, t, as_tcp)
            self.threads.release()
            self.assertTrue(self.lock_is_free())
            self.assertEqual(t.value(), b"+OK message 5 deleted\r\n")  # nothing more
            self.assertEqual(proto.read_ahead._cache, {})  # the batch was dropped
            self.assertEqual(self.flushLoggedErrors(), [])
            stored = self.stored()
            self.assertEqual(len(stored), 5)  # DELE not applied
            self.assertFalse(any("\\Seen" in m.flags for m in stored))  # nothing was sent

    def test_while_the_requested_message_moved(self) -> None:
        """The batch comes back without the requested message (moved) after
        the drop: its single read is not attempted on the closed session."""
        self.maildir_store(SMALL)
        proto, t = self.login()
        self.threads.hold = True
        proto.dataReceived(b"RETR 1\r\nRETR 2\r\n")
        os.rename(self.path_of(SMALL[0]), os.path.join(self.store.root, "elsewhere"))
        self.drop(proto, t, as_tcp=False)
        self.threads.release()
        self.assertEqual(t.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_while_waiting_for_the_client(self) -> None:
        for as_tcp in (False, True):
            self.maildir_store([message(i, 20_000) for i in range(1, 30)])
            proto, t = self.login(PullPacedTransport())
            proto.dataReceived(b"DELE 29\r\n" + b"".join(b"RETR %d\r\n" % i for i in range(1, 29)))
            self.assertTrue(t.paused_producer)
            self.drop(proto, t, as_tcp)
            self.assertTrue(self.lock_is_free())
            t.read()
            self.assertEqual(self.flushLoggedErrors(), [])
            self.assertEqual(len(self.stored()), 29)

    def test_while_streaming(self) -> None:
        for as_tcp in (False, True):
            self.maildir_store([big(5 * CHUNK)])
            proto, t = self.login(PullPacedTransport())
            proto.dataReceived(b"DELE 1\r\nRSET\r\nRETR 1\r\n")
            t.read()
            self.assertIsInstance(t.producer, MessageProducer)
            self.drop(proto, t, as_tcp)
            self.assertTrue(all(f.closed for f in self.fs.opened))
            self.assertTrue(self.lock_is_free())
            self.assertEqual(self.flushLoggedErrors(), [])
            self.assertFalse("\\Seen" in self.stored()[0].flags)

    def test_quit_behind_a_read(self) -> None:
        """QUIT waits for the RETRs before it, then applies DELE."""
        self.maildir_store(SMALL)
        proto, t = self.login()
        self.threads.hold = True
        proto.dataReceived(b"RETR 1\r\nDELE 1\r\nRETR 2\r\nQUIT\r\n")
        self.assertEqual(t.value(), b"")
        self.threads.release()
        model = Model(SMALL, [])
        self.assertEqual(t.value(), model.answer("RETR 1") + b"+OK message 1 deleted\r\n"
                         + model.answer("RETR 2") + b"+OK bye\r\n")
        self.assertTrue(t.disconnecting)
        self.assertEqual(len(self.stored()), 4)
        self.assertTrue(self.lock_is_free())


# -- timeouts and shutdown --------------------------------------------------------


class TimeoutTests(Mixin, SynchronousTestCase):
    def test_not_while_the_client_reads_a_large_message(self) -> None:
        """The client takes a chunk every 400 s: it is not idle, though it
        sends nothing for far longer than the idle timeout."""
        data = big(20 * CHUNK)
        self.memory_store([data])
        proto, t = self.login(PullPacedTransport())
        proto.dataReceived(b"RETR 1\r\n")
        expected = b"+OK %d octets\r\n" % len(data) + reference(data)
        received = t.read_all(lambda: self.clock.advance(400), until=len(expected))
        self.assertEqual(received, expected)
        self.assertFalse(t.disconnecting)

    def test_not_while_the_client_reads_pipelined_messages(self) -> None:
        messages = [message(i, 100_000) for i in range(1, 21)]
        self.memory_store(messages)
        proto, t = self.login(PullPacedTransport())
        proto.dataReceived(b"".join(b"RETR %d\r\n" % i for i in range(1, 21)))
        expected = b"".join(Model(messages, []).answer(f"RETR {i}") for i in range(1, 21))
        received = t.read_all(lambda: self.clock.advance(400), until=len(expected))
        self.assertEqual(received, expected)
        self.assertFalse(t.disconnecting)

    def closes_mid_stream(self, end: Callable[[Any], None]) -> None:
        data = big(20 * CHUNK)
        self.memory_store([data])
        proto, t = self.login(PullPacedTransport())
        files: list[Any] = []
        session = proto.maildrop.session

        def opened(f: Any) -> Any:
            files.append(f)
            return f

        proto.maildrop.session = SessionSpy(session)
        proto.maildrop.session.open_message = (  # type: ignore[method-assign]
            lambda uid: session.open_message(uid).addCallback(opened))
        proto.dataReceived(b"RETR 1\r\nNOOP\r\n")  # NOOP is not answered after the cut
        received = t.read() + t.read()
        end(proto)  # the client stopped reading
        received += t.read_all()
        self.assertTrue(t.disconnecting)
        self.assertNotIn(b"-ERR", received)
        self.assertFalse(received.endswith(b"\r\n.\r\n"))
        self.assertTrue(reference(data).startswith(received[len(b"+OK %d octets\r\n" % len(data)):]))
        self.assertIsNone(t.producer)
        self.assertTrue(files[0].closed)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_timeout_mid_stream_sends_nothing_more(self) -> None:
        self.closes_mid_stream(lambda proto: self.clock.advance(IDLE))

    def test_shutdown_mid_stream_sends_nothing_more(self) -> None:
        self.closes_mid_stream(lambda proto: proto.shutdown())

    def test_timeout_during_a_read_drops_its_result(self) -> None:
        """Our read outlives the idle timeout (a stalled disk): the client
        got -ERR for its RETR; the message read late is not sent after it."""
        self.maildir_store(SMALL)
        proto, t = self.login()
        self.threads.hold = True
        proto.dataReceived(b"RETR 1\r\nRETR 2\r\n")
        self.clock.advance(IDLE)
        self.assertEqual(t.value(), b"-ERR idle timeout, closing connection\r\n")
        self.assertTrue(t.disconnecting)
        self.threads.release()
        self.assertEqual(t.value(), b"-ERR idle timeout, closing connection\r\n")
        self.assertEqual(self.flushLoggedErrors(), [])
        proto.connectionLost(None)
        self.assertTrue(self.lock_is_free())

    def test_shutdown_during_a_large_open_drops_it(self) -> None:
        self.maildir_store([big(SMALL_MESSAGE + 100)])
        proto, t = self.login()
        self.threads.hold = True
        proto.dataReceived(b"RETR 1\r\n")
        proto.shutdown()
        self.threads.release()
        self.assertEqual(t.value(), b"-ERR [SYS/TEMP] server shutting down\r\n")
        self.assertIsNone(t.producer)
        self.assertTrue(all(f.closed for f in self.fs.opened))


# -- what a client that does not read makes us hold ----------------------------------


class MemoryBoundTests(Mixin, SynchronousTestCase):
    threshold = 64 * 1024  # Twisted's TCP bufferSize

    def held(self, proto: Any, t: Any) -> int:
        cache = sum(len(v) for v in proto.read_ahead._cache.values())
        return len(t.value()) + cache

    def check_bound(self, messages: list[bytes], pipeline: bytes, bound: int) -> None:
        self.memory_store(messages)
        t = PullPacedTransport()
        t.threshold = self.threshold
        proto, t = self.login(t)
        most = [0]
        write = t.write

        def measured(data: bytes) -> None:
            write(data)
            most[0] = max(most[0], self.held(proto, t))

        t.write = measured  # type: ignore[method-assign]
        proto.dataReceived(pipeline)
        self.assertLessEqual(most[0], bound)
        received = t.read_all()
        self.assertTrue(received)
        self.assertLessEqual(most[0], bound)

    def test_retr_top_small_and_large(self) -> None:
        """RETR and TOP of messages sent whole and streamed, pipelined by a
        client that reads nothing: what we hold stays under about 0.5 MiB
        (the transport's threshold, a requested message, a read-ahead)."""
        messages = [message(i, 100_000) for i in range(1, 30)] + [big(3 * SMALL_MESSAGE)] * 3
        pipeline = b"".join(b"RETR %d\r\nTOP %d 5000\r\n" % (i, i) for i in range(1, 33))
        self.check_bound(messages, pipeline * 3,
                         self.threshold + SMALL_MESSAGE + READ_AHEAD + 8192)

    def test_listings(self) -> None:
        """UIDL and LIST of a large maildrop, pipelined: replies wait for the
        client like messages do (each one of 6 octets made us hold 60 KB)."""
        messages = [b"Subject: %d\r\n\r\nx\r\n" % i for i in range(2000)]
        pipeline = b"UIDL\r\nLIST\r\nSTAT\r\n" * 300
        self.check_bound(messages, pipeline, 3 * self.threshold)


    def test_quit_is_answered_while_the_client_has_not_read(self) -> None:
        """The gate holds every command but QUIT: the session ends (and
        applies its DELE) as soon as the client says so."""
        messages = [message(i, 100_000) for i in range(1, 4)]
        self.memory_store(messages)
        proto, t = self.login(PullPacedTransport())
        proto.dataReceived(b"DELE 3\r\nRETR 1\r\nQUIT\r\n")
        self.assertEqual(t.value(), b"+OK message 3 deleted\r\n"
                         + Model(messages, []).answer("RETR 1") + b"+OK bye\r\n")
        self.assertTrue(t.disconnecting)
        self.assertEqual(len(self.stored()), 2)


class ProducerFaultTests(SynchronousTestCase):
    """L{MessageProducer} and L{FlowGate} on their own."""

    def test_prime_failure_sends_nothing(self) -> None:
        f = FailingFile(big(3 * CHUNK), 0)
        transport = StringTransport()
        producer = MessageProducer(f, transport, Stuffer())
        self.assertRaises(OSError, producer.prime)
        self.assertTrue(f.closed)
        self.assertIsNone(transport.producer)
        self.assertEqual(transport.value(), b"")

    def test_read_failure_mid_stream(self) -> None:
        data = big(3 * CHUNK)
        f = FailingFile(data, CHUNK)
        transport = StringTransport()
        calls: list[None] = []
        producer = MessageProducer(f, transport, Stuffer(), progress=lambda: calls.append(None))
        producer.prime()
        d = producer.start()
        for _ in range(3):
            if transport.producer is not None:
                transport.producer.resumeProducing()
        failure = self.failureResultOf(d, MessageCutShort)
        self.assertTrue(failure.value.cause.check(OSError))
        self.assertEqual(transport.value(), reference(data)[:CHUNK + 2])  # no terminator
        self.assertTrue(f.closed)
        self.assertIsNone(transport.producer)
        self.assertEqual(len(calls), 2)  # each time the transport asked for more
        producer.stopProducing()  # late: nothing happens
        producer.resumeProducing()
        self.assertEqual(transport.value(), reference(data)[:CHUNK + 2])

    def test_stop(self) -> None:
        f = io.BytesIO(big(3 * CHUNK))
        transport = StringTransport()
        producer = MessageProducer(f, transport, Stuffer())
        d = producer.start()
        producer.resumeProducing()
        producer.stop()
        self.failureResultOf(d, ConnectionError)
        self.assertTrue(f.closed)
        self.assertIsNone(transport.producer)

    def test_gate_progress(self) -> None:
        calls: list[None] = []
        gate = FlowGate(StringTransport(), progress=lambda: calls.append(None))
        gate.attach()
        gate.pauseProducing()
        self.assertEqual(calls, [])
        gate.resumeProducing()
        self.assertEqual(calls, [None])
