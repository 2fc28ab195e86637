# -*- test-case-name: tests.test_certs -*-
"""
Tests for L{gateway.certs}: what the files hold, that real TLS stacks (the
C{openssl} command and Python's C{ssl}) accept them, and that an existing CA
and unsafe names are refused.
"""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from gateway.certs import (
    CertificateError,
    CertPaths,
    _client_names,
    _parse_hostname,
    _write_files,
    describe_certificate,
    init_certificates,
    issue_client_certificate,
)

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
SERVER_FILES = ["ca.key", "ca.pem", "server-chain.pem", "server.key", "server.pem"]
SERVER_ONLY = ["server.key", "server.pem", "server-chain.pem"]
# OpenSSL verify codes (include/openssl/x509_vfy.h).
UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
INVALID_PURPOSE = 26
HOSTNAME_MISMATCH = 62
IP_ADDRESS_MISMATCH = 64


def load(path: Path | None) -> x509.Certificate:
    assert path is not None
    return x509.load_pem_x509_certificate(path.read_bytes())


def extension(cert: x509.Certificate, kind: type) -> Any:
    """@return: the C{kind} extension's value and its C{critical} flag."""
    found = cert.extensions.get_extension_for_class(kind)
    value: Any = found.value
    return value, found.critical


def value(cert: x509.Certificate, kind: type) -> Any:
    return extension(cert, kind)[0]


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def dns_names(cert: x509.Certificate) -> list[str]:
    return value(cert, x509.SubjectAlternativeName).get_values_for_type(x509.DNSName)


def ip_names(cert: x509.Certificate) -> list[str]:
    san = value(cert, x509.SubjectAlternativeName)
    return [str(address) for address in san.get_values_for_type(x509.IPAddress)]


def private_key(path: Path | None) -> Any:
    assert path is not None
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def mode(path: Path | None) -> int:
    assert path is not None
    return stat.S_IMODE(path.stat().st_mode)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def server_context(paths: CertPaths, client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(paths.certificate, paths.key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    ctx.load_verify_locations(ca)
    # Python 3.13's default: RFC 5280 rules (key identifiers, critical CA:TRUE).
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """
    A TLS handshake through memory BIOs, no sockets.

    @return: the client and server ends, both finished.
    @raise ssl.SSLError: either side refused the other.
    """
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, to_server, server_hostname=hostname)
    server = server_ctx.wrap_bio(to_server, to_client, server_side=True)
    done = [False, False]
    for _ in range(10):
        for i, end in enumerate((client, server)):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        if all(done):
            return client, server
    raise AssertionError("handshake did not finish")


def openssl_verify(ca: Path, cert: Path, purpose: str) -> subprocess.CompletedProcess[str]:
    if not os.path.exists(OPENSSL):
        raise SkipTest("no openssl command")
    command = [OPENSSL, "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(ca)]
    return subprocess.run(command + [str(cert)], capture_output=True, text=True, timeout=60)


class CertTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.paths = init_certificates(self.dir, ["mail.example.edu"])

    def sibling(self, name: str, *hostnames: str, **kw: Any) -> CertPaths:
        """Another CA and server certificate, in a directory beside C{self.dir}."""
        hosts = list(hostnames) or ["mail.example.edu"]
        return init_certificates(self.dir.parent / name, hosts, **kw)

    def assertVerifies(self, ca: Path, cert: Path, purpose: str) -> None:
        result = openssl_verify(ca, cert, purpose)
        self.assertEqual((result.returncode, result.stdout), (0, f"{cert}: OK\n"), result.stderr)

    def assertRefused(self, ca: Path, cert: Path, purpose: str) -> None:
        result = openssl_verify(ca, cert, purpose)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertNotIn(f"{cert}: OK", result.stdout)


class FileTests(CertTestCase):
    def test_paths(self) -> None:
        p, d = self.paths, self.dir
        self.assertEqual(
            (p.certificate, p.key, p.ca_certificate, p.ca_key, p.chain, p.pkcs12, p.ca_reused),
            (d / "server.pem", d / "server.key", d / "ca.pem", d / "ca.key",
             d / "server-chain.pem", None, False),
        )  # fmt: skip
        # Exactly these files: no temporary file left behind.
        self.assertEqual(sorted(os.listdir(self.dir)), SERVER_FILES)

    def test_private_keys_0600(self) -> None:
        self.assertEqual(mode(self.dir / "ca.key"), 0o600)
        self.assertEqual(mode(self.dir / "server.key"), 0o600)

    def test_certificates_readable(self) -> None:
        for name in ("ca.pem", "server.pem", "server-chain.pem"):
            self.assertEqual(mode(self.dir / name), 0o644 & ~current_umask(), name)
            self.assertTrue(os.access(self.dir / name, os.R_OK))

    def test_keys_are_unencrypted_pkcs8(self) -> None:
        for name in ("ca.key", "server.key"):
            data = (self.dir / name).read_bytes()
            self.assertTrue(data.startswith(b"-----BEGIN PRIVATE KEY-----\n"), name)
            serialization.load_pem_private_key(data, password=None)

    def test_chain_is_server_then_ca(self) -> None:
        assert self.paths.chain is not None
        chain = x509.load_pem_x509_certificates(self.paths.chain.read_bytes())
        self.assertEqual(chain, [load(self.paths.certificate), load(self.paths.ca_certificate)])


class ExtensionTests(CertTestCase):
    def test_ca(self) -> None:
        ca = load(self.paths.ca_certificate)
        constraints, critical = extension(ca, x509.BasicConstraints)
        self.assertEqual((critical, constraints.ca, constraints.path_length), (True, True, 0))
        usage, critical = extension(ca, x509.KeyUsage)
        self.assertEqual(
            (critical, usage.key_cert_sign, usage.crl_sign, usage.digital_signature),
            (True, True, True, False),
        )
        ski = value(ca, x509.SubjectKeyIdentifier)
        public: Any = ca.public_key()
        self.assertEqual(ski, x509.SubjectKeyIdentifier.from_public_key(public))
        self.assertEqual(ca.issuer, ca.subject)
        ca.verify_directly_issued_by(ca)

    def test_server(self) -> None:
        ca, cert = load(self.paths.ca_certificate), load(self.paths.certificate)
        self.assertEqual(common_name(cert), "mail.example.edu")
        self.assertEqual(dns_names(cert), ["mail.example.edu", "localhost"])
        self.assertEqual(ip_names(cert), ["127.0.0.1", "::1"])
        eku = list(value(cert, x509.ExtendedKeyUsage))
        self.assertEqual(eku, [ExtendedKeyUsageOID.SERVER_AUTH])
        usage, critical = extension(cert, x509.KeyUsage)
        self.assertEqual(
            (critical, usage.digital_signature, usage.key_encipherment, usage.key_cert_sign),
            (True, True, False, False),
        )
        constraints, critical = extension(cert, x509.BasicConstraints)
        self.assertEqual((critical, constraints.ca), (True, False))
        aki = value(cert, x509.AuthorityKeyIdentifier)
        self.assertEqual(aki.key_identifier, value(ca, x509.SubjectKeyIdentifier).digest)
        self.assertEqual(cert.issuer, ca.subject)
        cert.verify_directly_issued_by(ca)

    def test_random_serials(self) -> None:
        other = self.sibling("other")
        files = [self.paths.certificate, self.paths.ca_certificate]
        serials = {load(p).serial_number for p in files + [other.certificate, other.ca_certificate]}
        self.assertEqual(len(serials), 4)
        self.assertTrue(all(s.bit_length() > 64 for s in serials), serials)

    def test_lifetimes(self) -> None:
        paths = self.sibling("short", days=30, ca_days=400)
        cert, ca = load(paths.certificate), load(paths.ca_certificate)
        now = datetime.datetime.now(datetime.UTC)
        # Backdated a little for peers whose clocks run slow.
        self.assertLess(cert.not_valid_before_utc, now - datetime.timedelta(minutes=4))
        minute, day = datetime.timedelta(minutes=1), datetime.timedelta(days=1)
        self.assertLess(abs(cert.not_valid_after_utc - now - 30 * day), minute)
        self.assertLess(abs(ca.not_valid_after_utc - now - 400 * day), minute)

    def test_server_lifetime_capped_at_ca(self) -> None:
        paths = self.sibling("capped", days=825, ca_days=10)
        ca_end = load(paths.ca_certificate).not_valid_after_utc
        self.assertEqual(load(paths.certificate).not_valid_after_utc, ca_end)

    def test_ip_hostname_is_ip_san(self) -> None:
        paths = self.sibling("ip", "192.0.2.7", "2001:db8::1", "localhost", "127.0.0.1")
        cert = load(paths.certificate)
        self.assertEqual(dns_names(cert), ["localhost"])
        self.assertEqual(ip_names(cert), ["192.0.2.7", "2001:db8::1", "127.0.0.1", "::1"])
        self.assertEqual(common_name(cert), "192.0.2.7")

    def test_idn_and_wildcard(self) -> None:
        paths = self.sibling("idn", "Bücher.Example", "*.wild.example")
        expected = ["xn--bcher-kva.example", "*.wild.example", "localhost"]
        self.assertEqual(dns_names(load(paths.certificate)), expected)


class KeyTypeTests(SynchronousTestCase):
    def test_ec_is_default(self) -> None:
        paths = init_certificates(Path(self.mktemp()), ["mail.example.edu"])
        for path in (paths.key, paths.ca_key):
            key = private_key(path)
            self.assertIsInstance(key, ec.EllipticCurvePrivateKey)
            self.assertIsInstance(key.curve, ec.SECP256R1)
        self.assertEqual(load(paths.certificate).public_key(), private_key(paths.key).public_key())

    def test_rsa(self) -> None:
        paths = init_certificates(Path(self.mktemp()), ["mail.example.edu"], key_type="rsa")
        for path in (paths.key, paths.ca_key):
            key = private_key(path)
            self.assertIsInstance(key, rsa.RSAPrivateKey)
            self.assertEqual(key.key_size, 2048)
        cert = load(paths.certificate)
        self.assertEqual(cert.public_key(), private_key(paths.key).public_key())
        self.assertTrue(value(cert, x509.KeyUsage).key_encipherment)

    def test_unknown_key_type(self) -> None:
        out = Path(self.mktemp())
        with self.assertRaises(CertificateError) as cm:
            init_certificates(out, ["mail.example.edu"], key_type="dsa")
        self.assertIn("'dsa'", str(cm.exception))
        self.assertFalse(out.exists())

    def test_bad_lifetimes(self) -> None:
        lifetimes: list[Any] = [(0, 10), (10, -1), (True, 10), (1.5, 10)]
        for days, ca_days in lifetimes:
            out = Path(self.mktemp())
            with self.assertRaises(CertificateError):
                init_certificates(out, ["a.example"], days=days, ca_days=ca_days)
            self.assertFalse(out.exists())


class OpenSSLVerifyTests(CertTestCase):
    def test_server_chain(self) -> None:
        self.assertVerifies(self.paths.ca_certificate, self.paths.certificate, "sslserver")
        rsa_paths = self.sibling("rsa", key_type="rsa")
        self.assertVerifies(rsa_paths.ca_certificate, rsa_paths.certificate, "sslserver")

    def test_server_certificate_is_not_for_clients(self) -> None:
        self.assertRefused(self.paths.ca_certificate, self.paths.certificate, "sslclient")

    def test_client_certificate(self) -> None:
        alice = issue_client_certificate(self.dir, "alice@example.edu")
        self.assertVerifies(self.paths.ca_certificate, alice.certificate, "sslclient")
        self.assertRefused(self.paths.ca_certificate, alice.certificate, "sslserver")

    def test_other_ca_refused(self) -> None:
        other = self.sibling("other")
        self.assertRefused(other.ca_certificate, self.paths.certificate, "sslserver")


class HandshakeTests(CertTestCase):
    def assertHandshake(self, hostname: str, paths: CertPaths | None = None) -> None:
        paths = paths or self.paths
        client_ctx = client_context(paths.ca_certificate)
        client, _ = handshake(server_context(paths), client_ctx, hostname)
        self.assertIn(client.version(), ("TLSv1.2", "TLSv1.3"))
        der = load(paths.certificate).public_bytes(serialization.Encoding.DER)
        self.assertEqual(client.getpeercert(binary_form=True), der)

    def assertVerifyError(self, hostname: str, code: int, ca: Path | None = None) -> None:
        client_ctx = client_context(ca or self.paths.ca_certificate)
        with self.assertRaises(ssl.SSLCertVerificationError) as cm:
            handshake(server_context(self.paths), client_ctx, hostname)
        self.assertEqual(cm.exception.verify_code, code, cm.exception.verify_message)

    def test_hostname(self) -> None:
        self.assertHandshake("mail.example.edu")

    def test_localhost(self) -> None:
        self.assertHandshake("localhost")

    def test_ip_addresses(self) -> None:
        self.assertHandshake("127.0.0.1")
        self.assertHandshake("::1")

    def test_rsa(self) -> None:
        self.assertHandshake("mail.example.edu", self.sibling("rsa", key_type="rsa"))

    def test_other_hostname_fails(self) -> None:
        self.assertVerifyError("other.example.org", HOSTNAME_MISMATCH)

    def test_other_ip_fails(self) -> None:
        self.assertVerifyError("127.0.0.2", IP_ADDRESS_MISMATCH)

    def test_untrusted_ca_fails(self) -> None:
        other = self.sibling("other").ca_certificate
        self.assertVerifyError("mail.example.edu", UNABLE_TO_GET_ISSUER_CERT_LOCALLY, other)

    def test_client_certificate_accepted(self) -> None:
        alice = issue_client_certificate(self.dir, "alice@example.edu")
        client_ctx = client_context(self.paths.ca_certificate, alice.certificate, alice.key)
        server_ctx = server_context(self.paths, client_ca=self.paths.ca_certificate)
        _, server = handshake(server_ctx, client_ctx, "mail.example.edu")
        peer: Any = server.getpeercert()
        self.assertIn((("commonName", "alice@example.edu"),), peer["subject"])

    def test_server_certificate_refused_as_client(self) -> None:
        p = self.paths
        client_ctx = client_context(p.ca_certificate, p.certificate, p.key)
        server_ctx = server_context(p, client_ca=p.ca_certificate)
        with self.assertRaises(ssl.SSLCertVerificationError) as cm:
            handshake(server_ctx, client_ctx, "mail.example.edu")
        self.assertEqual(cm.exception.verify_code, INVALID_PURPOSE, cm.exception.verify_message)


class ExistingFilesTests(CertTestCase):
    def snapshot(self) -> dict[str, bytes]:
        return {name: (self.dir / name).read_bytes() for name in sorted(os.listdir(self.dir))}

    def test_second_init_refused(self) -> None:
        before = self.snapshot()
        with self.assertRaises(CertificateError) as cm:
            init_certificates(self.dir, ["mail.example.edu"])
        self.assertIn(f"{self.dir / 'server.key'} already exists", str(cm.exception))
        self.assertEqual(self.snapshot(), before)

    def test_any_server_file_blocks(self) -> None:
        for name in SERVER_ONLY:
            before = self.snapshot()
            for other in set(SERVER_ONLY) - {name}:
                (self.dir / other).unlink(missing_ok=True)
            with self.assertRaises(CertificateError) as cm:
                init_certificates(self.dir, ["mail.example.edu"])
            self.assertIn(str(self.dir / name), str(cm.exception))
            self.assertEqual((self.dir / name).read_bytes(), before[name])
            init_certificates(self.dir, ["mail.example.edu"], overwrite=True)

    def test_overwrite_keeps_ca(self) -> None:
        before = self.snapshot()
        paths = init_certificates(self.dir, ["imap.example.edu"], overwrite=True)
        after = self.snapshot()
        self.assertTrue(paths.ca_reused)
        self.assertEqual((after["ca.pem"], after["ca.key"]), (before["ca.pem"], before["ca.key"]))
        self.assertNotEqual(after["server.pem"], before["server.pem"])
        self.assertNotEqual(after["server.key"], before["server.key"])
        load(paths.certificate).verify_directly_issued_by(load(paths.ca_certificate))
        self.assertEqual(sorted(after), SERVER_FILES)

    def test_existing_ca_issues_new_server_certificate(self) -> None:
        before = self.snapshot()
        for name in SERVER_ONLY:
            (self.dir / name).unlink()
        paths = init_certificates(self.dir, ["imap.example.edu"], key_type="rsa")
        self.assertTrue(paths.ca_reused)
        after = self.snapshot()
        self.assertEqual((after["ca.pem"], after["ca.key"]), (before["ca.pem"], before["ca.key"]))
        self.assertEqual(dns_names(load(paths.certificate)), ["imap.example.edu", "localhost"])
        self.assertVerifies(paths.ca_certificate, paths.certificate, "sslserver")

    def test_partial_ca_refused(self) -> None:
        for keep in ("ca.pem", "ca.key"):
            out = self.dir.parent / f"partial-{keep}"
            out.mkdir()
            shutil.copy(self.dir / keep, out / keep)
            for overwrite in (False, True):
                with self.assertRaises(CertificateError) as cm:
                    init_certificates(out, ["mail.example.edu"], overwrite=overwrite)
                self.assertIn(str(out / keep), str(cm.exception))
                self.assertEqual(os.listdir(out), [keep])
                self.assertEqual((out / keep).read_bytes(), (self.dir / keep).read_bytes())

    def test_mismatched_ca_key_refused(self) -> None:
        other = self.sibling("other", "x.example")
        out = self.dir.parent / "mixed"
        out.mkdir()
        shutil.copy(self.paths.ca_certificate, out / "ca.pem")
        shutil.copy(other.ca_key, out / "ca.key")  # type: ignore[arg-type]
        with self.assertRaises(CertificateError) as cm:
            init_certificates(out, ["mail.example.edu"])
        self.assertIn("does not match", str(cm.exception))
        self.assertEqual(sorted(os.listdir(out)), ["ca.key", "ca.pem"])

    def test_non_ca_refused(self) -> None:
        out = self.dir.parent / "fake"
        out.mkdir()
        shutil.copy(self.paths.certificate, out / "ca.pem")
        shutil.copy(self.paths.key, out / "ca.key")
        with self.assertRaises(CertificateError) as cm:
            issue_client_certificate(out, "alice@example.edu")
        self.assertIn("not a CA", str(cm.exception))
        self.assertFalse((out / "clients").exists())

    def test_missing_ca_for_client(self) -> None:
        with self.assertRaises(CertificateError) as cm:
            issue_client_certificate(self.dir.parent / "nowhere", "alice@example.edu")
        self.assertIn("ca.pem", str(cm.exception))


class AtomicWriteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.target = self.dir / "file.key"

    def test_key_born_private(self) -> None:
        """
        The data is fsynced before the rename, and by then the file is already
        0600: no chmod after the fact.  The directory is fsynced last.
        """
        seen: list[tuple[bool, int]] = []

        def fsync(fd: int) -> None:
            st = os.fstat(fd)
            seen.append((stat.S_ISREG(st.st_mode), stat.S_IMODE(st.st_mode)))
            os.fsync(fd)

        _write_files((self.target, b"secret", True, True), fsync=fsync)
        self.assertEqual(seen, [(True, 0o600), (False, mode(self.dir))])
        self.assertEqual(self.target.read_bytes(), b"secret")

    def test_failure_keeps_old_file(self) -> None:
        self.target.write_bytes(b"old")

        def fsync(fd: int) -> None:
            raise OSError(5, "I/O error")

        self.assertRaises(OSError, _write_files, (self.target, b"new", True, True), fsync=fsync)
        self.assertEqual(self.target.read_bytes(), b"old")
        self.assertEqual(os.listdir(self.dir), ["file.key"])

    def test_no_clobber(self) -> None:
        self.target.write_bytes(b"old")
        other = self.dir / "other.pem"
        with self.assertRaises(CertificateError) as cm:
            _write_files((other, b"new", False, False), (self.target, b"new", True, False))
        self.assertIn(str(self.target), str(cm.exception))
        self.assertEqual(self.target.read_bytes(), b"old")
        # Checked before anything is written.
        self.assertEqual(os.listdir(self.dir), ["file.key"])

    def test_no_clobber_of_file_made_meanwhile(self) -> None:
        """
        A racing writer (another C{init}) creates the file after the check:
        the final link fails and its file survives.
        """

        def fsync(fd: int) -> None:
            if not self.target.exists():
                self.target.write_bytes(b"racer")

        with self.assertRaises(CertificateError) as cm:
            _write_files((self.target, b"mine", True, False), fsync=fsync)
        self.assertIn(str(self.target), str(cm.exception))
        self.assertEqual(self.target.read_bytes(), b"racer")
        self.assertEqual(os.listdir(self.dir), ["file.key"])


# RFC 1035 section 2.3.4: 63 octets a label, 253 a name (written without the root dot).
MAX_HOSTNAME = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
PLAIN_HOSTNAME = r"(\*\.)?[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6}){1,3}"


class HostnameTests(SynchronousTestCase):
    BAD = [
        "", " ", "mail example.edu", " mail.example.edu", "mail.example.edu.", "a..example",
        "-bad.example", "bad-.example", "under_score.example", "x" * 64 + ".example",
        "10.1", "1.2.3.4.5", "*.example", "a.*.example", "*", "mail/evil.example",
        "fe80::1%eth0", "nul\x00.example", ("a" * 60 + ".") * 5 + "com", "mail.example.edu\n",
        "*." + MAX_HOSTNAME, 5, None, b"mail.example.edu",
    ]  # fmt: skip

    def test_longest_hostname(self) -> None:
        paths = init_certificates(Path(self.mktemp()), ["mail.example.edu", MAX_HOSTNAME])
        self.assertEqual(len(MAX_HOSTNAME), 253)
        self.assertIn(MAX_HOSTNAME, dns_names(load(paths.certificate)))

    def test_invalid_refused(self) -> None:
        for bad in self.BAD:
            out = Path(self.mktemp())
            with self.assertRaises(CertificateError, msg=repr(bad)) as cm:
                init_certificates(out, ["ok.example", bad])  # type: ignore[list-item]
            self.assertIn(repr(bad), str(cm.exception))
            self.assertFalse(out.exists())

    def test_every_invalid_named_at_once(self) -> None:
        with self.assertRaises(CertificateError) as cm:
            init_certificates(Path(self.mktemp()), ["bad host", "ok.example", "-x.example"])
        self.assertIn("'bad host'", str(cm.exception))
        self.assertIn("'-x.example'", str(cm.exception))

    def test_no_hostnames(self) -> None:
        out = Path(self.mktemp())
        self.assertRaises(CertificateError, init_certificates, out, [])
        self.assertRaises(CertificateError, init_certificates, out, "mail.example.edu")
        self.assertFalse(out.exists())

    def test_first_hostname_too_long_for_cn(self) -> None:
        long_name = "a" * 60 + ".example"
        self.assertRaises(CertificateError, init_certificates, Path(self.mktemp()), [long_name])
        paths = init_certificates(Path(self.mktemp()), ["short.example", long_name])
        self.assertIn(long_name, dns_names(load(paths.certificate)))

    @given(st.text())
    def test_any_text_parsed_or_refused(self, text: str) -> None:
        try:
            name = _parse_hostname(text)
        except CertificateError:
            return
        self.assertIsInstance(name, (x509.DNSName, x509.IPAddress))
        result = str(name.value)
        self.assertTrue(result.isascii() and 0 < len(result) <= 253, result)
        self.assertFalse(any(c.isspace() or c in "/\\\x00" for c in result), result)

    @given(st.from_regex(PLAIN_HOSTNAME, fullmatch=True))
    def test_plain_names_kept(self, text: str) -> None:
        self.assertEqual(_parse_hostname(text), x509.DNSName(text))


class ClientTests(CertTestCase):
    def test_files(self) -> None:
        alice = issue_client_certificate(self.dir, "alice@example.edu")
        stem = self.dir / "clients" / "alice_at_example.edu"
        self.assertEqual(
            (alice.certificate, alice.key, alice.pkcs12, alice.ca_certificate),
            (stem.with_suffix(".edu.pem"), stem.with_suffix(".edu.key"),
             stem.with_suffix(".edu.p12"), self.paths.ca_certificate),
        )  # fmt: skip
        names = sorted(os.listdir(stem.parent))
        self.assertEqual(names, ["alice_at_example.edu." + e for e in ("key", "p12", "pem")])
        self.assertEqual(mode(alice.key), 0o600)
        self.assertEqual(mode(alice.pkcs12), 0o600)
        self.assertTrue(alice.ca_reused)

    def test_extensions(self) -> None:
        cert = load(issue_client_certificate(self.dir, "alice@example.edu").certificate)
        self.assertEqual(common_name(cert), "alice@example.edu")
        san = value(cert, x509.SubjectAlternativeName)
        self.assertEqual(list(san), [x509.RFC822Name("alice@example.edu")])
        eku = list(value(cert, x509.ExtendedKeyUsage))
        self.assertEqual(eku, [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertFalse(value(cert, x509.BasicConstraints).ca)
        cert.verify_directly_issued_by(load(self.paths.ca_certificate))

    def test_plain_user_has_no_san(self) -> None:
        cert = load(issue_client_certificate(self.dir, "alice", key_type="rsa").certificate)
        self.assertRaises(x509.ExtensionNotFound, value, cert, x509.SubjectAlternativeName)
        self.assertEqual(common_name(cert), "alice")
        self.assertEqual(cert.public_key().key_size, 2048)  # type: ignore[union-attr]

    def test_pkcs12_bundle(self) -> None:
        alice = issue_client_certificate(self.dir, "alice@example.edu", out_dir=self.dir / "out")
        self.assertEqual(alice.pkcs12, self.dir / "out" / "alice_at_example.edu.p12")
        assert alice.pkcs12 is not None
        key, cert, extra = pkcs12.load_key_and_certificates(alice.pkcs12.read_bytes(), None)
        self.assertEqual(cert, load(alice.certificate))
        self.assertEqual(extra, [load(self.paths.ca_certificate)])
        self.assertEqual(key.public_key(), cert.public_key())  # type: ignore[union-attr]
        bundle: Any = pkcs12.load_pkcs12(alice.pkcs12.read_bytes(), None)
        self.assertEqual(bundle.cert.friendly_name, b"alice@example.edu")

    def test_unsafe_names_refused(self) -> None:
        bad = [
            "../x", "a/b", "a\\b", "", ".hidden", "..", "a..b", "a@b@c.example", "al ice",
            "alice\n", "x" * 65, "alice_at_example.edu", "@example.edu", "alice@",
            "alice@-bad.example", "alice@127.0.0.1", "ålice@example.edu", "-rf",
        ]  # fmt: skip
        for user in bad:
            with self.assertRaises(CertificateError, msg=repr(user)) as cm:
                issue_client_certificate(self.dir, user)
            self.assertIn(repr(user), str(cm.exception))
        self.assertFalse((self.dir / "clients").exists())
        self.assertEqual(sorted(os.listdir(self.dir.parent)), [self.dir.name])

    def test_existing_client_refused_unless_overwrite(self) -> None:
        first = issue_client_certificate(self.dir, "alice@example.edu")
        old = first.key.read_bytes()
        with self.assertRaises(CertificateError) as cm:
            issue_client_certificate(self.dir, "alice@example.edu")
        self.assertIn(str(first.key), str(cm.exception))
        self.assertEqual(first.key.read_bytes(), old)
        second = issue_client_certificate(self.dir, "alice@example.edu", overwrite=True)
        self.assertNotEqual(second.key.read_bytes(), old)

    @given(st.text(max_size=80))
    def test_stem_is_a_plain_file_name(self, user: str) -> None:
        try:
            stem, _ = _client_names(user)
        except CertificateError:
            return
        self.assertEqual(Path(stem).name, stem)
        self.assertFalse(stem.startswith((".", "-")) or "/" in stem or ".." in stem, stem)
        self.assertEqual(stem.replace("_at_", "@"), user)


class DescribeTests(CertTestCase):
    def test_server(self) -> None:
        text = describe_certificate(self.paths.certificate)
        expires = load(self.paths.certificate).not_valid_after_utc.strftime("%Y-%m-%d")
        self.assertEqual(
            text,
            "CN=mail.example.edu SAN=[DNS:mail.example.edu, DNS:localhost, IP:127.0.0.1, IP:::1]"
            f" issuer=CN=mailgateway CA mail.example.edu expires={expires} key=ECDSA secp256r1",
        )
        assert self.paths.chain is not None
        self.assertEqual(describe_certificate(self.paths.chain), text)

    def test_ca_and_client(self) -> None:
        ca = describe_certificate(str(self.paths.ca_certificate))
        self.assertTrue(ca.startswith("CN=mailgateway CA mail.example.edu SAN=[] "), ca)
        alice = issue_client_certificate(self.dir, "alice@example.edu", key_type="rsa")
        text = describe_certificate(alice.certificate)
        self.assertIn("SAN=[email:alice@example.edu]", text)
        self.assertTrue(text.endswith(" key=RSA 2048"), text)

    def test_not_a_certificate(self) -> None:
        for path in (self.paths.key, self.dir / "missing.pem"):
            with self.assertRaises(CertificateError) as cm:
                describe_certificate(path)
            self.assertIn(str(path), str(cm.exception))
