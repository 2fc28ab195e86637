"""
Conversations of the ESMTP mail transaction: extensions, MAIL/RCPT/DATA
under the relay policy, delivery into the store and the spool before 250,
pipelining order, and each refusal.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import Limits
from gateway.smtp.delivery import Delivery
from gateway.smtp.policy import PolicySettings
from gateway.smtp.server import SMTPFactory, SMTPServices
from gateway.smtp.spool import Spool
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
        pending: list[Deferred[Any]] = []
        real = self.store.deliver

        def slow(*a: Any, **kw: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            return d.addCallback(lambda _: real(*a, **kw))

        self.store.deliver = slow  # type: ignore[method-assign]
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

    def test_implicit_tls_counts_as_encrypted(self) -> None:
        proto, t = self.open(tls="implicit", role="submissions")
        proto.dataReceived(b"AUTH PLAIN " + plain("bob@example.edu", "battery staple") + b"\r\n")
        self.assertEqual(lines(t), [b"235 2.7.0 authentication successful"])
        proto.dataReceived(b"MAIL FROM:<bob@example.edu>\r\nRCPT TO:<alice@example.edu>\r\n"
                           b"DATA\r\nhi\r\n.\r\n")
        self.assertTrue(lines(t)[-1].startswith(b"250 2.0.0"))
        self.assertIn(b"with ESMTPSA", self.inbox("alice@example.edu")[0])
