"""
Conversations of the ESMTP mail transaction: extensions, MAIL/RCPT/DATA
under the relay policy, delivery into the store and the spool before 250,
pipelining order, and each refusal.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Limits
from gateway.smtp.delivery import Delivery
from gateway.smtp.policy import PolicySettings
from gateway.smtp.server import MAX_HOPS, SMTPFactory, SMTPServices
from gateway.smtp.spool import Spool
from gateway.store.model import Quota
from gateway.testing import MemoryStore
from tests.sasl_client import plain
from tests.test_protocols import connect, lines


class Book:
    """alice@example.edu (+ a.smith@) and bob@example.edu live here."""

    owners = {"alice@example.edu": "alice@example.edu", "a.smith@example.edu": "alice@example.edu",
              "bob@example.edu": "bob@example.edu"}

    def receiver_of(self, address: str) -> str | None:
        return self.owners.get(address.lower())

    def expand(self, address: str) -> list[str]:
        if address.lower() == "staff@example.edu":
            return ["alice@example.edu", "bob@example.edu", "helpdesk@partner.org"]
        return [address]

    def is_local_recipient(self, address: str) -> bool:
        return self.receiver_of(address) is not None or address.lower() == "staff@example.edu"

    def owns(self, account: str, address: str) -> bool:
        return self.receiver_of(address) == account


def sync_run(f: Any, *a: Any, **kw: Any) -> Deferred[Any]:
    return succeed(f(*a, **kw))


class TransactionTestCase(SynchronousTestCase):
    role = "mx"

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.store = MemoryStore(clock=self.clock)
        self.spool = Spool(str(Path(self.mktemp()).absolute()), run_in_thread=sync_run,
                           clock=self.clock)
        self.delivery = Delivery(self.store, self.spool, Book(), "mail.example.edu", self.clock)
        self.policy = PolicySettings(local_domains=("example.edu",),
                                     trusted_networks=(ipaddress.ip_network("10.0.0.0/8"),),
                                     max_recipients=3, max_messages_per_connection=5)

    def hold_deliveries(self) -> list[Deferred[Any]]:
        """Make each delivery wait: it goes to the store when the test fires
        its Deferred, in the list returned."""
        pending: list[Deferred[Any]] = []
        real = self.store.deliver

        def slow(*a: Any, **kw: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            return d.addCallback(lambda _: real(*a, **kw))

        self.store.deliver = slow  # type: ignore[method-assign]
        return pending

    def open(self, peer: str = "192.0.2.7", tls: str = "starttls", limits: Limits | None = None,
             role: str | None = None) -> tuple[Any, Any]:
        proto, t = connect(SMTPFactory, role or self.role, peer=peer, tls=tls,
                           limits=limits or Limits(max_message_size=10_000), clock=self.clock)
        proto.services = SMTPServices(self.policy, Book(), self.delivery)
        if tls == "implicit":
            proto.handshakeCompleted()
        lines(t)
        proto.dataReceived(b"EHLO client.example.org\r\n")
        lines(t)
        return proto, t

    def inbox(self, account: str) -> list[bytes]:
        session = self.successResultOf(self.store.open_folder(account, "INBOX"))
        out = []
        for info in session.messages():
            with self.successResultOf(session.open_message(info.uid)) as f:
                out.append(f.read())
        return out


class MXTests(TransactionTestCase):
    def test_extensions(self) -> None:
        proto, t = connect(SMTPFactory, "mx", limits=Limits(max_message_size=10_000))
        lines(t)
        proto.dataReceived(b"EHLO c.example\r\n")
        ehlo = lines(t)
        for ext in (b"SIZE 10000", b"8BITMIME", b"PIPELINING", b"ENHANCEDSTATUSCODES",
                    b"SMTPUTF8", b"STARTTLS"):
            self.assertTrue(any(line[4:] == ext for line in ehlo), (ext, ehlo))

    def test_local_delivery_before_250(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<alice@example.edu>\r\n"
                           b"RCPT TO:<bob@example.edu>\r\nDATA\r\n")
        self.assertEqual(lines(t), [b"250 2.1.0 sender OK", b"250 2.1.5 recipient OK",
                                    b"250 2.1.5 recipient OK",
                                    b"354 end data with <CR><LF>.<CR><LF>"])
        proto.dataReceived(b"Subject: hi\r\n\r\n..dot\r\n.\r\n")
        reply = lines(t)
        self.assertEqual(len(reply), 1)
        self.assertTrue(reply[0].startswith(b"250 2.0.0 OK queued as "), reply)
        for account in ("alice@example.edu", "bob@example.edu"):
            [message] = self.inbox(account)
            self.assertTrue(message.startswith(b"Return-Path: <x@else.org>\r\nReceived: from "
                                               b"client.example.org ([192.0.2.7])\r\n"), message)
            self.assertIn(b"with ESMTP\r\n", message)
            self.assertTrue(message.endswith(b"Subject: hi\r\n\r\n.dot\r\n"))
        self.assertEqual(self.spool.pending(), [])

    def test_alias_address_delivers_once(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.edu>\r\n"
                           b"RCPT TO:<A.Smith@example.edu>\r\nDATA\r\nx\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0"))
        self.assertEqual(len(self.inbox("alice@example.edu")), 1)

    def test_alias_list_local_and_external(self) -> None:
        """An alias fans out: a copy per local account, the outside member spooled."""
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<staff@example.edu>\r\n"
                           b"DATA\r\nhello staff\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued as "))
        self.assertEqual(len(self.inbox("alice@example.edu")), 1)
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)
        [envelope] = self.spool.pending()
        self.assertEqual(envelope["recipients"], ["helpdesk@partner.org"])

    def test_relay_denied_and_unknown_user(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<y@elsewhere.net>\r\n"
                           b"RCPT TO:<nobody@example.edu>\r\nDATA\r\n")
        self.assertEqual(lines(t), [b"250 2.1.0 sender OK", b"554 5.7.1 relay access denied",
                                    b"550 5.1.1 recipient address rejected: user unknown",
                                    b"554 5.5.1 no valid recipients"])

    def test_trusted_network_relays_into_spool(self) -> None:
        proto, t = self.open(peer="10.1.2.3")
        proto.dataReceived(b"MAIL FROM:<app@example.edu>\r\nRCPT TO:<y@elsewhere.net>\r\n"
                           b"DATA\r\nhello\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued as "))
        [envelope] = self.spool.pending()
        self.assertEqual((envelope["sender"], envelope["recipients"]),
                         ("app@example.edu", ["y@elsewhere.net"]))
        message = Path(self.spool.new, envelope["id"] + ".eml").read_bytes()
        self.assertTrue(message.startswith(b"Received: from client.example.org ([10.1.2.3])"))
        self.assertTrue(message.endswith(b"hello\r\n"))

    def test_size_parameter_and_oversized_data(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org> SIZE=999999\r\n")
        self.assertEqual(lines(t), [b"552 5.3.4 message size exceeds the limit"])
        proto.dataReceived(b"MAIL FROM:<x@else.org> SIZE=100\r\nRCPT TO:<bob@example.edu>\r\n"
                           b"DATA\r\n" + b"y" * 900 + b"\r\n")
        lines(t)
        proto.dataReceived((b"z" * 900 + b"\r\n") * 12 + b".\r\nNOOP\r\n")
        self.assertEqual(lines(t), [b"552 5.3.4 message exceeds the size limit", b"250 2.0.0 OK"])
        self.assertEqual(self.inbox("bob@example.edu"), [])

    def test_refused_recipients_limit(self) -> None:
        """A client probing for addresses is closed after
        max_refused_recipients refusals in one connection; temporary
        refusals (too many recipients) and accepted ones do not count."""
        proto, t = self.open(limits=Limits(max_message_size=10_000, max_refused_recipients=3))
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\n"
                           b"RCPT TO:<nobody1@example.edu>\r\nRCPT TO:<y@elsewhere.net>\r\n")
        self.assertEqual([line[:3] for line in lines(t)], [b"250", b"250", b"550", b"554"])
        self.assertFalse(t.disconnecting)
        proto.dataReceived(b"RCPT TO:<nobody2@example.edu>\r\n")
        self.assertEqual([line[:9] for line in lines(t)], [b"550 5.1.1", b"421 4.7.0"])
        self.assertTrue(t.disconnecting)

    def test_mail_loop_refused(self) -> None:
        """RFC 5321 section 6.3: over MAX_HOPS Received: fields (in any
        case) is a loop: refused, nothing stored; at the limit, delivered.
        Received: lines in the body do not count."""
        hop = b"Received: from a by b; Thu, 26 Nov 2026 10:00:00 +0000\r\n"
        for count, stored in ((MAX_HOPS, True), (MAX_HOPS + 1, False)):
            proto, t = self.open(limits=Limits(max_message_size=100_000))
            proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\n"
                               b"DATA\r\n")
            lines(t)
            header = hop * (count - 1) + hop.replace(b"Received", b"RECEIVED")
            proto.dataReceived(header + b"Subject: s\r\n\r\n" + hop * 200 + b".\r\n")
            reply = lines(t)
            if stored:
                self.assertTrue(reply[0].startswith(b"250 2.0.0 OK"), reply)
            else:
                self.assertEqual(reply, [b"554 5.4.6 too many hops (Received: fields): mail loop?"])
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)

    def test_smuggling_refused_and_not_executed(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\nDATA\r\n")
        lines(t)
        proto.dataReceived(b"hi\n.\nMAIL FROM:<evil@else.org>\r\nRCPT TO:<alice@example.edu>\r\n"
                           b"DATA\r\nsmuggled\r\n.\r\n")
        self.assertEqual(lines(t), [b"550 5.6.0 bare CR or LF in message (RFC 5321 section 2.3.8)"])
        self.assertEqual(self.inbox("alice@example.edu"), [])
        self.assertEqual(self.inbox("bob@example.edu"), [])

    def test_pipelined_replies_in_order(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\nDATA\r\n"
                           b"one\r\n.\r\nMAIL FROM:<x@else.org>\r\nRCPT TO:<alice@example.edu>\r\n"
                           b"DATA\r\ntwo\r\n.\r\nQUIT\r\n")
        codes = [line[:3] for line in lines(t)]
        self.assertEqual(codes, [b"250", b"250", b"354", b"250", b"250", b"250", b"354", b"250",
                                 b"221"])
        self.assertEqual(len(self.inbox("alice@example.edu")), 1)

    def test_sequence_errors(self) -> None:
        proto, t = connect(SMTPFactory, "mx")
        proto.services = SMTPServices(self.policy, Book(), self.delivery)
        lines(t)
        proto.dataReceived(b"MAIL FROM:<x@y.z>\r\n")
        self.assertEqual(lines(t), [b"503 5.5.1 EHLO or HELO first"])
        proto.dataReceived(b"EHLO c\r\nRCPT TO:<bob@example.edu>\r\nDATA\r\n")
        self.assertEqual(lines(t)[-2:], [b"503 5.5.1 MAIL first", b"503 5.5.1 MAIL first"])
        proto.dataReceived(b"MAIL FROM:<x@y.z>\r\nMAIL FROM:<x@y.z>\r\n")
        self.assertEqual(lines(t)[-1], b"503 5.5.1 nested MAIL command")

    def test_syntax_errors(self) -> None:
        proto, t = self.open()
        for command, reply in [
            (b"MAIL FROM:x@y.z", b"501 5.5.4 address must be in angle brackets"),
            (b"MAIL TO:<x@y.z>", b"501 5.5.4 syntax: FROM:<address>"),
            (b"MAIL FROM:<x@y.z> FOO=1", b"555 5.5.4 unsupported parameter FOO"),
            (b"MAIL FROM:<\xc3\xbc@y.z>", b"553 5.6.7 non-ASCII address needs SMTPUTF8"),
            (b"MAIL FROM:<x@@y>", b"501 5.1.7 bad address syntax"),
        ]:
            proto.dataReceived(command + b"\r\n")
            self.assertEqual(lines(t), [reply], command)

    def test_smtputf8(self) -> None:
        proto, t = self.open()
        proto.dataReceived("MAIL FROM:<jürgen@bücher.de> SMTPUTF8\r\n".encode()
                           + b"RCPT TO:<bob@example.edu>\r\nDATA\r\nx\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0"))
        self.assertIn(b"with UTF8SMTP", self.inbox("bob@example.edu")[0])

    def test_too_many_recipients(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\n" + b"RCPT TO:<bob@example.edu>\r\n" * 4)
        self.assertEqual(lines(t)[-1], b"452 4.5.3 too many recipients")

    def test_connection_lost_in_data_stores_nothing(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\nDATA\r\n"
                           b"half a message\r\n")
        proto.connectionLost(None)
        self.assertEqual(self.inbox("bob@example.edu"), [])

    def test_store_failure_is_temporary(self) -> None:
        def broken(*a: Any, **kw: Any) -> Deferred[Any]:
            raise OSError("disk on fire")

        self.store.deliver = broken  # type: ignore[method-assign]
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\nDATA\r\nx\r\n.\r\n")
        self.assertEqual(lines(t)[-1], b"451 4.3.0 local error in processing, try again later")
        self.flushLoggedErrors(OSError)

    def test_delivery_waits_for_the_store(self) -> None:
        """No 250 before the store says the copy is on disk."""
        pending = self.hold_deliveries()
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\nDATA\r\n"
                           b"x\r\n.\r\nNOOP\r\n")
        self.assertEqual(lines(t)[-1], b"354 end data with <CR><LF>.<CR><LF>")
        pending[0].callback(None)
        replies = lines(t)
        self.assertTrue(replies[0].startswith(b"250 2.0.0 OK queued"))
        self.assertEqual(replies[1], b"250 2.0.0 OK")

    def test_auth_not_during_transaction(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nAUTH PLAIN\r\n")
        self.assertEqual(lines(t)[-1], b"503 5.5.1 AUTH not allowed during a mail transaction")


class SubmissionTests(TransactionTestCase):
    role = "submission"

    def login(self, proto: Any, t: Any, who: str = "alice@example.edu") -> None:
        proto.dataReceived(b"STARTTLS\r\n")
        proto.handshakeCompleted()
        proto.dataReceived(b"EHLO c.example\r\nAUTH PLAIN " + plain(who, "correct horse") + b"\r\n")
        self.assertEqual(lines(t)[-1], b"235 2.7.0 authentication successful")

    def test_no_starttls_after_auth(self) -> None:
        """A login made before TLS (the operator allows plain text) does not
        carry across an upgrade: STARTTLS after AUTH is refused, as STLS and
        IMAP's STARTTLS are."""
        proto, t = connect(SMTPFactory, self.role, plaintext_without_tls=True, clock=self.clock)
        proto.services = SMTPServices(self.policy, Book(), self.delivery)
        lines(t)
        proto.dataReceived(b"EHLO c.example\r\nAUTH PLAIN "
                           + plain("alice@example.edu", "correct horse") + b"\r\n")
        self.assertEqual(lines(t)[-1], b"235 2.7.0 authentication successful")
        proto.dataReceived(b"STARTTLS\r\n")
        self.assertEqual(lines(t), [b"503 5.5.1 STARTTLS not allowed after AUTH"])
        self.assertIsNone(t.tls_started_with)

    def test_mail_before_auth(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<alice@example.edu>\r\n")
        self.assertEqual(lines(t), [b"530 5.7.0 authentication required"])

    def test_authenticated_relay_and_own_sender(self) -> None:
        proto, t = self.open()
        self.login(proto, t)
        proto.dataReceived(b"MAIL FROM:<bob@example.edu>\r\n")
        self.assertEqual(lines(t), [b"553 5.7.1 sender address rejected: not owned by "
                                    b"alice@example.edu"])
        proto.dataReceived(b"MAIL FROM:<a.smith@example.edu>\r\nRCPT TO:<y@elsewhere.net>\r\n"
                           b"DATA\r\nhello\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued as "))
        [envelope] = self.spool.pending()
        message = Path(self.spool.new, envelope["id"] + ".eml").read_bytes()
        self.assertIn(b"with ESMTPSA", message)
        self.assertNotIn(b"correct horse", message)

    def test_one_log_line_per_connection(self) -> None:
        """
        An SMTP connection is logged once, at its close, with what an
        administrator looks for: the client, TLS, the account and how it
        logged in, what it did and why it ended (Postfix's smtpd summary).
        """
        events: list[dict[str, Any]] = []
        proto, t = self.open()
        proto.log = Logger(observer=cast(ILogObserver, events.append))
        self.login(proto, t)
        proto.dataReceived(b"MAIL FROM:<alice@example.edu>\r\nRCPT TO:<bob@example.edu>\r\n"
                           b"DATA\r\nhi\r\n.\r\nQUIT\r\n")
        proto.connectionLost(None)
        self.assertEqual([formatEvent(e) for e in events],
                         ["test: 192.0.2.7 logged in as alice@example.edu (PLAIN), 1 message, "
                          "closed: done"])

    def test_log_line_names_the_tls_version(self) -> None:
        events: list[dict[str, Any]] = []
        proto, t = self.open()
        proto.log = Logger(observer=cast(ILogObserver, events.append))
        proto.dataReceived(b"STARTTLS\r\n")
        proto.handshakeCompleted()
        # What gateway.tls.connection_info reads from a real TLS connection.
        proto.tls_info = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
        proto.connectionLost(Failure(ConnectionLost("Connection lost")))
        self.assertEqual([formatEvent(e) for e in events],
                         ["test: 192.0.2.7 TLSv1.3 TLS_AES_256_GCM_SHA384, 0 messages, "
                          "closed: Connection to the other side was lost in a non-clean "
                          "fashion: Connection lost."])

    def test_log_line_without_tls_or_login(self) -> None:
        events: list[dict[str, Any]] = []
        proto, t = self.open()
        proto.log = Logger(observer=cast(ILogObserver, events.append))
        proto.dataReceived(b"QUIT\r\n")
        proto.connectionLost(None)
        self.assertEqual([formatEvent(e) for e in events],
                         ["test: 192.0.2.7 no TLS, 0 messages, closed: done"])

    def test_implicit_tls_counts_as_encrypted(self) -> None:
        proto, t = self.open(tls="implicit", role="submissions")
        proto.dataReceived(b"AUTH PLAIN " + plain("bob@example.edu", "battery staple") + b"\r\n")
        self.assertEqual(lines(t), [b"235 2.7.0 authentication successful"])
        proto.dataReceived(b"MAIL FROM:<bob@example.edu>\r\nRCPT TO:<alice@example.edu>\r\n"
                           b"DATA\r\nhi\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0"))
        self.assertIn(b"with ESMTPSA", self.inbox("alice@example.edu")[0])


class TimeoutTests(TransactionTestCase):
    """
    RFC 5321 section 4.5.3.2: a command timeout, a separate timeout for
    each block of a message, no timeout while the server itself works, and
    a bound on the whole connection.
    """

    limits = Limits(max_message_size=10_000, idle_timeout_smtp=300.0, data_timeout_smtp=200.0,
                    session_timeout_smtp=3600.0)

    def start_data(self) -> tuple[Any, Any]:
        proto, t = self.open(limits=self.limits)
        proto.dataReceived(b"MAIL FROM:<x@else.org>\r\nRCPT TO:<bob@example.edu>\r\nDATA\r\n")
        self.assertEqual(lines(t)[-1], b"354 end data with <CR><LF>.<CR><LF>")
        return proto, t

    def test_half_a_message_then_silence(self) -> None:
        """A client that stops in the middle of a message is dropped after
        the data timeout with 421 4.4.2, and nothing is stored."""
        proto, t = self.start_data()
        proto.dataReceived(b"Subject: half\r\n\r\nthe first half")
        self.clock.advance(199)
        self.assertFalse(t.disconnecting)
        self.clock.advance(1)
        self.assertEqual(lines(t), [b"421 4.4.2 mail.example.edu timeout waiting for data, "
                                    b"closing connection"])
        self.assertTrue(t.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(self.inbox("bob@example.edu"), [])
        self.assertEqual(self.spool.pending(), [])

    def test_data_timeout_is_its_own(self) -> None:
        """The data timeout applies from the 354 on, not the command timeout."""
        proto, t = self.start_data()
        self.clock.advance(200)
        self.assertTrue(t.disconnecting)

    def test_slow_sender_is_not_cut_off(self) -> None:
        """Each block restarts the data timeout: a message sent a line every
        199 seconds, for far longer than either timeout, is stored."""
        proto, t = self.start_data()
        for i in range(10):
            self.clock.advance(199)
            proto.dataReceived(b"line %d\r\n" % i)
        self.clock.advance(199)
        proto.dataReceived(b".\r\n")
        self.assertFalse(t.disconnecting)
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued as "))
        [stored] = self.inbox("bob@example.edu")
        self.assertTrue(stored.endswith(b"line 9\r\n"))

    def test_command_timeout_after_the_message(self) -> None:
        """After the reply to a message, the command timeout (300 s) is back."""
        proto, t = self.start_data()
        proto.dataReceived(b"x\r\n.\r\n")
        lines(t)
        self.clock.advance(299)
        self.assertFalse(t.disconnecting)
        self.clock.advance(1)
        self.assertEqual(lines(t), [b"421 4.4.2 mail.example.edu idle timeout, closing connection"])

    def test_refused_message_restores_the_command_timeout(self) -> None:
        proto, t = self.start_data()
        proto.dataReceived(b"bare\nLF\r\n.\r\n")
        self.assertEqual(lines(t)[0][:3], b"550")
        self.clock.advance(299)
        self.assertFalse(t.disconnecting)
        self.clock.advance(1)
        self.assertTrue(t.disconnecting)

    def test_no_timeout_while_the_store_works(self) -> None:
        """
        A slow delivery is our delay, not the client's: the client waits up
        to 10 minutes for the reply after the final dot (RFC 5321 section
        4.5.3.2.6), so no timeout of ours cuts it off meanwhile (a 421 then
        would make it send a message we have stored again).
        """
        pending = self.hold_deliveries()
        proto, t = self.start_data()
        proto.dataReceived(b"x\r\n.\r\n")
        self.clock.advance(1000)
        self.assertFalse(t.disconnecting)
        self.assertEqual(lines(t), [])
        pending[0].callback(None)
        self.assertTrue(lines(t)[0].startswith(b"250 2.0.0 OK queued as "))
        self.clock.advance(299)
        self.assertFalse(t.disconnecting)
        self.clock.advance(1)
        self.assertTrue(t.disconnecting)

    def test_connection_time_limit(self) -> None:
        """A client that keeps its connection busy with NOOPs is closed at the
        session bound."""
        proto, t = self.open(limits=self.limits)
        for _ in range(12):
            self.clock.advance(290)
            proto.dataReceived(b"NOOP\r\n")
        self.assertFalse(t.disconnecting)
        lines(t)
        self.clock.advance(3600 - 12 * 290)
        self.assertEqual(lines(t), [b"421 4.4.2 mail.example.edu connection time limit reached, "
                                    b"closing connection"])
        self.assertTrue(t.disconnecting)

    def test_connection_time_limit_in_data(self) -> None:
        """A message dripped in a byte at a time is cut at the session bound,
        and nothing of it is stored."""
        proto, t = self.start_data()
        for _ in range(18):
            self.clock.advance(199)
            proto.dataReceived(b"x")
        self.assertFalse(t.disconnecting)
        self.clock.advance(3600 - 18 * 199)
        self.assertTrue(lines(t)[-1].startswith(b"421 4.4.2 "))
        self.assertTrue(t.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(self.inbox("bob@example.edu"), [])

    def test_connection_time_limit_waits_for_a_delivery(self) -> None:
        """The bound passing during a delivery closes the connection after
        the delivery's reply, never before it."""
        pending = self.hold_deliveries()
        proto, t = self.start_data()
        proto.dataReceived(b"x\r\n.\r\nNOOP\r\n")
        self.clock.advance(3600)
        self.assertEqual(lines(t), [])
        self.assertFalse(t.disconnecting)
        pending[0].callback(None)
        replies = lines(t)
        self.assertEqual(len(replies), 2, replies)
        self.assertTrue(replies[0].startswith(b"250 2.0.0 OK queued as "))
        self.assertTrue(replies[1].startswith(b"421 4.4.2 "), replies)
        self.assertTrue(t.disconnecting)
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)

    def assertAbortedAfterGrace(self, t: Any, grace: float = Limits().close_grace) -> None:
        """The connection is closing but not aborted until C{close_grace}
        has passed: a client that reads its last reply is closed in the
        ordinary way."""
        self.assertTrue(t.disconnecting)
        self.assertFalse(t.disconnected)
        self.clock.advance(grace - 0.1)
        self.assertFalse(t.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(t.disconnected)  # StringTransport.abortConnection

    def test_idle_timeout_aborts_a_client_that_does_not_read(self) -> None:
        """
        A client that stops reading (and sending) would keep the connection
        for ever after the idle timeout's 421, since loseConnection waits
        for the reply to be sent: it is aborted after the grace.
        """
        proto, t = self.open(limits=self.limits)
        self.clock.advance(300)
        self.assertEqual(lines(t), [b"421 4.4.2 mail.example.edu idle timeout, closing connection"])
        self.assertAbortedAfterGrace(t)

    def test_data_timeout_aborts_a_client_that_does_not_read(self) -> None:
        proto, t = self.start_data()
        self.clock.advance(200)
        self.assertTrue(lines(t)[-1].startswith(b"421 4.4.2 "))
        self.assertAbortedAfterGrace(t)

    def test_connection_time_limit_aborts_a_client_that_does_not_read(self) -> None:
        proto, t = self.open(limits=self.limits)
        for _ in range(12):
            self.clock.advance(290)
            proto.dataReceived(b"NOOP\r\n")
        self.clock.advance(3600 - 12 * 290)
        self.assertTrue(lines(t)[-1].startswith(b"421 4.4.2 "))
        self.assertAbortedAfterGrace(t)

    def test_bad_command_limit_aborts_a_client_that_does_not_read(self) -> None:
        proto, t = self.open(limits=Limits(max_message_size=10_000, max_bad_commands=2))
        proto.dataReceived(b"BOGUS\r\nBOGUS\r\n")
        self.assertAbortedAfterGrace(t)

    def test_grace_from_the_config(self) -> None:
        """C{[limits] close_grace}."""
        proto, t = self.open(limits=Limits(max_message_size=10_000, max_bad_commands=1,
                                           close_grace=30.0))
        proto.dataReceived(b"BOGUS\r\n")
        self.assertAbortedAfterGrace(t, grace=30.0)

    def test_line_too_long_aborts_a_client_that_does_not_read(self) -> None:
        proto, t = self.open(limits=Limits(max_message_size=10_000, max_line_length=100))
        proto.dataReceived(b"NOOP " + b"x" * 200)
        self.assertEqual(lines(t), [b"500 5.5.6 line too long, closing connection"])
        self.assertAbortedAfterGrace(t)

    def test_closed_connection_leaves_no_abort_behind(self) -> None:
        """A connection that closes within the grace is not aborted later,
        and no timer of its is left."""
        proto, t = self.open(limits=self.limits)
        proto.dataReceived(b"QUIT\r\n")
        self.assertTrue(t.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(Limits().close_grace)
        self.assertFalse(t.disconnected)

    def test_other_protocols_have_no_connection_bound(self) -> None:
        """The bound is SMTP's: POP3 and IMAP keep only their idle timeouts."""
        from gateway.imap.protocol import IMAPFactory
        from gateway.pop3.protocol import POP3Factory

        for factory, role in ((POP3Factory, "pop3"), (IMAPFactory, "imap")):
            clock = Clock()
            proto, t = connect(factory, role, clock=clock, limits=self.limits)
            self.assertEqual([c.getTime() for c in clock.getDelayedCalls()],
                             [proto.idle_timeout()], factory)
        clock = Clock()
        proto, t = connect(SMTPFactory, "mx", clock=clock, limits=self.limits)
        self.assertEqual(sorted(c.getTime() for c in clock.getDelayedCalls()), [300.0, 3600.0])


class DSNTests(TransactionTestCase):
    """RFC 3461 through the conversation: parameters, the spool, the notice."""

    def test_advertised(self) -> None:
        proto, t = connect(SMTPFactory, "mx")
        lines(t)
        proto.dataReceived(b"EHLO c.example\r\n")
        self.assertIn(b"250-DSN", lines(t))

    def test_malformed_parameters(self) -> None:
        proto, t = self.open()
        for command, reply in [
            (b"MAIL FROM:<x@else.org> RET=BODY", b"501 5.5.4 malformed RET parameter"),
            (b"MAIL FROM:<x@else.org> ENVID=a+zz", b"501 5.5.4 malformed ENVID parameter"),
        ]:
            proto.dataReceived(command + b"\r\n")
            self.assertEqual(lines(t), [reply], command)
        proto.dataReceived(b"MAIL FROM:<x@else.org> RET=HDRS ENVID=Q+2B1\r\n")
        self.assertEqual(lines(t), [b"250 2.1.0 sender OK"])
        for command, reply in [
            (b"RCPT TO:<bob@example.edu> NOTIFY=NEVER,SUCCESS",
             b"501 5.5.4 NOTIFY=NEVER cannot be combined with other values"),
            (b"RCPT TO:<bob@example.edu> NOTIFY=ALWAYS", b"501 5.5.4 malformed NOTIFY parameter"),
            (b"RCPT TO:<bob@example.edu> ORCPT=bob@example.edu",
             b"501 5.5.4 malformed ORCPT parameter"),
            (b"RCPT TO:<bob@example.edu> NOTIFY=SUCCESS NOTIFY=DELAY",
             b"501 5.5.4 parameter NOTIFY given twice"),
            (b"RCPT TO:<bob@example.edu> FOO=1", b"555 5.5.4 unsupported parameter FOO"),
        ]:
            proto.dataReceived(command + b"\r\n")
            self.assertEqual(lines(t), [reply], command)
        proto.dataReceived(b"RCPT TO:<bob@example.edu> NOTIFY=success,failure "
                           b"ORCPT=rfc822;bob+40example.edu\r\n")
        self.assertEqual(lines(t), [b"250 2.1.5 recipient OK"])

    def test_parameters_need_ehlo(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"HELO c.example\r\nMAIL FROM:<x@else.org>\r\n"
                           b"RCPT TO:<bob@example.edu> NOTIFY=SUCCESS\r\n")
        self.assertEqual(lines(t)[-1], b"555 5.5.4 parameters need EHLO")

    def test_success_notice_to_a_remote_sender_is_spooled(self) -> None:
        """
        NOTIFY=SUCCESS for a local recipient: after the copy is stored, a
        delivered notice from <> goes to the sender, here elsewhere, so into
        the spool, before the client hears 250.
        """
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<x@else.org> ENVID=QQ+2B314\r\n"
                           b"RCPT TO:<bob@example.edu> NOTIFY=SUCCESS ORCPT=rfc822;Bob+40example.edu\r\n"
                           b"DATA\r\nSubject: dsn test\r\n\r\nthe body\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued as "))
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)
        [notice] = self.spool.pending()
        self.assertEqual((notice["sender"], notice["recipients"]), ("", ["x@else.org"]))
        self.assertNotIn("dsn", notice)
        data = Path(self.spool.new, notice["id"] + ".eml").read_bytes()
        self.assertFalse(data.startswith(b"Received:"))  # ours: no trace line
        self.assertIn(b"report-type=delivery-status", data)
        self.assertIn(b"Original-Envelope-Id: QQ+314\r\n", data)
        self.assertIn(b"Original-Recipient: rfc822;Bob@example.edu\r\n"
                      b"Final-Recipient: rfc822; bob@example.edu\r\n"
                      b"Action: delivered\r\nStatus: 2.0.0\r\n", data)
        self.assertIn(b"Subject: dsn test", data)
        self.assertNotIn(b"the body", data)

    def test_success_notice_to_a_local_sender(self) -> None:
        proto, t = self.open(peer="10.1.2.3")
        proto.dataReceived(b"MAIL FROM:<alice@example.edu>\r\n"
                           b"RCPT TO:<bob@example.edu> NOTIFY=SUCCESS,FAILURE\r\n"
                           b"RCPT TO:<y@elsewhere.net> NOTIFY=FAILURE ORCPT=rfc822;y+40elsewhere.net\r\n"
                           b"DATA\r\nSubject: both\r\n\r\nx\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued as "))
        [notice] = self.inbox("alice@example.edu")
        self.assertTrue(notice.startswith(b"Return-Path: <>\r\n"), notice[:100])
        self.assertIn(b"Final-Recipient: rfc822; bob@example.edu\r\nAction: delivered\r\n", notice)
        self.assertNotIn(b"y@elsewhere.net", notice.partition(b"text/rfc822-headers")[0])
        [spooled] = self.spool.pending()
        self.assertEqual(spooled["recipients"], ["y@elsewhere.net"])
        self.assertEqual(spooled["dsn"], {"ret": None, "envid": None, "recipients": {
            "y@elsewhere.net": {"notify": ["FAILURE"], "orcpt": "rfc822;y+40elsewhere.net",
                                "rcpt": "y@elsewhere.net"}}})

    def test_no_notice_for_the_null_sender(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<>\r\nRCPT TO:<bob@example.edu> NOTIFY=SUCCESS\r\n"
                           b"DATA\r\nx\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0"))
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)
        self.assertEqual(self.spool.pending(), [])

    def test_no_notice_without_success(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<alice@example.edu> RET=FULL\r\n"
                           b"RCPT TO:<bob@example.edu> NOTIFY=FAILURE,DELAY\r\n"
                           b"DATA\r\nx\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0"))
        self.assertEqual(self.inbox("alice@example.edu"), [])

    def test_list_reported_expanded(self) -> None:
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<alice@example.edu> RET=FULL\r\n"
                           b"RCPT TO:<staff@example.edu> NOTIFY=SUCCESS,FAILURE\r\n"
                           b"DATA\r\nx\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0"))
        notice, copy = sorted(self.inbox("alice@example.edu"))  # alice is on the list; <> first
        self.assertTrue(copy.startswith(b"Return-Path: <alice@example.edu>"))
        self.assertTrue(notice.startswith(b"Return-Path: <>"))
        self.assertIn(b"Final-Recipient: rfc822; staff@example.edu\r\nAction: expanded\r\n", notice)
        self.assertNotIn(b"Action: delivered", notice)
        [spooled] = self.spool.pending()
        self.assertEqual(spooled["dsn"]["ret"], "FULL")
        self.assertEqual(spooled["dsn"]["recipients"]["helpdesk@partner.org"],
                         {"notify": ["FAILURE"], "orcpt": None, "rcpt": "staff@example.edu"})

    def test_failed_notice_does_not_fail_the_message(self) -> None:
        """The message is stored: a notice that cannot be delivered is
        logged, and the client still hears 250 (else it would send again)."""
        real = self.store.deliver

        def refuse_notices(*a: Any, **kw: Any) -> Deferred[Any]:
            if a[1].startswith(b"Return-Path: <>"):
                raise OSError("disk full for notices")
            return real(*a, **kw)

        self.store.deliver = refuse_notices  # type: ignore[method-assign]
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<alice@example.edu>\r\n"
                           b"RCPT TO:<bob@example.edu> NOTIFY=SUCCESS\r\nDATA\r\nx\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued as "))
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_notice_refused_by_a_full_mailbox_is_spooled(self) -> None:
        """alice's mailbox is full: her notice waits in the spool for the
        queue's retries, like any refused local copy."""
        self.store = MemoryStore(clock=self.clock, quota_for=lambda account: Quota(
            max_messages=0 if account == "alice@example.edu" else None))
        self.delivery = Delivery(self.store, self.spool, Book(), "mail.example.edu", self.clock)
        proto, t = self.open()
        proto.dataReceived(b"MAIL FROM:<alice@example.edu>\r\n"
                           b"RCPT TO:<bob@example.edu> NOTIFY=SUCCESS\r\nDATA\r\nx\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0 OK queued as "))
        self.assertEqual(len(self.inbox("bob@example.edu")), 1)
        [notice] = self.spool.pending()
        self.assertEqual((notice["sender"], notice["recipients"]), ("", ["alice@example.edu"]))
        data = Path(self.spool.new, notice["id"] + ".eml").read_bytes()
        self.assertIn(b"Final-Recipient: rfc822; bob@example.edu\r\nAction: delivered\r\n", data)
