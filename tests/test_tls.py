"""Tests for L{gateway.tls}: contexts, SNI, reload, optional client certificates."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from gateway import certs
from gateway.config import SNICertificate, TLSProfile
from gateway.tls import ServerTLS, TLSSetupError, build
from tests.support import client_context, make_certs, memory_handshake


def _sans(obj: ssl.SSLObject) -> list[str]:
    der = obj.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.DNSName)


class TLSTestMixin:
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.main = make_certs(self.dir / "main", "mail.example.edu")

    def profile(self, **kw: object) -> TLSProfile:
        base = dict(name="main", certificate=self.main.certificate, private_key=self.main.key)
        base.update(kw)
        return TLSProfile(**base)  # type: ignore[arg-type]

    def handshake(self, server: ServerTLS, name: str | None, ca: Path | None = None,
                  cert: Path | None = None, key: Path | None = None) -> ssl.SSLObject:
        conn = server.serverConnectionForTLS(object())
        self.last_connection = conn
        ctx = client_context(ca or self.main.ca_certificate, cert, key)
        return memory_handshake(conn, ctx, name)


class ContextTests(TLSTestMixin, SynchronousTestCase):
    def test_verified_handshake(self) -> None:
        obj = self.handshake(ServerTLS(self.profile()), "mail.example.edu")
        self.assertIn(obj.version(), ("TLSv1.2", "TLSv1.3"))
        self.assertIn("mail.example.edu", _sans(obj))

    def test_wrong_name_refused_by_client(self) -> None:
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.handshake(ServerTLS(self.profile()), "other.example.org")

    def test_minimum_version(self) -> None:
        server = ServerTLS(self.profile(min_version="TLSv1.3"))
        ctx = client_context(self.main.ca_certificate)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with self.assertRaises((ssl.SSLError, SSL.Error)):
            memory_handshake(server.serverConnectionForTLS(object()), ctx, "mail.example.edu")

    def test_tls12_allowed_by_default(self) -> None:
        server = ServerTLS(self.profile())
        ctx = client_context(self.main.ca_certificate)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        obj = memory_handshake(server.serverConnectionForTLS(object()), ctx, "mail.example.edu")
        self.assertEqual(obj.version(), "TLSv1.2")

    def test_tls11_refused_by_default(self) -> None:
        server = ServerTLS(self.profile())
        ctx = client_context(self.main.ca_certificate)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        with self.assertRaises((ssl.SSLError, SSL.Error)):
            memory_handshake(server.serverConnectionForTLS(object()), ctx, "mail.example.edu")

    def test_key_mismatch(self) -> None:
        other = make_certs(self.dir / "other", "x.example")
        with self.assertRaises(TLSSetupError) as cm:
            ServerTLS(self.profile(private_key=other.key))
        self.assertIn(str(other.key), str(cm.exception))

    def test_not_a_certificate(self) -> None:
        bogus = self.dir / "bogus.pem"
        bogus.write_text("hello\n")
        with self.assertRaises(TLSSetupError) as cm:
            ServerTLS(self.profile(certificate=bogus))
        self.assertIn("no PEM certificate", str(cm.exception))

    def test_bad_ciphers(self) -> None:
        with self.assertRaises(TLSSetupError) as cm:
            ServerTLS(self.profile(ciphers="NOTHING-AT-ALL"))
        self.assertIn("ciphers", str(cm.exception))

    def test_build_reports_each_profile(self) -> None:
        bogus = self.dir / "bogus.pem"
        bogus.write_text("x")
        with self.assertRaises(TLSSetupError) as cm:
            build({"a": self.profile(name="a", certificate=bogus),
                   "b": self.profile(name="b", certificate=bogus)})
        self.assertIn("tls.a", str(cm.exception))
        self.assertIn("tls.b", str(cm.exception))


class SNITests(TLSTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        super().setUp()
        # A second certificate from the same CA for another name.
        paths = certs.init_certificates(self.dir / "other", ["mail.other.example", "*.wild.example"])
        self.other = paths
        self.server = ServerTLS(self.profile(sni=(SNICertificate(paths.certificate, paths.key),)))

    def test_each_name_gets_its_certificate(self) -> None:
        main = self.handshake(self.server, "mail.example.edu")
        self.assertIn("mail.example.edu", _sans(main))
        other = self.handshake(self.server, "mail.other.example", ca=self.other.ca_certificate)
        self.assertIn("mail.other.example", _sans(other))

    def test_wildcard(self) -> None:
        obj = self.handshake(self.server, "imap.wild.example", ca=self.other.ca_certificate)
        self.assertIn("*.wild.example", _sans(obj))

    def test_unknown_name_gets_default(self) -> None:
        ctx = client_context(self.main.ca_certificate)
        ctx.check_hostname = False
        obj = memory_handshake(self.server.serverConnectionForTLS(object()), ctx, "unknown.example")
        self.assertIn("mail.example.edu", _sans(obj))


class ReloadTests(TLSTestMixin, SynchronousTestCase):
    def test_new_connection_sees_new_certificate(self) -> None:
        live = self.dir / "live"
        live.mkdir()
        shutil.copy(self.main.certificate, live / "server.pem")
        shutil.copy(self.main.key, live / "server.key")
        server = ServerTLS(self.profile(certificate=live / "server.pem", private_key=live / "server.key"))
        old = self.handshake(server, "mail.example.edu")
        old_serial = x509.load_der_x509_certificate(old.getpeercert(True)).serial_number
        old_conn = self.last_connection

        renewed = make_certs(self.dir / "renewed", "mail.example.edu")
        shutil.copy(renewed.certificate, live / "server.pem")
        shutil.copy(renewed.key, live / "server.key")
        server.reload()

        new = self.handshake(server, "mail.example.edu", ca=renewed.ca_certificate)
        new_serial = x509.load_der_x509_certificate(new.getpeercert(True)).serial_number
        self.assertNotEqual(old_serial, new_serial)
        # The old connection keeps its context and certificate.
        self.assertEqual(old_conn.get_certificate().to_cryptography().serial_number, old_serial)
        self.assertTrue(old_conn.get_cipher_name())

    def test_failed_reload_keeps_old(self) -> None:
        live = self.dir / "live"
        live.mkdir()
        shutil.copy(self.main.certificate, live / "server.pem")
        shutil.copy(self.main.key, live / "server.key")
        server = ServerTLS(self.profile(certificate=live / "server.pem", private_key=live / "server.key"))
        (live / "server.pem").write_text("garbage")
        with self.assertRaises(TLSSetupError):
            server.reload()
        obj = self.handshake(server, "mail.example.edu")
        self.assertIn("mail.example.edu", _sans(obj))


class ClientCertificateTests(TLSTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = ServerTLS(self.profile(client_ca=self.main.ca_certificate))
        self.alice = certs.issue_client_certificate(self.dir / "main", "alice@example.edu")

    def test_no_certificate_still_connects(self) -> None:
        obj = self.handshake(self.server, "mail.example.edu")
        self.assertTrue(obj.version())
        self.assertIsNone(self.server.verified_peer_certificate(self.last_connection))

    def test_good_certificate_verified(self) -> None:
        self.handshake(self.server, "mail.example.edu", cert=self.alice.certificate, key=self.alice.key)
        cert = self.server.verified_peer_certificate(self.last_connection)
        self.assertIsNotNone(cert)
        self.assertIn("alice@example.edu", cert.subject.rfc4514_string())

    def test_unknown_ca_still_connects(self) -> None:
        stranger_ca = make_certs(self.dir / "stranger", "x.example")
        mallory = certs.issue_client_certificate(self.dir / "stranger", "mallory@example.edu")
        obj = self.handshake(self.server, "mail.example.edu", cert=mallory.certificate, key=mallory.key)
        self.assertTrue(obj.version())
        self.assertIsNotNone(self.last_connection.get_peer_certificate())
        self.assertIsNone(self.server.verified_peer_certificate(self.last_connection))
        self.assertTrue(stranger_ca.ca_certificate.exists())

    def test_not_requested_without_client_ca(self) -> None:
        server = ServerTLS(self.profile())
        self.assertFalse(server.requests_client_certificate)
        self.handshake(server, "mail.example.edu", cert=self.alice.certificate, key=self.alice.key)
        self.assertIsNone(self.last_connection.get_peer_certificate())
