# -*- test-case-name: tests.test_smtp_data -*-
"""
The DATA phase as a pure byte scanner.

Only C{CRLF "." CRLF} ends a message (RFC 5321 section 4.1.1.4): a bare
C{LF} or C{CR} is never a line end, so C{<LF>.<LF>}, C{<CR>.<CR>},
C{<LF>.<CR><LF>} and the like never end the message early (the 2023 "SMTP
smuggling" class).  A message that contains a bare CR or LF is read to its
real end and then refused as a whole (RFC 5321 section 2.3.8), as Postfix
does with C{smtpd_forbid_bare_newline}; nothing of it is stored, and
nothing after it is read as commands.

Lines longer than RFC 5321's 1000 octets do not end the message either
(Twisted's server ends DATA at its line limit and reads the rest as
commands): they are counted, and the message is refused at its end when
the operator's C{max_line_length} is exceeded.  The size limit works the same
way: the message is read to its end and refused, never cut short.

Dot-stuffing is undone (RFC 5321 section 4.5.2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataResult:
    """
    The message once its end was seen.

    @ivar data: the unstuffed message, CRLF line ends (empty when refused).
    @ivar problem: C{None}, or why the message is refused:
        C{"size"}, C{"bare-newline"} or C{"line-length"}.
    @ivar rest: bytes after the end marker (pipelined commands).
    """

    data: bytes
    problem: str | None
    rest: bytes


class DataReader:
    """
    Feed it the bytes after the C{354} reply; it returns a L{DataResult}
    once the end marker arrives, C{None} before.

    Each read is scanned whole (L{_by_chunk}): the end marker with one
    C{find}, bare CR or LF by counting C{CR}, C{LF} and C{CRLF}, line
    lengths with one C{split}, dot-stuffing with one C{replace}.  Whenever
    a read is not plainly clean (a bare CR or LF, a long or stuffed long
    line, the size limit reached), it is read line by line instead
    (L{_by_line}), which decides what the problem is; once the message is
    refused, the rest is only searched for its end (L{_skip}).
    """

    def __init__(self, max_size: int, max_line: int) -> None:
        self.max_size = max_size
        self.max_line = max_line
        self._parts: list[bytes] = []  # the unstuffed message so far
        self._size = 0
        self._partial = b""  # an unfinished line (starting at a line start...
        self._continued = False  # ...unless it is the tail of a line already cut)
        self.problem: str | None = None

    def feed(self, data: bytes) -> DataResult | None:
        buffer = self._partial + data if self._partial else data
        self._partial = b""
        if self.problem is not None:
            return self._skip(buffer)
        return self._by_chunk(buffer)

    def _by_chunk(self, buffer: bytes) -> DataResult | None:
        """The usual case: C{buffer} starts at a line start, no problem yet."""
        if buffer.startswith(b".\r\n"):
            end = 0
        else:
            end = buffer.find(b"\r\n.\r\n")
            if end >= 0:
                end += 2
        if end >= 0:
            lines, tail = buffer[:end], b""
        else:
            cut = buffer.rfind(b"\r\n")
            cut = cut + 2 if cut >= 0 else 0
            lines, tail = buffer[:cut], buffer[cut:]
        cr = lines.count(b"\r")
        if (len(tail) > self.max_line + 2 or cr != lines.count(b"\n")
                or cr != lines.count(b"\r\n")
                or (len(lines) > self.max_line + 2
                    and max(map(len, lines.split(b"\r\n"))) > self.max_line)):
            return self._by_line(buffer)
        body = lines.replace(b"\r\n.", b"\r\n")
        if body.startswith(b"."):
            body = body[1:]
        if self._size + len(body) > self.max_size:
            return self._by_line(buffer)
        self._size += len(body)
        if body:
            self._parts.append(body)
        if end < 0:
            self._partial = tail
            return None
        data, self._parts = b"".join(self._parts), []
        return DataResult(data, None, buffer[end + 3:])

    def _skip(self, buffer: bytes) -> DataResult | None:
        """The message is refused: only look for its end."""
        if not self._continued and buffer.startswith(b".\r\n"):
            rest = buffer[3:]
        else:
            end = buffer.find(b"\r\n.\r\n")
            if end < 0:
                line = buffer.rfind(b"\r\n")
                if line >= 0:
                    buffer, self._continued = buffer[line + 2:], False
                if self._continued or not b".\r".startswith(buffer):
                    # Not the start of the marker: only a CR at its end
                    # may begin one.
                    buffer, self._continued = buffer[-1:], True
                self._partial = buffer
                return None
            rest = buffer[end + 5:]
        self._parts, self._continued = [], False
        return DataResult(b"", self.problem, rest)

    def _by_line(self, buffer: bytes) -> DataResult | None:
        """One line at a time: exact about which problem comes first."""
        start = 0
        while True:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 2
            if self._continued:
                # The end of an over-long line: never a terminator, never
                # unstuffed; already counted as a line-length problem.
                self._continued = False
                self._account(len(line) + 2)
                continue
            if line == b".":
                rest = buffer[start:]
                body = b"" if self.problem else b"".join(self._parts)
                self._parts = []
                return DataResult(body, self.problem, rest)
            self._take(line)
            if self.problem is not None:
                return self._skip(buffer[start:])
        self._partial = buffer[start:]
        # A line still growing without CRLF: judge it now, keep only a
        # bounded tail (enough to find CRLF across reads).
        if len(self._partial) > self.max_line + 2:
            if self.problem is None:
                self.problem = "line-length"
            self._account(len(self._partial) - 1)
            self._partial = self._partial[-1:]
            self._continued = True
        return None

    def _take(self, line: bytes) -> None:
        if line.startswith(b"."):
            line = line[1:]
        if self.problem is None and (b"\r" in line or b"\n" in line):
            self.problem = "bare-newline"
        if self.problem is None and len(line) > self.max_line:
            self.problem = "line-length"
        self._account(len(line) + 2)
        if self.problem is None:
            self._parts.append(line + b"\r\n")

    def _account(self, n: int) -> None:
        self._size += n
        if self._size > self.max_size and self.problem is None:
            self.problem = "size"
        if self.problem is not None:
            self._parts = []
