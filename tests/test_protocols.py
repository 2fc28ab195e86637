"""
Conversation tests for the three protocol skeletons and their shared base:
greetings, capabilities by TLS state, the TLS upgrade and its injection
defence, limits.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.portal import build_portal
from gateway.auth.realm import GatewayRealm
from gateway.auth.throttle import Throttle, ThrottleSettings
from gateway.config import Limits, Listener
from gateway.imap.protocol import IMAPFactory
from gateway.pop3.protocol import POP3Factory
from gateway.protocol import ListenerContext
from gateway.smtp.server import SMTPFactory
from gateway.testing import MemoryAuthBackend, MemoryStore
from tests.support import TLSStringTransport

TLS = object()  # stands for a ServerTLS; the transport only records it


def auth_stack(clock: Clock) -> tuple[MemoryAuthBackend, Any]:
    """A working directory with alice and bob, and the portal over it."""
    backend = MemoryAuthBackend()
    backend.add_account("alice@example.edu", "correct horse", legacy=("CRAM-MD5", "APOP"))
    backend.add_account("bob@example.edu", "battery staple")
    portal = build_portal(GatewayRealm(), backend, Throttle(clock, ThrottleSettings()))
    return backend, portal


MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN", "APOP")


def connect(factory_class: Any, role: str, tls: str = "starttls", peer: str = "192.0.2.7",
            limits: Limits | None = None, clock: Clock | None = None,
            factory: Any = None, plaintext_without_tls: bool = False) -> tuple[Any, TLSStringTransport]:
    if factory is None:
        clock = clock or Clock()
        backend, portal = auth_stack(clock)
        context = ListenerContext(
            listener=Listener("test", role, "tcp:0", tls, "main" if tls != "none" else None),
            hostname="mail.example.edu",
            limits=limits or Limits(),
            portal=portal,
            clock=clock,
            tls=TLS if tls != "none" else None,  # type: ignore[arg-type]
            backend=backend,
            mechanisms=MECHANISMS,
            plaintext_without_tls=plaintext_without_tls,
            trusted_networks=(),
            extras={"store": MemoryStore(clock=clock)},
        )
        factory = factory_class(context)
    proto = factory.buildProtocol(None)
    from twisted.internet.address import IPv4Address

    transport = TLSStringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    proto.makeConnection(transport)
    return proto, transport


def lines(transport: TLSStringTransport) -> list[bytes]:
    out = transport.value().split(b"\r\n")
    transport.clear()
    return out[:-1]


class UpgradeMixin:
    """The injection defence, for each protocol."""

    factory_class: Any
    role: str
    upgrade: bytes
    follow: bytes

    def test_injection_after_upgrade_dropped(self) -> None:
        """
        Commands sent in the same segment as the upgrade command are never
        processed (CVE-2011-0411).
        """
        proto, t = connect(self.factory_class, self.role)
        lines(t)
        proto.dataReceived(self.upgrade + b"\r\n" + self.follow + b"\r\n")
        replies = lines(t)
        self.assertEqual(len(replies), 1, replies)
        self.assertIs(t.tls_started_with, TLS)
        proto.handshakeCompleted()
        self.assertTrue(proto.encrypted)
        self.assertEqual(t.value(), b"")

    def test_second_upgrade_refused(self) -> None:
        proto, t = connect(self.factory_class, self.role)
        proto.dataReceived(self.upgrade + b"\r\n")
        proto.handshakeCompleted()
        t.tls_started_with = None
        lines(t)
        proto.dataReceived(self.upgrade + b"\r\n")
        reply = lines(t)[0]
        self.assertIsNone(t.tls_started_with)
        self.assertTrue(reply.startswith((b"-ERR", b"503", b"a BAD")), reply)

    def test_implicit_greets_after_handshake(self) -> None:
        """
        The greeting waits for the handshake, so it can advertise what TLS
        allows (EXTERNAL, SCRAM-*-PLUS) and clients may trust it.
        """
        proto, t = connect(self.factory_class, self.role, tls="implicit")
        self.assertEqual(t.value(), b"")
        proto.handshakeCompleted()
        self.assertEqual(len(lines(t)), 1)

    def test_no_upgrade_on_implicit(self) -> None:
        proto, t = connect(self.factory_class, self.role, tls="implicit")
        proto.handshakeCompleted()
        lines(t)
        proto.dataReceived(self.upgrade + b"\r\n")
        self.assertIsNone(t.tls_started_with)

    def test_no_upgrade_without_tls(self) -> None:
        proto, t = connect(self.factory_class, self.role, tls="none")
        lines(t)
        proto.dataReceived(self.upgrade + b"\r\n")
        self.assertIsNone(t.tls_started_with)

    def test_line_too_long_closes(self) -> None:
        proto, t = connect(self.factory_class, self.role, limits=Limits(max_line_length=1000))
        lines(t)
        proto.dataReceived(b"X" * 2000)
        self.assertTrue(t.disconnecting)
        self.assertTrue(lines(t))

    def test_idle_timeout(self) -> None:
        clock = Clock()
        proto, t = connect(self.factory_class, self.role, clock=clock)
        lines(t)
        clock.advance(10_000)
        self.assertTrue(t.disconnecting)
        self.assertTrue(lines(t))

    def test_handshake_timeout_implicit_tls(self) -> None:
        """A client that never finishes its handshake on an implicit-TLS
        listener is closed after tls_handshake_timeout, not the idle time;
        once the handshake is done, the state's idle time applies."""
        clock = Clock()
        limits = Limits(tls_handshake_timeout=30)
        proto, t = connect(self.factory_class, self.role, tls="implicit", clock=clock,
                           limits=limits)
        clock.advance(29)
        self.assertFalse(t.disconnecting)
        clock.advance(2)
        self.assertTrue(t.disconnecting)
        proto, t = connect(self.factory_class, self.role, tls="implicit", clock=clock,
                           limits=limits)
        clock.advance(20)
        proto.handshakeCompleted()
        clock.advance(40)
        self.assertFalse(t.disconnecting)
        clock.advance(10_000)
        self.assertTrue(t.disconnecting)

    def test_handshake_timeout_after_upgrade(self) -> None:
        clock = Clock()
        proto, t = connect(self.factory_class, self.role, clock=clock,
                           limits=Limits(tls_handshake_timeout=30))
        lines(t)
        proto.dataReceived(self.upgrade + b"\r\n")
        self.assertIsNotNone(t.tls_started_with)
        clock.advance(31)
        self.assertTrue(t.disconnecting)

    def test_bad_commands_limit(self) -> None:
        proto, t = connect(self.factory_class, self.role, limits=Limits(max_bad_commands=3))
        for _ in range(2):
            proto.dataReceived(b"a XYZZY\r\n")
        self.assertFalse(t.disconnecting)
        proto.dataReceived(b"a XYZZY\r\n")
        self.assertTrue(t.disconnecting)

    def test_per_address_limit(self) -> None:
        proto, t = connect(self.factory_class, self.role, limits=Limits(max_connections_per_address=1))
        second, t2 = connect(self.factory_class, self.role, factory=proto.factory)
        self.assertTrue(t2.disconnecting)
        self.assertFalse(t.disconnecting)
        proto.connectionLost(None)
        third, t3 = connect(self.factory_class, self.role, factory=proto.factory)
        self.assertFalse(t3.disconnecting)

    def test_shutdown_says_goodbye(self) -> None:
        proto, t = connect(self.factory_class, self.role)
        lines(t)
        d = proto.factory.close_all(5)
        self.assertTrue(t.disconnecting)
        self.assertTrue(lines(t))
        self.assertNoResult(d)
        proto.connectionLost(None)
        self.successResultOf(d)


class POP3Tests(UpgradeMixin, SynchronousTestCase):
    factory_class = POP3Factory
    role = "pop3"
    upgrade = b"STLS"
    follow = b"CAPA"

    def test_greeting_has_apop_timestamp(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        greeting = lines(t)[0]
        self.assertTrue(greeting.startswith(b"+OK "))
        self.assertRegex(greeting, rb"<\d+\.[0-9a-f]{16}@mail\.example\.edu>$")
        other, t2 = connect(POP3Factory, "pop3")
        self.assertNotEqual(lines(t2)[0], greeting)

    def test_capa_before_tls(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        lines(t)
        proto.dataReceived(b"CAPA\r\n")
        caps = lines(t)
        self.assertEqual(caps[0], b"+OK Capability list follows")
        self.assertEqual(caps[-1], b".")
        self.assertIn(b"STLS", caps)
        self.assertIn(b"RESP-CODES", caps)
        self.assertNotIn(b"USER", caps)  # plain text refused before TLS
        self.assertNotIn(b"PIPELINE", caps)

    def test_capa_after_tls(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        proto.dataReceived(b"STLS\r\n")
        proto.handshakeCompleted()
        lines(t)
        proto.dataReceived(b"CAPA\r\n")
        caps = lines(t)
        self.assertNotIn(b"STLS", caps)
        self.assertIn(b"USER", caps)

    def test_stls_reply(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        lines(t)
        proto.dataReceived(b"STLS\r\n")
        self.assertEqual(lines(t), [b"+OK Begin TLS negotiation"])

    def test_quit(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        lines(t)
        proto.dataReceived(b"QUIT\r\n")
        self.assertEqual(lines(t), [b"+OK bye"])
        self.assertTrue(t.disconnecting)

    def test_unknown_and_binary(self) -> None:
        proto, t = connect(POP3Factory, "pop3")
        lines(t)
        proto.dataReceived(b"\xff\xfe\r\nFOO bar\r\n")
        self.assertEqual(lines(t), [b"-ERR unknown command", b"-ERR unknown command"])

    def test_busy_reply(self) -> None:
        proto, t = connect(POP3Factory, "pop3", limits=Limits(max_connections=1))
        _, t2 = connect(POP3Factory, "pop3", factory=proto.factory)
        self.assertEqual(lines(t2), [b"-ERR [SYS/TEMP] too many connections, try again later"])


class IMAPTests(UpgradeMixin, SynchronousTestCase):
    factory_class = IMAPFactory
    role = "imap"
    upgrade = b"a STARTTLS"
    follow = b"b CAPABILITY"

    def test_greeting_capabilities_before_tls(self) -> None:
        proto, t = connect(IMAPFactory, "imap")
        greeting = lines(t)[0]
        self.assertTrue(greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 "))
        self.assertIn(b"STARTTLS", greeting)
        self.assertIn(b"LOGINDISABLED", greeting)

    def test_capabilities_after_tls(self) -> None:
        proto, t = connect(IMAPFactory, "imap")
        proto.dataReceived(b"a STARTTLS\r\n")
        proto.handshakeCompleted()
        lines(t)
        proto.dataReceived(b"b CAPABILITY\r\n")
        reply = lines(t)
        self.assertEqual(reply[1], b"b OK CAPABILITY completed")
        self.assertNotIn(b"STARTTLS", reply[0])
        self.assertNotIn(b"LOGINDISABLED", reply[0])

    def test_implicit_has_no_logindisabled(self) -> None:
        proto, t = connect(IMAPFactory, "imap", tls="implicit")
        proto.handshakeCompleted()
        greeting = lines(t)[0]
        self.assertNotIn(b"LOGINDISABLED", greeting)
        self.assertNotIn(b"STARTTLS", greeting)

    def test_starttls_reply(self) -> None:
        proto, t = connect(IMAPFactory, "imap")
        lines(t)
        proto.dataReceived(b"a1 STARTTLS\r\n")
        self.assertEqual(lines(t), [b"a1 OK Begin TLS negotiation now"])

    def test_bad_tag(self) -> None:
        proto, t = connect(IMAPFactory, "imap")
        lines(t)
        proto.dataReceived(b"a{ NOOP\r\n")
        self.assertEqual(lines(t), [b"* BAD invalid tag"])

    def test_logout(self) -> None:
        proto, t = connect(IMAPFactory, "imap")
        lines(t)
        proto.dataReceived(b"z LOGOUT\r\n")
        self.assertEqual(lines(t), [b"* BYE logging out", b"z OK LOGOUT completed"])
        self.assertTrue(t.disconnecting)


class SMTPTests(UpgradeMixin, SynchronousTestCase):
    factory_class = SMTPFactory
    role = "mx"
    upgrade = b"STARTTLS"
    follow = b"MAIL FROM:<inject@evil.example>"

    def test_greeting(self) -> None:
        proto, t = connect(SMTPFactory, "mx")
        self.assertEqual(lines(t), [b"220 mail.example.edu ESMTP mailgateway"])

    def test_ehlo_before_and_after_tls(self) -> None:
        proto, t = connect(SMTPFactory, "mx")
        lines(t)
        proto.dataReceived(b"EHLO client.example\r\n")
        before = lines(t)
        self.assertEqual(before[0], b"250-mail.example.edu greets 192.0.2.7")
        self.assertIn(b"250-STARTTLS", before[:-1] + [before[-1].replace(b"250 ", b"250-")])
        self.assertIn(b"ENHANCEDSTATUSCODES", b" ".join(before))
        proto.dataReceived(b"STARTTLS\r\n")
        self.assertEqual(lines(t), [b"220 2.0.0 Ready to start TLS"])
        proto.handshakeCompleted()
        self.assertIsNone(proto.helo)  # RFC 3207 section 4.2: state forgotten
        proto.dataReceived(b"EHLO client.example\r\n")
        after = lines(t)
        self.assertNotIn(b"STARTTLS", b" ".join(after))
        self.assertTrue(after[-1].startswith(b"250 "))

    def test_ehlo_needs_argument(self) -> None:
        proto, t = connect(SMTPFactory, "mx")
        lines(t)
        proto.dataReceived(b"EHLO\r\n")
        self.assertEqual(lines(t), [b"501 5.5.4 EHLO needs a domain or address literal"])

    def test_starttls_with_argument(self) -> None:
        proto, t = connect(SMTPFactory, "mx")
        lines(t)
        proto.dataReceived(b"STARTTLS now\r\n")
        self.assertEqual(lines(t), [b"501 5.5.4 STARTTLS takes no parameters"])
        self.assertIsNone(t.tls_started_with)

    def test_quit(self) -> None:
        proto, t = connect(SMTPFactory, "mx")
        lines(t)
        proto.dataReceived(b"QUIT\r\n")
        self.assertEqual(lines(t), [b"221 2.0.0 mail.example.edu closing connection"])
        self.assertTrue(t.disconnecting)

    def test_busy(self) -> None:
        proto, t = connect(SMTPFactory, "mx", limits=Limits(max_connections=1))
        _, t2 = connect(SMTPFactory, "mx", factory=proto.factory)
        self.assertEqual(lines(t2), [b"421 4.7.0 mail.example.edu too many connections, try again later"])
