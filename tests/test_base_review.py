# -*- test-case-name: tests.test_base_review -*-
"""
Review of the shared base: TLS contexts and client certificates
(L{gateway.tls}), the configuration's limits and listeners
(L{gateway.config}), the base protocol's limits and STARTTLS
(L{gateway.protocol}), and the composition root (L{gateway.service}).

Each test proves one property; those named after what they prevent failed
before their fix.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import time
from base64 import b64encode
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.address import IPv6Address
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway import certs, cli
from gateway.config import MAX_COUNT, MAX_SECONDS, Limits, SNICertificate
from gateway.errors import ConfigError
from gateway.imap.protocol import IMAPFactory
from gateway.pop3.protocol import POP3Factory
from gateway.protocol import ConnectionLimitingFactory, address_key
from gateway.service import GatewayService, ListenerService, build
from gateway.smtp.server import SMTPFactory
from gateway.tls import ServerTLS, TLSSetupError
from tests.gatewayprocess import GatewayProcess
from tests.support import (
    TLSStringTransport,
    client_context,
    config_text,
    make_certs,
    memory_handshake,
    parse_text,
)
from tests.test_protocols import TLS, connect, lines
from tests.test_tls import TLSTestMixin, _sans

# TLS


def _issue_client(ca_dir: Path, out: Path, *, not_before: datetime.datetime,
                  not_after: datetime.datetime,
                  usages: tuple[x509.ObjectIdentifier, ...] | None) -> tuple[Path, Path]:
    """A client certificate from the CA in C{ca_dir} with the given validity
    and extendedKeyUsage (C{None}: no such extension)."""
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice@example.edu")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("alice@example.edu")]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), False)  # type: ignore[arg-type]
    )
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    pem, key_path = out / "client.pem", out / "client.key"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return pem, key_path


class TLSPolicyTests(TLSTestMixin, SynchronousTestCase):
    """What the handshake allows, measured with a real client (Python's ssl)."""

    def refused(self, configure: Any) -> None:
        server = ServerTLS(self.profile())
        ctx = client_context(self.main.ca_certificate)
        configure(ctx)
        with self.assertRaises((ssl.SSLError, SSL.Error)):
            memory_handshake(server.serverConnectionForTLS(object()), ctx, "mail.example.edu")

    def test_no_forward_secrecy_refused(self) -> None:
        """TLS 1.2 with RSA key exchange (no ECDHE) is refused."""
        def configure(ctx: ssl.SSLContext) -> None:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers("AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA")
        self.refused(configure)

    def test_cbc_refused(self) -> None:
        """TLS 1.2 with ECDHE but a CBC cipher (no AEAD) is refused."""
        def configure(ctx: ssl.SSLContext) -> None:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")
        self.refused(configure)

    def test_tls10_refused(self) -> None:
        def configure(ctx: ssl.SSLContext) -> None:
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        self.refused(configure)

    def test_absent_server_name_gets_default(self) -> None:
        other = certs.init_certificates(self.dir / "other", ["mail.other.example"])
        server = ServerTLS(self.profile(sni=(SNICertificate(other.certificate, other.key),)))
        ctx = client_context(self.main.ca_certificate)
        ctx.check_hostname = False
        obj = memory_handshake(server.serverConnectionForTLS(object()), ctx, None)
        self.assertIn("mail.example.edu", _sans(obj))

    def test_sni_certificate_wins_over_default_for_a_shared_name(self) -> None:
        """
        The module's rule: an extra certificate is more specific than the
        default, so it serves a name both carry (both carry localhost, as
        every certificate of C{certs init} does).  The default won before.
        """
        other = certs.init_certificates(self.dir / "other", ["mail.example.edu"])
        server = ServerTLS(self.profile(sni=(SNICertificate(other.certificate, other.key),)))
        obj = self.handshake(server, "mail.example.edu", ca=other.ca_certificate)
        served = x509.load_der_x509_certificate(obj.getpeercert(True) or b"")
        expected = x509.load_pem_x509_certificate(other.certificate.read_bytes())
        self.assertEqual(served.serial_number, expected.serial_number)

    def test_first_sni_certificate_wins_among_extras(self) -> None:
        first = certs.init_certificates(self.dir / "first", ["shared.example"])
        second = certs.init_certificates(self.dir / "second", ["shared.example"])
        server = ServerTLS(self.profile(sni=(SNICertificate(first.certificate, first.key),
                                             SNICertificate(second.certificate, second.key))))
        self.handshake(server, "shared.example", ca=first.ca_certificate)


class KeyFileTests(TLSTestMixin, SynchronousTestCase):
    """Keys refused at start with a message that says what is wrong."""

    def message(self, **kw: Any) -> str:
        with self.assertRaises(TLSSetupError) as cm:
            ServerTLS(self.profile(**kw))
        return str(cm.exception)

    def test_mismatched_key_message_names_both_files(self) -> None:
        other = make_certs(self.dir / "other", "x.example")
        text = self.message(private_key=other.key)
        self.assertIn("does not match", text)
        self.assertIn(str(other.key), text)
        self.assertIn(str(self.main.certificate), text)

    def test_missing_key_message(self) -> None:
        missing = self.dir / "gone.key"
        self.assertEqual(self.message(private_key=missing),
                         f"cannot read {missing}: No such file or directory")

    def test_encrypted_key_refused_without_asking_for_a_pass_phrase(self) -> None:
        """
        OpenSSL's PEM reader asks for the pass phrase on the terminal: at a
        reload, in the reactor thread.  The key is refused with a clear
        message instead.
        """
        key = serialization.load_pem_private_key(self.main.key.read_bytes(), None)
        encrypted = self.dir / "encrypted.key"
        encrypted.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
        self.assertIn("is encrypted", self.message(private_key=encrypted))

    def test_certificate_given_as_key(self) -> None:
        self.assertIn("no usable PEM private key",
                      self.message(private_key=self.main.certificate))

    def test_world_readable_key_warned(self) -> None:
        live = self.dir / "live.key"
        shutil.copy(self.main.key, live)
        os.chmod(live, 0o644)
        server = ServerTLS(self.profile(private_key=live))
        self.assertEqual(len(server.warnings), 1)
        self.assertIn("readable by every user", server.warnings[0])
        os.chmod(live, 0o640)  # a group such as ssl-cert is common: no warning
        server.reload()
        self.assertEqual(server.warnings, ())

    def test_generated_keys_not_warned(self) -> None:
        self.assertEqual(ServerTLS(self.profile()).warnings, ())


class ClientCertificateReviewTests(TLSTestMixin, SynchronousTestCase):
    """Which client certificates SASL EXTERNAL may map: the handshake
    succeeds every time, the mapping only for a valid clientAuth one."""

    def setUp(self) -> None:
        super().setUp()
        self.server = ServerTLS(self.profile(client_ca=self.main.ca_certificate))
        self.now = datetime.datetime.now(datetime.UTC)

    def mapped(self, cert: Path, key: Path) -> bool:
        obj = self.handshake(self.server, "mail.example.edu", cert=cert, key=key)
        self.assertTrue(obj.version())  # connected all the same
        self.assertIsNotNone(self.last_connection.get_peer_certificate())
        return self.server.verified_peer_certificate(self.last_connection) is not None

    def client(self, name: str, days_from: int = -1, days_to: int = 30,
               usages: tuple[x509.ObjectIdentifier, ...] | None = (
                   ExtendedKeyUsageOID.CLIENT_AUTH,)) -> tuple[Path, Path]:
        day = datetime.timedelta(days=1)
        return _issue_client(self.dir / "main", self.dir / name,
                             not_before=self.now + days_from * day,
                             not_after=self.now + days_to * day, usages=usages)

    def test_valid_client_certificate_mapped(self) -> None:
        self.assertTrue(self.mapped(*self.client("good")))

    def test_expired_not_mapped(self) -> None:
        self.assertFalse(self.mapped(*self.client("expired", -30, -1)))

    def test_not_yet_valid_not_mapped(self) -> None:
        self.assertFalse(self.mapped(*self.client("future", 1, 30)))

    def test_server_only_usage_not_mapped(self) -> None:
        self.assertFalse(self.mapped(*self.client(
            "server", usages=(ExtendedKeyUsageOID.SERVER_AUTH,))))

    def test_certificate_without_extended_key_usage_not_mapped(self) -> None:
        """A certificate the CA did not mark for client authentication (no
        extendedKeyUsage at all: an S/MIME or device certificate of a site
        CA) logs nobody in.  It was mapped before."""
        self.assertFalse(self.mapped(*self.client("no-eku", usages=None)))

    def test_plain_user_certificate_without_san_mapped(self) -> None:
        """
        C{mailgateway certs client bob} makes a certificate without a
        subjectAltName (for the C{cn} mapping).  The Web PKI client policy
        requires one, so such a certificate was never accepted.
        """
        bob = certs.issue_client_certificate(self.dir / "main", "bob")
        self.assertTrue(self.mapped(bob.certificate, bob.key))

    def test_untrusted_ca_connects_unmapped(self) -> None:
        make_certs(self.dir / "stranger", "x.example")
        mallory = certs.issue_client_certificate(self.dir / "stranger", "alice@example.edu")
        self.assertFalse(self.mapped(mallory.certificate, mallory.key))


class ReloadReviewTests(TLSTestMixin, SynchronousTestCase):
    def test_reload_with_mismatched_key_keeps_old(self) -> None:
        live = self.dir / "live"
        live.mkdir()
        shutil.copy(self.main.certificate, live / "server.pem")
        shutil.copy(self.main.key, live / "server.key")
        server = ServerTLS(self.profile(certificate=live / "server.pem",
                                        private_key=live / "server.key"))
        renewed = make_certs(self.dir / "renewed", "mail.example.edu")
        shutil.copy(renewed.certificate, live / "server.pem")  # the key is not copied
        with self.assertRaises(TLSSetupError):
            server.reload()
        obj = self.handshake(server, "mail.example.edu")  # old CA still verifies
        self.assertIn("mail.example.edu", _sans(obj))


# Configuration


IMAPS = """
[[listener]]
name = "{name}"
role = "imap"
endpoint = "{endpoint}"
tls = "implicit"
tls_profile = "main"
"""


def listener(name: str = "imaps", endpoint: str = "tcp:1993:interface=127.0.0.1") -> str:
    return IMAPS.format(name=name, endpoint=endpoint)


class ConfigReviewTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        make_certs(self.dir / "certs")

    def text(self, listeners: str | None = None, extra: str = "") -> str:
        return config_text(self.dir / "certs", self.dir / "state",
                           listener() if listeners is None else listeners, extra)

    def problems(self, text: str) -> dict[str, str]:
        with self.assertRaises(ConfigError) as cm:
            parse_text(text, self.dir)
        return dict(cm.exception.problems)

    def test_every_limit_refuses_zero_negative_bool_and_huge(self) -> None:
        for name, default in vars(Limits()).items():
            zero_ok = name == "pop3_login_delay"
            bad = ["-1", "true", "1e400" if isinstance(default, float) else "9223372036854775807"]
            if not zero_ok:
                bad.append("0")
            for value in bad:
                problems = self.problems(self.text(extra=f"[limits]\n{name} = {value}\n"))
                self.assertIn(f"limits.{name}", problems, (name, value))

    def test_infinite_timeouts_refused(self) -> None:
        """TOML's C{inf} was a valid idle timeout, close grace and shutdown
        timeout: no limit at all."""
        problems = self.problems(self.text(
            extra="[limits]\nidle_timeout_imap = inf\nclose_grace = inf\n"
                  "[auth]\ncache_ttl = inf\n[auth.throttle]\nban_seconds = inf\n"
        ).replace("[server]\n", "[server]\nshutdown_timeout = inf\n"))
        for path in ("limits.idle_timeout_imap", "limits.close_grace", "auth.cache_ttl",
                     "auth.throttle.ban_seconds", "server.shutdown_timeout"):
            self.assertIn("at most", problems.get(path, ""), (path, problems))

    def test_absurd_counts_refused(self) -> None:
        problems = self.problems(self.text(
            extra=f"[limits]\nmax_connections = {MAX_COUNT + 1}\n"
                  "max_line_length = 4294967296\n"
                  "[policy]\nmax_recipients = 9223372036854775807\n"))
        self.assertEqual(problems["limits.max_connections"], "must be at most 1_000_000")
        self.assertIn("at most", problems["limits.max_line_length"])
        self.assertIn("at most", problems["policy.max_recipients"])

    def test_bounds_themselves_accepted(self) -> None:
        config = parse_text(self.text(
            extra=f"[limits]\nmax_connections = {MAX_COUNT}\nidle_timeout_imap = {MAX_SECONDS}\n"),
            self.dir)
        self.assertEqual(config.limits.max_connections, MAX_COUNT)

    def test_ban_after_zero_refused_by_check_not_at_start(self) -> None:
        """C{pair_ban_after = 0} passed C{mailgateway check}, then the start
        died with a traceback from ThrottleSettings."""
        problems = self.problems(self.text(
            extra="[auth.throttle]\npair_ban_after = 0\naddress_ban_after = 0\n"))
        self.assertEqual(problems["auth.throttle.pair_ban_after"], "must be greater than 0")
        self.assertEqual(problems["auth.throttle.address_ban_after"], "must be greater than 0")

    def test_explicit_wildcard_interface_clashes(self) -> None:
        """C{interface=0.0.0.0} is the wildcard written out: it was taken for
        a specific address, and the second bind failed at start."""
        problems = self.problems(self.text(
            listener("a", "tcp:1993:interface=0.0.0.0") + listener("b", "tcp:1993:interface=127.0.0.1")))
        self.assertIn("same address as listener[0]", problems["listener[1].endpoint"])

    def test_one_ipv6_address_spelt_twice_clashes(self) -> None:
        problems = self.problems(self.text(
            listener("a", "tcp6:1993:interface=\\\\:\\\\:1")
            + listener("b", "tcp6:1993:interface=0\\\\:0\\\\:0\\\\:0\\\\:0\\\\:0\\\\:0\\\\:1")))
        self.assertIn("same address as listener[0]", problems["listener[1].endpoint"])

    def test_ipv6_wildcard_clashes_with_ipv4(self) -> None:
        problems = self.problems(self.text(
            listener("a", "tcp:1993:interface=127.0.0.1") + listener("b", "tcp6:1993")))
        self.assertIn("same address as listener[0]", problems["listener[1].endpoint"])

    def test_ipv4_wildcard_and_ipv6_loopback_coexist(self) -> None:
        """0.0.0.0 and ::1 on one port bind fine; the configuration was
        refused."""
        config = parse_text(self.text(
            listener("a", "tcp:1993") + listener("b", "tcp6:1993:interface=\\\\:\\\\:1")), self.dir)
        self.assertEqual(len(config.listeners), 2)

    def test_empty_listener_name_refused(self) -> None:
        """An empty name dropped the listener without a word: the gateway
        started without it."""
        problems = self.problems(self.text(listener("")))
        self.assertEqual(problems["listener[0].name"], "must not be empty")

    def test_every_error_at_once_with_paths(self) -> None:
        text = self.text(
            listener("a", "tcp:1993") + listener("a", "tcp:1993"),
            extra="[limits]\nmax_bad_commands = true\nbogus = 1\n[auth.throttle]\nwindow = 3\n",
        ).replace('local_domains = ["example.test"]',
                  'local_domains = ["example.test"]\ntrusted_networks = ["192.0.2.1/24"]')
        problems = self.problems(text)
        for path in ("limits.max_bad_commands", "limits.bogus", "auth.throttle.window",
                     "server.trusted_networks[0]", "listener[1].name", "listener[1].endpoint"):
            self.assertIn(path, problems)

    def test_check_shows_key_permission_warning(self) -> None:
        os.chmod(self.dir / "certs" / "server.key", 0o644)
        path = self.dir / "gateway.toml"
        path.write_text(self.text())
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli.main(["check", str(path)], out, err), 0)
        self.assertIn("warning: tls.main:", out.getvalue())
        self.assertIn("readable by every user", out.getvalue())


# The base protocol


def ipv6_connect(factory: Any, host: str) -> tuple[Any, TLSStringTransport]:
    proto = factory.buildProtocol(None)
    transport = TLSStringTransport(peerAddress=IPv6Address("TCP", host, 40000))
    proto.makeConnection(transport)
    return proto, transport


class ConnectionCountingTests(SynchronousTestCase):
    def factory(self, **limits: Any) -> Any:
        proto, _ = connect(POP3Factory, "pop3", limits=Limits(**limits))
        proto.connectionLost(None)
        self.assertEqual(proto.factory.total, 0)
        return proto.factory

    def test_ipv4_mapped_counts_as_its_ipv4_address(self) -> None:
        """A dual-stack (tcp6) listener sees IPv4 clients as ::ffff:a.b.c.d;
        they were counted apart from the same client's IPv4 connections."""
        factory = self.factory(max_connections_per_address=1)
        _, first = connect(POP3Factory, "pop3", factory=factory, peer="192.0.2.7")
        self.assertFalse(first.disconnecting)
        proto, second = ipv6_connect(factory, "::ffff:192.0.2.7")
        self.assertTrue(second.disconnecting)
        self.assertEqual(proto.peer, "192.0.2.7")

    def test_ipv4_mapped_client_in_trusted_network(self) -> None:
        """Trusted networks are written in IPv4; the mapped address was
        outside all of them."""
        factory = self.factory(max_connections_per_address=1)
        factory.context.trusted_networks = (ipaddress.ip_network("192.0.2.0/24"),)
        ipv6_connect(factory, "::ffff:192.0.2.7")
        proto, t = ipv6_connect(factory, "::ffff:192.0.2.7")
        self.assertFalse(t.disconnecting)
        self.assertTrue(proto.context.is_trusted(proto.peer))

    def test_ipv6_counted_per_64(self) -> None:
        """One host may use any address of its /64: counting per /128 let
        one client take every slot of the listener."""
        factory = self.factory(max_connections_per_address=2)
        for n in (1, 2):
            _, t = ipv6_connect(factory, f"2001:db8:1:2::{n}")
            self.assertFalse(t.disconnecting)
        _, t = ipv6_connect(factory, "2001:db8:1:2:ffff::99")
        self.assertTrue(t.disconnecting)
        _, t = ipv6_connect(factory, "2001:db8:1:3::1")  # another /64
        self.assertFalse(t.disconnecting)
        self.assertEqual(address_key("2001:db8:1:2::1"), "2001:db8:1:2::/64")
        self.assertEqual(address_key("::ffff:10.1.2.3"), "10.1.2.3")

    def test_slots_all_given_back_on_every_path(self) -> None:
        """Closed, timed out, aborted after the close grace, refused, lost
        mid-handshake, lost twice: the count ends at zero, never below."""
        clock = Clock()
        limits = Limits(max_connections=10, max_connections_per_address=10, close_grace=5)
        proto, _ = connect(IMAPFactory, "imap", tls="implicit", clock=clock, limits=limits)
        factory = proto.factory
        conns = [proto] + [connect(IMAPFactory, "imap", tls="implicit", factory=factory)[0]
                           for _ in range(3)]
        self.assertEqual(factory.total, 4)
        # 0: the handshake fails (the client goes away in the middle of it).
        conns[0].connectionLost(Failure(SSL.Error("handshake failure")))
        conns[0].connectionLost(Failure(SSL.Error("again")))  # only once
        # 1: greeted, then times out; the client reads nothing: aborted.
        conns[1].handshakeCompleted()
        clock.advance(limits.idle_timeout_imap_preauth)
        self.assertTrue(conns[1].transport.disconnecting)
        clock.advance(limits.close_grace)
        self.assertTrue(conns[1].transport.disconnected)  # abortConnection
        conns[1].connectionLost(None)
        # 2 and 3: the server shuts down; 3 never answers and is aborted.
        d = factory.close_all(30)
        conns[2].connectionLost(None)
        self.assertNoResult(d)
        clock.advance(30)
        conns[3].connectionLost(None)
        self.successResultOf(d)
        self.assertEqual((factory.total, dict(factory.by_address), factory.connections),
                         (0, {}, set()))

    def test_failing_logout_still_releases_the_slot(self) -> None:
        """A session whose end raised kept its slot (and its place in the
        factory's connections) for ever."""
        proto, _ = connect(POP3Factory, "pop3", limits=Limits(max_connections=1))

        def logout() -> None:
            raise OSError("store went away")

        proto.logout = logout
        proto.connectionLost(None)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual((proto.factory.total, proto.factory.connections), (0, set()))
        _, t = connect(POP3Factory, "pop3", factory=proto.factory)
        self.assertFalse(t.disconnecting)


class StartTLSReviewTests(SynchronousTestCase):
    def test_partial_line_behind_starttls_dropped(self) -> None:
        """Bytes after STARTTLS's CRLF without their own CRLF yet must not
        be completed by the first line after the handshake."""
        proto, t = connect(SMTPFactory, "mx")
        proto.dataReceived(b"EHLO a.example\r\n")
        lines(t)
        proto.dataReceived(b"STARTTLS\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.example>")
        self.assertEqual(lines(t), [b"220 2.0.0 Ready to start TLS"])
        self.assertIs(t.tls_started_with, TLS)
        proto.handshakeCompleted()
        proto.dataReceived(b"\r\n")
        replies = lines(t)
        self.assertEqual(len(replies), 1)
        self.assertFalse(replies[0].startswith(b"250"), replies)
        self.assertIsNone(proto.envelope)

    def test_second_starttls_in_segment_not_run(self) -> None:
        for factory, role, upgrade in ((POP3Factory, "pop3", b"STLS"),
                                       (IMAPFactory, "imap", b"a STARTTLS"),
                                       (SMTPFactory, "mx", b"STARTTLS")):
            proto, t = connect(factory, role)
            lines(t)
            started: list[Any] = []
            t.startTLS = started.append  # type: ignore[method-assign, assignment]
            proto.dataReceived(upgrade + b"\r\n" + upgrade + b"\r\n")
            self.assertEqual(len(started), 1, role)
            self.assertEqual(len(lines(t)), 1, role)

    def test_long_line_not_buffered(self) -> None:
        """A line without end is refused once it passes the limit, and what
        was received is not kept."""
        proto, t = connect(IMAPFactory, "imap", limits=Limits(max_line_length=1000))
        lines(t)
        for _ in range(3):
            proto.dataReceived(b"x" * 400)
        self.assertTrue(t.disconnecting)
        self.assertEqual(proto._buffer, b"")
        proto.dataReceived(b"y" * 100_000)  # still arriving: not kept
        self.assertLess(len(proto._buffer), 2000)


class SummaryLogTests(SynchronousTestCase):
    def test_no_password_or_sasl_response_in_the_log(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, events.append)  # type: ignore[arg-type]
        for factory, role, auth in (
            (SMTPFactory, "mx", [b"EHLO a.example", b"AUTH PLAIN",
                                 b64encode(b"\0alice@example.edu\0correct horse"),
                                 b"AUTH LOGIN", b64encode(b"bob@example.edu"),
                                 b64encode(b"wrong battery"), b"QUIT"]),
            (POP3Factory, "pop3", [b"USER alice@example.edu", b"PASS correct horse",
                                   b"QUIT"]),
            (IMAPFactory, "imap", [b"a LOGIN alice@example.edu \"correct horse\"",
                                   b"b LOGOUT"]),
        ):
            proto, t = connect(factory, role, plaintext_without_tls=True)
            proto.dataReceived(b"".join(line + b"\r\n" for line in auth))
            proto.connectionLost(None)
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("alice@example.edu", text)  # the login is logged...
        for secret in ("correct horse", "wrong battery", "Y29ycmVjdCBob3JzZQ",
                       b64encode(b"\0alice@example.edu\0correct horse").decode(),
                       b64encode(b"wrong battery").decode()):
            self.assertNotIn(secret, text)  # ...never what proves it


# The composition root


class ReloadSpy:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.reloads = 0

    def reload(self) -> None:
        self.reloads += 1
        if self.error is not None:
            raise self.error


class ThreadedMemoryReactor(MemoryReactorClock):
    """A memory reactor the service's worker threads can hand results to
    (they are not run: these tests need none)."""

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def shut_down(self) -> None:
        for trigger in self.triggers.get("during", {}).get("shutdown", []):
            trigger[0](*trigger[1], **trigger[2])


class ServiceReviewTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        make_certs(self.dir / "certs")
        self.reactor = ThreadedMemoryReactor()
        self.addCleanup(self.reactor.shut_down)

    def config(self, listeners: str) -> Any:
        return parse_text(config_text(self.dir / "certs", self.dir / "state", listeners),
                          self.dir)

    def test_reload_goes_on_after_an_unexpected_tls_error(self) -> None:
        """One profile's reload raising something other than TLSSetupError
        stopped the reload there: no other profile, and not the users file."""
        broken, fine, users = ReloadSpy(ValueError("bad extension")), ReloadSpy(), ReloadSpy()
        root = GatewayService(self.config(listener()), {"a": broken, "b": fine},  # type: ignore[dict-item]
                              [users])
        root.reload()
        self.assertEqual((broken.reloads, fine.reloads, users.reloads), (1, 1, 1))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_empty_mechanisms_on_a_listener_offers_none(self) -> None:
        """C{mechanisms = []} on a listener (no AUTH on port 25) fell back
        to every default mechanism."""
        text = listener("mx", "tcp:2525").replace('role = "imap"', 'role = "mx"').replace(
            'tls = "implicit"', 'tls = "starttls"') + "mechanisms = []\n"
        root = build(self.config(text), self.reactor)
        [svc] = list(root)
        self.assertEqual(svc.factory.context.mechanisms, ())
        proto, t = connect(SMTPFactory, "mx", factory=svc.factory)
        proto.dataReceived(b"EHLO a.example\r\n")
        self.assertNotIn(b"AUTH", t.value())

    def test_shutdown_order(self) -> None:
        """Listeners stop accepting, clients are told, the store closes only
        once the last connection is gone."""
        reactor = self.reactor
        root = build(self.config(listener("imap", "tcp:1143").replace(
            'tls = "implicit"', 'tls = "starttls"')), reactor)
        closed: list[str] = []
        root.closers.append(lambda: closed.append("store"))
        root.privilegedStartService()
        root.startService()
        [svc] = list(root)
        self.assertEqual(len(reactor.tcpServers), 1)
        proto, t = connect(IMAPFactory, "imap", factory=svc.factory)
        lines(t)
        d = root.stopService()
        self.assertFalse(svc.running)
        self.assertIsNone(svc.port)
        self.assertEqual(lines(t), [b"* BYE [UNAVAILABLE] server shutting down"])
        self.assertTrue(t.disconnecting)
        self.assertEqual(closed, [])
        self.assertNoResult(d)
        proto.connectionLost(None)
        self.successResultOf(d)
        self.assertEqual(closed, ["store"])

    def test_listener_that_cannot_bind_stops_the_start(self) -> None:
        class Refusing:
            def listen(self, factory: Any) -> Any:
                return fail(OSError("Address already in use"))

        svc = ListenerService(self.config(listener()).listeners[0], Refusing(),
                              ConnectionLimitingFactory.__new__(ConnectionLimitingFactory),
                              None, Clock(), 1.0)
        with self.assertRaises(SystemExit) as cm:
            svc.privilegedStartService()
        self.assertIn("listener imaps (tcp:1993:interface=127.0.0.1): cannot listen: "
                      "Address already in use", str(cm.exception.code))
        self.assertIsNone(svc.port)


# End to end


class EndToEndReviewTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gateway = GatewayProcess()
        self.addCleanup(self.gateway.stop)
        self.gateway.start()

    def ctx(self, ca: Path | None = None) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(ca or self.gateway.certs.ca_certificate))

    def test_weak_tls_refused_on_the_wire(self) -> None:
        """On a real implicit-TLS listener: TLS 1.1 and a TLS 1.2 suite
        without forward secrecy are refused; TLS 1.2 ECDHE is taken."""
        port = self.gateway.ports["imaps"]
        weak = []
        old = self.ctx()
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        weak.append(old)
        rsa_kx = self.ctx()
        rsa_kx.maximum_version = ssl.TLSVersion.TLSv1_2
        rsa_kx.set_ciphers("AES128-GCM-SHA256:AES256-GCM-SHA384")
        weak.append(rsa_kx)
        for ctx in weak:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with self.assertRaises(ssl.SSLError):
                    ctx.wrap_socket(raw, server_hostname="localhost")
        good = self.ctx()
        good.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with good.wrap_socket(raw, server_hostname="localhost") as s:
                self.assertIn("ECDHE", (s.cipher() or ("",))[0])
                self.assertTrue(s.recv(100).startswith(b"* OK"))

    def test_sighup_with_broken_certificate_keeps_the_old_one(self) -> None:
        def serial() -> int:
            with socket.create_connection(("127.0.0.1", self.gateway.ports["imaps"]),
                                          timeout=10) as raw:
                with self.ctx().wrap_socket(raw, server_hostname="localhost") as s:
                    return x509.load_der_x509_certificate(
                        s.getpeercert(binary_form=True) or b"").serial_number

        before = serial()
        self.gateway.certs.certificate.write_text("not a certificate\n")
        self.gateway.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "not reloaded" not in self.gateway.log.read_text():
            self.assertLess(time.monotonic(), deadline, self.gateway.log.read_text())
            time.sleep(0.1)
        self.assertEqual(serial(), before)
        assert self.gateway.process is not None
        self.assertIsNone(self.gateway.process.poll())

