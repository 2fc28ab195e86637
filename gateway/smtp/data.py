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
    """

    def __init__(self, max_size: int, max_line: int) -> None:
        self.max_size = max_size
        self.max_line = max_line
        self._lines: list[bytes] = []
        self._size = 0
        self._partial = b""
        self._continued = False  # the current line was already cut (too long)
        self.problem: str | None = None

    def feed(self, data: bytes) -> DataResult | None:
        buffer = self._partial + data
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
                self._partial = b""
                body = b"" if self.problem else b"".join(self._lines)
                self._lines = []
                return DataResult(body, self.problem, rest)
            self._take(line)
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
            self._lines.append(line + b"\r\n")

    def _account(self, n: int) -> None:
        self._size += n
        if self._size > self.max_size and self.problem is None:
            self.problem = "size"
        if self.problem is not None:
            self._lines = []
