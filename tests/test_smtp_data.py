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
