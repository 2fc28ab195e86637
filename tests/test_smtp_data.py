"""The DATA scanner: only CRLF.CRLF ends a message (the smuggling class)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.smtp.data import DataReader


def read(*chunks: bytes, max_size: int = 10_000, max_line: int = 1000):  # type: ignore[no-untyped-def]
    reader = DataReader(max_size, max_line)
    result = None
    for chunk in chunks:
        assert result is None, "ended early"
        result = reader.feed(chunk)
    return result


class DataReaderTests(SynchronousTestCase):
    def test_simple(self) -> None:
        r = read(b"Subject: x\r\n\r\nhello\r\n.\r\n")
        self.assertEqual((r.data, r.problem, r.rest), (b"Subject: x\r\n\r\nhello\r\n", None, b""))

    def test_split_across_reads(self) -> None:
        r = read(b"a\r", b"\nb\r\n.", b"\r", b"\nQUIT\r\n")
        self.assertEqual((r.data, r.rest), (b"a\r\nb\r\n", b"QUIT\r\n"))

    def test_dot_unstuffing(self) -> None:
        r = read(b"..leading dot\r\n...\r\n.\r\n")
        self.assertEqual(r.data, b".leading dot\r\n..\r\n")

    def test_smuggling_variants_never_end_the_message(self) -> None:
        """<LF>.<LF>, <CR>.<CR>, <LF>.<CR><LF>, <CR><LF>.<LF> are not the end."""
        for marker in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"):
            reader = DataReader(10_000, 1000)
            partial = reader.feed(b"hello" + marker + b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\n")
            self.assertIsNone(partial, marker)
            r = reader.feed(b".\r\n")
            self.assertEqual((r.problem, r.data, r.rest), ("bare-newline", b"", b""), marker)

    def test_size_limit_reads_to_the_end(self) -> None:
        r = read(b"x" * 500 + b"\r\n" + b"y" * 700 + b"\r\n.\r\nNOOP\r\n", max_size=1000)
        self.assertEqual((r.problem, r.data, r.rest), ("size", b"", b"NOOP\r\n"))

    def test_long_line_does_not_end_data(self) -> None:
        """Twisted ends DATA at a long line and reads the rest as commands; we do not."""
        long = b"z" * 5000
        r = read(long[:2000], long[2000:] + b"\r\nMAIL FROM:<smuggled@evil>\r\n.\r\nNOOP\r\n")
        self.assertEqual((r.problem, r.rest), ("line-length", b"NOOP\r\n"))

    def test_long_line_ending_in_dot(self) -> None:
        """The tail of a cut line is never mistaken for the end marker."""
        reader = DataReader(100_000, 1000)
        self.assertIsNone(reader.feed(b"a" * 3000 + b"."))
        self.assertIsNone(reader.feed(b"\r\nMAIL FROM:<x@y>\r\n"))
        r = reader.feed(b".\r\n")
        self.assertEqual(r.problem, "line-length")

    def test_empty_message(self) -> None:
        r = read(b".\r\n")
        self.assertEqual((r.data, r.problem), (b"", None))

    @given(st.lists(st.binary(max_size=200).filter(lambda b: b"\r\n.\r\n" not in b"\r\n" + b),
                    max_size=8), st.integers(min_value=1, max_value=50))
    def test_round_trip_of_stuffed_lines(self, lines: list[bytes], cut: int) -> None:
        """Any text, dot-stuffed and sent in pieces, comes back exactly or is refused."""
        clean = [line.replace(b"\r", b"").replace(b"\n", b"") for line in lines]
        wire = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                        for line in clean) + b".\r\n"
        reader = DataReader(1_000_000, 1000)
        result = None
        for i in range(0, len(wire), cut):
            self.assertIsNone(result)
            result = reader.feed(wire[i:i + cut])
        self.assertIsNotNone(result)
        self.assertEqual(result.data, b"".join(line + b"\r\n" for line in clean))


class LineByLine:
    """
    The reference: the reader as it was before it scanned whole reads, one
    line at a time.  L{DataReader} must end the message at the same byte
    and give the same data, problem and rest, however the input is cut.
    """

    def __init__(self, max_size: int, max_line: int) -> None:
        self.max_size, self.max_line = max_size, max_line
        self.lines: list[bytes] = []
        self.size = 0
        self.partial = b""
        self.continued = False
        self.problem: str | None = None

    def feed(self, data: bytes) -> tuple[bytes, str | None, bytes] | None:
        buffer = self.partial + data
        start = 0
        while True:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 2
            if self.continued:
                self.continued = False
                self.account(len(line) + 2)
                continue
            if line == b".":
                return (b"" if self.problem else b"".join(self.lines), self.problem,
                        buffer[start:])
            if line.startswith(b"."):
                line = line[1:]
            if self.problem is None and (b"\r" in line or b"\n" in line):
                self.problem = "bare-newline"
            if self.problem is None and len(line) > self.max_line:
                self.problem = "line-length"
            self.account(len(line) + 2)
            if self.problem is None:
                self.lines.append(line + b"\r\n")
        self.partial = buffer[start:]
        if len(self.partial) > self.max_line + 2:
            if self.problem is None:
                self.problem = "line-length"
            self.account(len(self.partial) - 1)
            self.partial = self.partial[-1:]
            self.continued = True
        return None

    def account(self, n: int) -> None:
        self.size += n
        if self.size > self.max_size and self.problem is None:
            self.problem = "size"
        if self.problem is not None:
            self.lines = []


#: Pieces that make the hard cases likely: line ends whole and bare, dots
#: at line starts, runs longer than the line limit below.
PIECES = st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.\r\n", b"\r\n.",
                          b"a", b"bc", b"x" * 7, b"y" * 13, b"MAIL FROM:<e@v>"])


class ChunkScanTests(SynchronousTestCase):
    @given(st.lists(PIECES, max_size=60), st.lists(st.integers(1, 40), min_size=1, max_size=8),
           st.integers(8, 20), st.integers(20, 200))
    def test_same_as_line_by_line(self, pieces: list[bytes], cuts: list[int], max_line: int,
                                  max_size: int) -> None:
        """Whatever the bytes and however they are cut into reads: the same
        end, data, problem and rest as the line-by-line reader."""
        wire = b"".join(pieces) + b"\r\n.\r\nQUIT\r\n"
        reader, reference = DataReader(max_size, max_line), LineByLine(max_size, max_line)
        at, turn = 0, 0
        while at < len(wire):
            chunk = wire[at:at + cuts[turn % len(cuts)]]
            at, turn = at + len(chunk), turn + 1
            got, expected = reader.feed(chunk), reference.feed(chunk)
            if expected is None:
                self.assertIsNone(got, (wire, at))
                continue
            assert got is not None, (wire, at)
            self.assertEqual((got.data, got.problem, got.rest), expected, wire)
            return
        self.fail(f"no end found in {wire!r}")

    def test_stuffed_line_at_the_limit(self) -> None:
        """A line one octet over the limit only because of its stuffing dot is fine."""
        r = read(b".." + b"z" * 9 + b"\r\n.\r\n", max_line=10)
        self.assertEqual((r.data, r.problem), (b"." + b"z" * 9 + b"\r\n", None))

    def test_refused_message_is_skipped_to_its_end(self) -> None:
        reader = DataReader(10_000, 1000)
        self.assertIsNone(reader.feed(b"bare\nLF\r\n"))
        for chunk in (b"x" * 3000, b"\r", b"\n.", b"\r"):
            self.assertIsNone(reader.feed(chunk))
        r = reader.feed(b"\nNOOP\r\n")
        assert r is not None
        self.assertEqual((r.data, r.problem, r.rest), (b"", "bare-newline", b"NOOP\r\n"))

    def test_whole_message_in_one_read(self) -> None:
        body = b"".join(b"line %d\r\n" % i for i in range(100))
        r = read(body + b".\r\n")
        self.assertEqual((r.data, r.problem, r.rest), (body, None, b""))

    def test_lf_cr_is_not_a_line_end(self) -> None:
        """As many CRs as LFs, but not in pairs: still bare."""
        for text in (b"a\n\rb\r\n", b"\n\r\r\n", b"a\r\r\n\nb\r\n"):
            r = read(text + b".\r\n")
            self.assertEqual((r.data, r.problem), (b"", "bare-newline"), text)
