"""
The SMTP server review: the session state machine (RFC 5321 sections 3 and
4.1), pipelining (RFC 2920), the trace header (RFC 5321 section 4.4, RFC
3848) and the outbound spool.  Regression tests are named after what they
prevent.
"""

from __future__ import annotations

import email.utils
import json
import os
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Limits
from gateway.smtp.delivery import Delivery, Envelope, received_header
from gateway.smtp.spool import Spool
from gateway.store.fs import FileSystem
from tests.test_protocols import lines
from tests.test_smtp_transaction import Book, TransactionTestCase

TRANSACTION = b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\nDATA\r\n"
SMUGGLED = (b"MAIL FROM:<x@else.org>\r\nRCPT TO:<alice@example.edu>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n")


def received_of(message: bytes) -> bytes:
    """The first Received: field of a stored message, unfolded."""
    start = message.index(b"Received:")
    end = message.index(b"\r\n", start)
    while message[end + 2:end + 3] in (b" ", b"\t"):
        end = message.index(b"\r\n", end + 2)
    return message[start:end].replace(b"\r\n", b"")


class CommandTests(TransactionTestCase):
    """RFC 5321 section 4.1: each command in each state."""

    def test_helo_offers_no_extensions_and_refuses_parameters(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"HELO client.example.org\r\n")
        self.assertEqual(lines(t), [b"250 mail.example.edu"])
        proto.dataReceived(b"MAIL FROM:<x@else.org> SIZE=10\r\nMAIL FROM:<x@else.org> BODY=8BITMIME\r\n"
                           b"AUTH PLAIN\r\nMAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\n"
                           b"DATA\r\nhi\r\n.\r\n")
        replies = lines(t)
        self.assertEqual(replies[:6], [b"555 5.5.4 parameters need EHLO",
                                       b"555 5.5.4 parameters need EHLO",
                                       b"503 5.5.1 EHLO first", b"250 2.1.0 sender OK",
                                       b"250 2.1.5 recipient OK",
                                       b"354 end data with <CR><LF>.<CR><LF>"])
        self.assertTrue(replies[6].startswith(b"250 2.0.0 OK queued as "))
        self.assertIn(b" with SMTP\r\n", self.inbox("bob@example.edu")[0])

    def test_second_ehlo_resets_the_transaction(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\n"
                           b"EHLO again.example\r\nDATA\r\n")
        self.assertEqual(lines(t)[-1], b"503 5.5.1 MAIL first")
        proto.dataReceived(b"RCPT TO:<bob@example.edu>\r\nMAIL FROM:<y@else.org>\r\n")
        self.assertEqual(lines(t), [b"503 5.5.1 MAIL first", b"250 2.1.0 sender OK"])

    def test_rset_noop_help_vrfy(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRSET\r\nRCPT TO:<bob@example.edu>\r\n"
                           b"NOOP with an argument\r\nHELP MAIL\r\nVRFY bob\r\n"
                           b"VRFY nobody@example.edu\r\n")
        self.assertEqual(lines(t), [
            b"250 2.1.0 sender OK", b"250 2.0.0 OK", b"503 5.5.1 MAIL first", b"250 2.0.0 OK",
            b"214 2.0.0 see RFC 5321",
            b"252 2.5.0 cannot VRFY user, but will accept message and attempt delivery",
            b"252 2.5.0 cannot VRFY user, but will accept message and attempt delivery",
        ])

    def test_expn_refused_without_listing_or_counting(self) -> None:
        """EXPN is refused as a command not implemented (502, RFC 5321
        section 3.5.3), lists no member, and is no bad command: it was
        answered with 500 and counted toward max_bad_commands."""
        proto, t = self.open(limits=Limits(max_message_size=10_000, max_bad_commands=2))
        proto.dataReceived(b"EXPN staff@example.edu\r\nEXPN staff\r\n")
        replies = lines(t)
        self.assertEqual([r[:9] for r in replies], [b"502 5.5.1", b"502 5.5.1"])
        self.assertFalse(any(b"alice" in r or b"bob" in r for r in replies))
        self.assertFalse(t.disconnecting)

    def test_unknown_commands_counted_and_the_last_one_answered(self) -> None:
        """Each unknown command is answered 500 and counted; the one that
        reaches the limit is answered too, with the 421 of the close (RFC
        5321 section 3.8): it was closed without a word."""
        proto, t = self.open(limits=Limits(max_message_size=10_000, max_bad_commands=3))
        proto.dataReceived(b"XYZZY\r\nmail\r\n")
        self.assertEqual(lines(t), [b"500 5.5.2 command not recognized",
                                    b"501 5.5.4 syntax: FROM:<address>"])
        proto.dataReceived(b"FOO bar\r\n")
        self.assertFalse(t.disconnecting)
        self.assertEqual(lines(t), [b"500 5.5.2 command not recognized"])
        proto.dataReceived(b"bar\r\nNOOP\r\n")
        self.assertEqual(lines(t), [b"421 4.7.0 mail.example.edu too many errors, "
                                    b"closing connection"])
        self.assertTrue(t.disconnecting)

    def test_lower_case_and_trailing_spaces(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"ehlo c.example   \r\nmail from:<x@else.org>  \r\n"
                           b"Rcpt To:<bob@example.edu> \r\ndata \r\nhi\r\n.\r\nnoop \r\nquit \r\n")
        codes = [line[:3] for line in lines(t)]
        self.assertEqual(codes[-6:], [b"250", b"250", b"354", b"250", b"250", b"221"])
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)

    def test_sequence(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"RCPT TO:<bob@example.edu>\r\nDATA\r\n")
        self.assertEqual(lines(t), [b"503 5.5.1 MAIL first", b"503 5.5.1 MAIL first"])
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nDATA\r\n")
        self.assertEqual(lines(t), [b"250 2.1.0 sender OK", b"554 5.5.1 no valid recipients"])

    def test_bdat_chunk_not_run_as_commands(self) -> None:
        """
        CHUNKING is not offered; a client sending BDAT anyway follows it
        with that many octets of message, which must not be read as
        commands (here a whole transaction to alice).
        """
        proto, t = self.open()
        proto.dataReceived(b"EHLO c.example\r\n")
        self.assertFalse(any(b"CHUNKING" in line or b"BINARYMIME" in line for line in lines(t)))
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\n")
        lines(t)
        proto.dataReceived(b"BDAT %d LAST\r\n" % len(SMUGGLED) + SMUGGLED + b"NOOP\r\n")
        replies = lines(t)
        self.assertEqual(replies[0][:4], b"502 ")
        self.assertNotIn(b"354 end data with <CR><LF>.<CR><LF>", replies)
        self.assertEqual(self.inbox("alice@example.edu"), [])
        self.assertEqual(self.inbox("bob@example.edu"), [])

    def test_bdat_chunk_split_across_reads(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"BDAT %d\r\n" % len(SMUGGLED) + SMUGGLED[:20])
        self.assertEqual([r[:4] for r in lines(t)], [b"502 "])
        proto.dataReceived(SMUGGLED[20:] + b"NOOP\r\n")
        self.assertEqual(lines(t), [b"250 2.0.0 OK"])
        self.assertEqual(self.inbox("alice@example.edu"), [])

    def test_quit_mid_transaction_stores_nothing(self) -> None:
        proto, t = self.open()
        proto.dataReceived(TRANSACTION[:-6] + b"QUIT\r\nDATA\r\nhi\r\n.\r\n")
        self.assertEqual(lines(t)[-1], b"221 2.0.0 mail.example.edu closing connection")
        self.assertTrue(t.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(self.inbox("bob@example.edu"), [])

    def test_messages_per_connection(self) -> None:
        """After max_messages_per_connection messages, MAIL is answered 421
        and the connection closed; what was pipelined after it is not run."""
        proto, t = self.open()
        for _ in range(5):
            proto.dataReceived(TRANSACTION + b"hi\r\n.\r\n")
        self.assertEqual(len(self.inbox("bob@example.edu")), 5)
        lines(t)
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\nNOOP\r\n")
        self.assertEqual(lines(t), [b"421 4.7.0 too many messages on this connection"])
        self.assertTrue(t.disconnecting)

    def test_body_values(self) -> None:
        proto, t = self.open()
        for value, reply in ((b"7BIT", b"250 2.1.0 sender OK"), (b"8bitmime", b"250 2.1.0 sender OK"),
                             (b"BINARYMIME", b"501 5.5.4 BODY must be 7BIT or 8BITMIME"),
                             (b"", b"501 5.5.4 malformed parameter")):
            proto.dataReceived(b"MAIL FROM:<x@else.org> BODY=" + value + b"\r\nRSET\r\n")
            self.assertEqual(lines(t), [reply, b"250 2.0.0 OK"], value)

    def test_size_values(self) -> None:
        proto, t = self.open()
        for value, reply in ((b"0", b"250 2.1.0 sender OK"), (b"10000", b"250 2.1.0 sender OK"),
                             (b"1" * 40, b"552 5.3.4 message size exceeds the limit"),
                             (b"-1", b"501 5.5.4 SIZE needs a number"),
                             (b"ten", b"501 5.5.4 SIZE needs a number")):
            proto.dataReceived(b"MAIL FROM:<x@else.org> SIZE=" + value + b"\r\nRSET\r\n")
            self.assertEqual(lines(t), [reply, b"250 2.0.0 OK"], value)
        proto.dataReceived(b"MAIL FROM:<x@else.org> SIZE\r\n")
        self.assertEqual(lines(t), [b"501 5.5.4 SIZE needs a number"])

    def test_eight_bit_message_with_and_without_smtputf8(self) -> None:
        body = "Subject: Grüße\r\n\r\nÄpfel\r\n".encode()
        for params, protocol in ((b"", b"with ESMTP\r\n"), (b" SMTPUTF8", b"with UTF8SMTP\r\n")):
            proto, t = self.open()
            proto.dataReceived(b"MAIL FROM:<x@else.org>" + params + b" BODY=8BITMIME\r\n"
                               b"RCPT TO:<bob@example.edu>\r\nDATA\r\n" + body + b".\r\n")
            self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued"), params)
            message = self.inbox("bob@example.edu")[-1]
            self.assertTrue(message.endswith(b"\r\n" + body))
            self.assertIn(protocol, message)


class PipeliningTests(TransactionTestCase):
    """RFC 2920."""

    def test_whole_transaction_in_one_packet(self) -> None:
        proto, t = self.open()
        lines(t)
        proto.dataReceived(b"EHLO c.example\r\nMAIL FROM:<x@else.org>\r\n"
                           b"RCPT TO:<bob@example.edu>\r\nRCPT TO:<nobody@example.edu>\r\n"
                           b"RCPT TO:<alice@example.edu>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\n"
                           b"QUIT\r\n")
        replies = lines(t)
        ehlo = [r for r in replies if r.startswith(b"250-")]
        rest = replies[len(ehlo) + 1:]
        self.assertEqual([r[:9] for r in rest], [b"250 2.1.0", b"250 2.1.5", b"550 5.1.1",
                                                 b"250 2.1.5", b"354 end d", b"250 2.0.0",
                                                 b"221 2.0.0"])
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)
        self.assertEqual(len(self.inbox("alice@example.edu")), 1)
        self.assertTrue(t.disconnecting)

    def test_refused_data_does_not_run_the_message_as_commands(self) -> None:
        """
        A client that sends its message without waiting for the reply to
        DATA (RFC 2920 section 3.1 forbids it) after no recipient was
        accepted: the message text must not be taken for commands (here it
        holds a transaction to alice).
        """
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<nobody@example.edu>\r\n"
                           b"DATA\r\n" + SMUGGLED + b"QUIT\r\n")
        replies = lines(t)
        self.assertEqual(replies[:3], [b"250 2.1.0 sender OK",
                                       b"550 5.1.1 recipient address rejected: user unknown",
                                       b"554 5.5.1 no valid recipients"])
        self.assertNotIn(b"354 end data with <CR><LF>.<CR><LF>", replies)
        self.assertEqual(self.inbox("alice@example.edu"), [])

    def test_data_out_of_sequence_does_not_run_the_message_as_commands(self) -> None:
        """The same for DATA refused with 503 (its MAIL refused)."""
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org> SIZE=9999999\r\nRCPT TO:<bob@example.edu>\r\n"
                           b"DATA\r\n" + SMUGGLED)
        replies = lines(t)
        self.assertNotIn(b"354 end data with <CR><LF>.<CR><LF>", replies)
        self.assertEqual(self.inbox("alice@example.edu"), [])

    def test_refused_data_then_a_client_that_waited(self) -> None:
        """A client that waits for the refusal goes on as usual."""
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<nobody@example.edu>\r\nDATA\r\n")
        self.assertEqual(lines(t)[-1], b"554 5.5.1 no valid recipients")
        proto.dataReceived(b"RSET\r\n" + TRANSACTION + b"hi\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued"))
        self.assertFalse(t.disconnecting)

    def test_nothing_runs_after_a_421(self) -> None:
        proto, t = self.open(limits=Limits(max_message_size=10_000, max_refused_recipients=1))
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<nobody@example.edu>\r\n"
                           b"RCPT TO:<bob@example.edu>\r\nDATA\r\nhi\r\n.\r\n")
        self.assertEqual([r[:3] for r in lines(t)], [b"250", b"550", b"421"])
        self.assertTrue(t.disconnecting)
        self.assertEqual(self.inbox("bob@example.edu"), [])


class ShutdownTests(TransactionTestCase):
    def test_shutdown_during_a_delivery_answers_the_message_first(self) -> None:
        """
        The server stopping while a message is being stored: the client
        hears the message's 250 and then 421, never 421 first (it would
        send the stored message again).
        """
        pending = self.hold_deliveries()
        proto, t = self.open()
        proto.dataReceived(TRANSACTION + b"hi\r\n.\r\n")
        lines(t)
        proto.shutdown()
        self.assertEqual(lines(t), [])
        pending[0].callback(None)
        replies = lines(t)
        self.assertEqual(len(replies), 2, replies)
        self.assertTrue(replies[0].startswith(b"250 2.0.0 OK queued as "), replies)
        self.assertEqual(replies[1], b"421 4.3.2 mail.example.edu shutting down")
        self.assertTrue(t.disconnecting)

    def test_shutdown_while_reading_a_message_stores_nothing(self) -> None:
        proto, t = self.open()
        proto.dataReceived(TRANSACTION + b"half\r\n")
        lines(t)
        proto.shutdown()
        self.assertEqual(lines(t), [b"421 4.3.2 mail.example.edu shutting down"])
        self.assertTrue(t.disconnecting)
        proto.dataReceived(b"rest\r\n.\r\n")
        proto.connectionLost(None)
        self.assertEqual(self.inbox("bob@example.edu"), [])


    def test_message_completed_after_a_data_timeout_is_not_stored(self) -> None:
        """
        After the 421 of the data timeout the connection is closing, but a
        TLS transport still reads (for the client's close_notify): the end
        of the message arriving then must not be delivered, the client was
        told it failed.
        """
        proto, t = self.open(limits=Limits(max_message_size=10_000, data_timeout_smtp=200.0))
        proto.dataReceived(TRANSACTION + b"half\r\n")
        self.clock.advance(200)
        self.assertTrue(lines(t)[-1].startswith(b"421 4.4.2 "))
        proto.dataReceived(b"rest\r\n.\r\nQUIT\r\n")
        self.assertEqual(lines(t), [])
        proto.connectionLost(None)
        self.assertEqual(self.inbox("bob@example.edu"), [])


class TraceTests(TransactionTestCase):
    """The Received: field (RFC 5321 section 4.4) and Return-Path."""

    def deliver(self, ehlo: bytes = b"EHLO client.example.org", peer: str = "192.0.2.7",
                sender: bytes = b"x@else.org", rcpts: tuple[bytes, ...] = (b"bob@example.edu",),
                before: Any = None) -> bytes:
        proto, t = self.open(peer=peer)
        if before is not None:
            before(proto, t)
        proto.dataReceived(ehlo + b"\r\n")
        lines(t)
        proto.dataReceived(b"MAIL FROM:<" + sender + b">\r\n"
                           + b"".join(b"RCPT TO:<" + r + b">\r\n" for r in rcpts)
                           + b"DATA\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued"))
        return self.inbox("bob@example.edu")[-1]

    def test_received_names_the_claim_the_address_and_the_date(self) -> None:
        message = self.deliver()
        self.assertTrue(message.startswith(b"Return-Path: <x@else.org>\r\nReceived: "))
        received = received_of(message).decode()
        self.assertTrue(received.startswith(
            "Received: from client.example.org ([192.0.2.7])\tby mail.example.edu (mailgateway) "
            "with ESMTP\tid "), received)
        self.assertIn("\tfor <bob@example.edu>;", received)
        date = email.utils.parsedate_to_datetime(received.rpartition(";")[2])
        self.assertEqual(date.timestamp(), self.clock.seconds())

    def test_no_recipient_named_for_several(self) -> None:
        """A copy for several recipients names none (a Bcc would show)."""
        message = self.deliver(rcpts=(b"bob@example.edu", b"alice@example.edu"))
        self.assertNotIn(b"for <", received_of(message))

    def test_helo_cannot_inject_a_header_field(self) -> None:
        message = self.deliver(ehlo=b"EHLO evil\rX-Injected: 1\nX-Also: 2")
        header = message.partition(b"\r\n\r\n")[0]
        for line in header.split(b"\r\n"):
            self.assertFalse(line.startswith((b"X-Injected", b"X-Also")), line)
        self.assertNotIn(b"\r", header.replace(b"\r\n", b""))
        self.assertNotIn(b"\n", header.replace(b"\r\n", b""))

    def test_helo_cannot_forge_the_date(self) -> None:
        """The date-time is what follows the Received: field's ';' (RFC
        5322 section 3.6.7): a ';' in the HELO name made an earlier one."""
        message = self.deliver(ehlo=b"EHLO x;Mon, 1 Jan 1990 00:00:00 +0000")
        received = received_of(message).decode()
        self.assertEqual(received.count(";"), 1, received)

    def test_long_helo_keeps_lines_short(self) -> None:
        message = self.deliver(ehlo=b"EHLO " + b"a" * 4000)
        for line in message.partition(b"\r\n\r\n")[0].split(b"\r\n"):
            self.assertLessEqual(len(line), 998)

    def test_ipv6_client_as_an_address_literal(self) -> None:
        """RFC 5321 section 4.1.3: an IPv6 address literal is tagged
        C{IPv6:}."""
        message = self.deliver(peer="2001:db8::7")
        self.assertIn(b"([IPv6:2001:db8::7])", received_of(message))

    def test_tls_and_authentication_named_but_not_the_account(self) -> None:
        def tls(proto: Any, t: Any) -> None:
            proto.dataReceived(b"STARTTLS\r\n")
            proto.handshakeCompleted()
            proto.tls_info = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
            lines(t)

        message = self.deliver(before=tls)
        self.assertIn(b" with ESMTPS (TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n", message)

        def login(proto: Any, t: Any) -> None:
            tls(proto, t)
            proto.dataReceived(b"EHLO c\r\n")
            from tests.sasl_client import plain
            proto.dataReceived(b"AUTH PLAIN " + plain("alice@example.edu", "correct horse")
                               + b"\r\n")
            self.assertEqual(lines(t)[-1], b"235 2.7.0 authentication successful")

        message = self.deliver(before=login, sender=b"alice@example.edu")
        header = message.partition(b"\r\n\r\n")[0]
        self.assertIn(b" with ESMTPSA (TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n", header)
        self.assertNotIn(b"alice", header.replace(b"Return-Path: <alice@example.edu>", b""))

    def test_return_path(self) -> None:
        self.assertTrue(self.deliver(sender=b"").startswith(b"Return-Path: <>\r\n"))
        self.assertTrue(self.deliver(sender=b'"a b"@else.org').startswith(
            b'Return-Path: <"a b"@else.org>\r\n'))

    def test_received_header_function(self) -> None:
        """Odd HELO names, directly: nothing outside printable ASCII, no
        parenthesis (a comment), no ';' survives."""
        for helo in ("a(b)c", "a\x00b", "a;b", "ä.example", "a b", ""):
            envelope = Envelope(sender="", recipients=["r@x.org"], helo=helo, client="192.0.2.1")
            line = received_header(envelope, "h", 0, None).decode("ascii")
            first = line.split("\r\n")[0]
            self.assertRegex(first, r"^Received: from [\x21-\x27\x2a-\x3a\x3c-\x7e]+ "
                                    r"\(\[192\.0\.2\.1\]\)$")


class SlowRun:
    """A run_in_thread whose work waits for the test."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, f: Any, *a: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append((d, f, a))
        return d

    def run_all(self) -> None:
        while self.waiting:
            d, f, a = self.waiting.pop(0)
            d.callback(f(*a))


def sync_run(f: Any, *a: Any, **kw: Any) -> Deferred[Any]:
    try:
        return succeed(f(*a, **kw))
    except Exception:
        return fail()


class FailingRenameFS(FileSystem):
    """Fails the rename of the file named C{fail}."""

    def __init__(self, fail: str) -> None:
        self.fail = fail

    def rename(self, source: str, target: str) -> None:
        if os.path.basename(target) == self.fail:
            raise OSError("injected rename failure")
        super().rename(source, target)


class SpoolReviewTests(SynchronousTestCase):
    def spool(self, fs: FileSystem | None = None, run: Any = sync_run) -> Spool:
        self.root = Path(self.mktemp()).absolute()
        clock = Clock()
        clock.advance(1000)
        return Spool(str(self.root), run_in_thread=run, clock=clock, fs=fs)

    def test_no_250_before_the_spool_is_on_disk(self) -> None:
        run = SlowRun()
        case = TransactionTestCase("setUp")
        case.mktemp = self.mktemp  # type: ignore[method-assign]
        case.setUp()
        case.spool = self.spool(run=run)
        case.delivery = Delivery(case.store, case.spool, Book(), "mail.example.edu", case.clock)
        proto, t = case.open(peer="10.1.2.3")
        proto.dataReceived(b"MAIL FROM:<x@example.edu>\r\nRCPT TO:<y@elsewhere.net>\r\n"
                           b"DATA\r\nhi\r\n.\r\nNOOP\r\n")
        self.assertEqual(lines(t)[-1], b"354 end data with <CR><LF>.<CR><LF>")
        self.assertEqual(case.spool.pending(), [])
        run.run_all()  # the files, then the directory's fsync
        replies = lines(t)
        self.assertTrue(replies[0].startswith(b"250 2.0.0 OK queued as "), replies)
        self.assertEqual(replies[1:], [b"250 2.0.0 OK"])
        self.assertEqual(len(case.spool.pending()), 1)

    def test_failed_envelope_rename_leaves_nothing_pending(self) -> None:
        spool = self.spool(FailingRenameFS("Q1.json"))
        self.failureResultOf(spool.enqueue("a@b.c", ["x@y.z"], b"DATA", "Q1"), OSError)
        self.assertEqual(spool.pending(), [])
        self.assertEqual(os.listdir(self.root / "tmp"), [])

    def test_pending_lists_only_committed_envelopes(self) -> None:
        spool = self.spool()
        self.successResultOf(spool.enqueue("a@b.c", ["x@y.z"], b"DATA", "Q1"))
        (self.root / "tmp" / "Q2.json").write_text(json.dumps({"id": "Q2"}))
        (self.root / "new" / "Q3.eml").write_bytes(b"leftover")
        self.assertEqual([e["id"] for e in spool.pending()], ["Q1"])

    def test_collision_never_overwrites_a_committed_message(self) -> None:
        """Queue ids are random: should one repeat, the message already in
        the spool stays as it was (rename replaced it silently)."""
        spool = self.spool()
        self.successResultOf(spool.enqueue("a@b.c", ["x@y.z"], b"FIRST", "Q1"))
        self.failureResultOf(spool.enqueue("d@e.f", ["u@v.w"], b"SECOND", "Q1"), OSError)
        [envelope] = spool.pending()
        self.assertEqual(envelope["sender"], "a@b.c")
        self.assertEqual((self.root / "new" / "Q1.eml").read_bytes(), b"FIRST")
        self.assertEqual(os.listdir(self.root / "tmp"), [])

    def test_failed_open_removes_no_file_of_another_writer(self) -> None:
        """A tmp file that already exists is another writer's: a failed
        open must not remove it."""
        spool = self.spool()
        (self.root / "tmp").mkdir(parents=True)
        (self.root / "tmp" / "Q1.eml").write_bytes(b"being written")
        self.failureResultOf(spool.enqueue("a@b.c", ["x@y.z"], b"DATA", "Q1"), OSError)
        self.assertEqual((self.root / "tmp" / "Q1.eml").read_bytes(), b"being written")

    def test_envelope_round_trips_odd_addresses(self) -> None:
        spool = self.spool()
        sender = '"a \\" b"@else.org'
        recipients = ['"q@x"@elsewhere.net', "jürgen@bücher.de", "o'neil@x.org"]
        dsn = {"ret": "HDRS", "envid": "Q+2B1", "recipients": {
            "jürgen@bücher.de": {"notify": ["SUCCESS"], "orcpt": "utf-8;j\\x{FC}rgen@b\\x{FC}cher.de",
                                 "rcpt": "jürgen@bücher.de"}}}
        self.successResultOf(spool.enqueue(sender, recipients, b"x", "Q1", dsn=dsn))
        [envelope] = spool.pending()
        self.assertEqual((envelope["sender"], envelope["recipients"], envelope["dsn"]),
                         (sender, recipients, dsn))

    def test_conversation_to_spool_round_trips(self) -> None:
        case = TransactionTestCase("setUp")
        case.mktemp = self.mktemp  # type: ignore[method-assign]
        case.setUp()
        proto, t = case.open(peer="10.1.2.3")
        proto.dataReceived('MAIL FROM:<"a b"@example.edu> SMTPUTF8\r\n'
                           'RCPT TO:<jürgen@bücher.de> NOTIFY=FAILURE '
                           'ORCPT=utf-8;j\\x{FC}rgen@b\\x{FC}cher.de\r\n'
                           'DATA\r\nhi\r\n.\r\n'.encode())
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued"))
        [envelope] = case.spool.pending()
        self.assertEqual((envelope["sender"], envelope["recipients"]),
                         ('"a b"@example.edu', ["jürgen@bücher.de"]))
        self.assertEqual(envelope["dsn"]["recipients"]["jürgen@bücher.de"]["orcpt"],
                         "utf-8;j\\x{FC}rgen@b\\x{FC}cher.de")
