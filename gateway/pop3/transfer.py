# -*- test-case-name: tests.test_pop3_transfer -*-
"""
Sending a message over POP3 (RFC 1939 section 3): byte-stuffed, CRLF line
ends, ended by C{CRLF . CRLF}, streamed from its file in large chunks.

L{Stuffer} is pure: feed it chunks of the stored message (which the store
keeps with CRLF line ends), it returns the bytes to send.  For TOP it stops
after the header and C{n} body lines (RFC 1939 section 7).  L{MessageProducer}
pushes a file through it to the transport as a pull producer, so a large
message is never in memory whole and a slow client is not flooded.
A read that fails once part of the message is out ends it with
L{MessageCutShort}: the protocol must then close the connection.
L{FlowGate} tells the protocol when the transport has sent what it was
given, so that messages sent whole are not piled up for a client that does
not read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

CHUNK = 64 * 1024


class Stuffer:
    """
    @param body_lines: C{None} to send everything (RETR); otherwise send the
        header, the blank line, and at most this many body lines (TOP).
    """

    def __init__(self, body_lines: int | None = None) -> None:
        self.body_lines = body_lines
        self.at_line_start = True
        self.in_body = False
        self.done = False
        self._content = 0  # octets of the current line so far (CR included)
        self._last = 0  # the last octet seen

    def feed(self, chunk: bytes) -> bytes:
        if self.done or not chunk:
            return b""
        if self.body_lines is None:
            # RETR: stuffing is one replace over the chunk (the store keeps
            # CRLF line ends, so every line start follows a LF).
            head = b"." if self.at_line_start and chunk[:1] == b"." else b""
            self.at_line_start = chunk.endswith(b"\n")
            return head + chunk.replace(b"\n.", b"\n..")
        out = bytearray()
        start, n = 0, len(chunk)
        while start < n:
            if self.at_line_start:
                if self.in_body and self.body_lines is not None and self.body_lines <= 0:
                    self.done = True
                    break
                if chunk[start] == 0x2E:  # "." at a line start is doubled
                    out += b"."
                self.at_line_start = False
                self._content = 0
            end = chunk.find(b"\n", start)
            if end < 0:
                out += chunk[start:]
                self._content += n - start
                self._last = chunk[-1]
                break
            out += chunk[start:end + 1]
            before = chunk[end - 1] if end > start else self._last
            self._content += end - start
            empty = self._content == 0 or (self._content == 1 and before == 0x0D)
            self._last = 0x0A
            self._end_line(empty)
            start = end + 1
        return bytes(out)

    def _end_line(self, empty: bool) -> None:
        self.at_line_start = True
        if self.in_body:
            if self.body_lines is not None:
                self.body_lines -= 1
        elif empty:
            self.in_body = True

    def finish(self) -> bytes:
        """The terminator, after a CRLF if the message did not end with one."""
        return (b"" if self.at_line_start else b"\r\n") + b".\r\n"


class MessageCutShort(Exception):
    """
    Reading the message failed after part of it was sent: the reply can be
    neither finished nor followed by C{-ERR} (the client would read either
    as message lines), so the connection must close.

    @ivar cause: the read's L{Failure}, for the log.
    """

    def __init__(self, cause: Failure) -> None:
        super().__init__("reading the message failed while sending it")
        self.cause = cause


@implementer(IPullProducer)
class MessageProducer:
    """
    Stream one file through a L{Stuffer} to a transport.

    @param progress: called each time the transport asks for more, that
        is, the client has taken what was sent (the protocol's idle timer).
    """

    def __init__(self, file: IO[bytes], transport: Any, stuffer: Stuffer,
                 progress: Callable[[], object] | None = None) -> None:
        self.file = file
        self.transport = transport
        self.stuffer = stuffer
        self.progress = progress
        self.deferred: Deferred[None] = Deferred()
        self._first: bytes | None = None

    def prime(self) -> None:
        """
        Read the first chunk now, before the caller sends its C{+OK}: a file
        that cannot be read at all is then an ordinary C{-ERR}, not a reply
        cut short.

        @raise OSError: the read failed; the file is closed.
        """
        try:
            self._first = self.file.read(CHUNK)
        except BaseException:
            self.file.close()
            raise

    def start(self) -> Deferred[None]:
        """
        @return: fires once the terminator is written; errback
            L{MessageCutShort} if a read failed, C{ConnectionError} if the
            connection was lost or L{stop} was called.
        """
        self.transport.registerProducer(self, False)
        return self.deferred

    def resumeProducing(self) -> None:
        if self.deferred.called:
            return
        if self.progress is not None:
            self.progress()
        try:
            if self._first is not None:
                chunk, self._first = self._first, None
            else:
                chunk = self.file.read(CHUNK) if not self.stuffer.done else b""
        except Exception:
            self._end(MessageCutShort(Failure()))
            return
        if chunk:
            data = self.stuffer.feed(chunk)
            if data:
                self.transport.write(data)
            if not self.stuffer.done:
                return
        self.transport.write(self.stuffer.finish())
        self._end(None)

    def stopProducing(self) -> None:
        self._end(ConnectionError("connection lost while sending a message"))

    def stop(self) -> None:
        """The protocol closes the connection: send no more, close the file."""
        self._end(ConnectionError("connection closed while sending a message"))

    def _end(self, error: Exception | None) -> None:
        if self.deferred.called:
            return
        self.file.close()
        self.transport.unregisterProducer()
        if error is None:
            self.deferred.callback(None)
        else:
            self.deferred.errback(error)


@implementer(IPushProducer)
class FlowGate:
    """
    A streaming producer that produces nothing itself: registered with the
    transport, it is paused when the transport's send buffer goes over its
    threshold (C{bufferSize}, 64 KiB for TCP) and resumed once the buffer
    is sent, and L{wait} lets the protocol hold its next read until then.

    While a gate is registered a TLS transport does not finish closing, and
    a TCP one does not close if the gate is paused: L{detach} before
    closing (and before registering another producer).
    """

    def __init__(self, transport: Any, progress: Callable[[], object] | None = None) -> None:
        self.transport = transport
        self.progress = progress  # called when the transport has sent its buffer
        self.attached = False
        self.paused = False
        self.stopped = False
        self._waiting: list[Deferred[None]] = []

    def attach(self) -> None:
        if not self.attached and not self.stopped:
            self.attached = True
            self.transport.registerProducer(self, True)

    def detach(self, closing: bool = False) -> None:
        """
        Unregister.  Waiters go on at once (the transport's buffer is no
        longer watched: the protocol streams a message itself) or, if
        C{closing}, fail with L{ConnectionDone} and no further wait
        succeeds.
        """
        if self.attached:
            self.attached = False
            self.transport.unregisterProducer()
        self.paused = False
        if closing:
            self.stopProducing()
        else:
            self._release()

    def wait(self) -> Deferred[None]:
        """Fires once the transport is under its threshold (now if it is);
        errback L{ConnectionDone} if the connection is lost first."""
        if self.stopped:
            return fail(ConnectionDone("connection lost"))
        if not (self.attached and self.paused):
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.progress is not None:
            self.progress()
        self._release()

    def stopProducing(self) -> None:
        self.stopped = True
        self.attached = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(ConnectionDone("connection lost"))

    def _release(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
