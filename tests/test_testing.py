"""
Tests for L{gateway.testing}: the in-memory fakes are real implementations,
so they are tested like any other.
"""

from __future__ import annotations

import datetime
import pickle

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.auth import otp as rfc2289
from gateway.auth.verifiers import OTPState, derive_scram_keys
from gateway.interfaces import IAuthBackend
from gateway.testing import MemoryAuthBackend

SALTS = {"SHA-1": b"salt-one", "SHA-256": b"salt-two"}


def certificate(common_name: str, emails: tuple[str, ...] = ()) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if emails:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(e) for e in emails]), critical=False
        )
    return builder.sign(key, hashes.SHA256())


class MemoryAuthBackendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend = MemoryAuthBackend()
        self.backend.add_account(
            "alice",
            "s3cret-pass",
            aliases=("alice@example.org",),
            scram_salts=SALTS,
            iterations=64,
            may_act_for=("Shared",),
        )
        self.backend.add_account(
            "bob", b"bob-pass", legacy=("CRAM-MD5", "APOP"), iterations=64
        )

    def result(self, d: object) -> object:
        return self.successResultOf(d)  # type: ignore[arg-type]

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IAuthBackend, self.backend))

    def test_check_password(self) -> None:
        check = self.backend.check_password
        self.assertEqual(self.result(check("alice", b"s3cret-pass")), "alice")
        self.assertEqual(self.result(check("ALICE", b"s3cret-pass")), "alice")
        self.assertEqual(self.result(check("Alice@Example.org", b"s3cret-pass")), "alice")
        self.assertIsNone(self.result(check("alice", b"s3cret-Pass")))
        self.assertIsNone(self.result(check("nobody", b"s3cret-pass")))
        self.assertEqual(self.result(check("bob", b"bob-pass")), "bob")

    def test_scram_credentials(self) -> None:
        for algorithm, salt in SALTS.items():
            keys = self.result(self.backend.scram_credentials("ALICE", algorithm))
            self.assertEqual(keys, derive_scram_keys("alice", "s3cret-pass", algorithm, 64, salt))
        self.assertIsNone(self.result(self.backend.scram_credentials("alice", "SHA-512")))
        self.assertIsNone(self.result(self.backend.scram_credentials("nobody", "SHA-256")))

    def test_random_salts(self) -> None:
        bob = self.result(self.backend.scram_credentials("bob", "SHA-256"))
        self.backend.add_account("carol", b"bob-pass", iterations=64)
        carol = self.result(self.backend.scram_credentials("carol", "SHA-256"))
        self.assertNotEqual(bob.salt, carol.salt)  # type: ignore[attr-defined]
        self.assertEqual(len(bob.salt), 16)  # type: ignore[attr-defined]

    def test_legacy_secret(self) -> None:
        secret = self.backend.legacy_secret
        self.assertEqual(self.result(secret("BOB", "CRAM-MD5")), ("bob", b"bob-pass"))
        self.assertEqual(self.result(secret("bob", "APOP")), ("bob", b"bob-pass"))
        self.assertIsNone(self.result(secret("bob", "DIGEST-MD5")))
        for mechanism in ("CRAM-MD5", "DIGEST-MD5", "APOP"):
            self.assertIsNone(self.result(secret("alice", mechanism)))
        self.assertIsNone(self.result(secret("nobody", "CRAM-MD5")))

    def test_no_password_kept(self) -> None:
        """Without a legacy mechanism only SCRAM keys are kept."""
        kept = pickle.dumps(self.backend)
        self.assertNotIn(b"s3cret-pass", kept)
        self.assertIn(b"bob-pass", kept)  # bob has CRAM-MD5

    def test_add_account_refusals(self) -> None:
        add = self.backend.add_account
        self.assertRaises(ValueError, add, "x", "pw", legacy=("PLAIN",))
        self.assertRaises(ValueError, add, "x", "pw", scram_salts={"SHA-512": b"s"})
        self.assertRaises(ValueError, add, "Alice", "pw")
        self.assertRaises(ValueError, add, "x", "pw", aliases=("BOB",))
        self.assertIsNone(self.result(self.backend.check_password("x", b"pw")))

    def test_disabled(self) -> None:
        """A disabled account answers like an unknown one, everywhere."""
        self.backend.set_enabled("bob", False)
        self.backend.set_otp("bob", algorithm="md5", seed="ke1234", sequence=5, key=b"k" * 8)
        self.backend.map_certificate("bob@example.org", "bob")
        self.assertIsNone(self.result(self.backend.check_password("bob", b"bob-pass")))
        self.assertIsNone(self.result(self.backend.scram_credentials("bob", "SHA-256")))
        self.assertIsNone(self.result(self.backend.legacy_secret("bob", "CRAM-MD5")))
        self.assertIsNone(self.result(self.backend.otp_state("bob")))
        self.assertFalse(self.result(self.backend.otp_advance("bob", 4, b"n" * 8)))
        self.assertFalse(self.result(self.backend.may_act_as("bob", "bob")))
        cert = certificate("Bob", ["bob@example.org"])
        self.assertIsNone(self.result(self.backend.account_for_certificate(cert)))
        self.backend.set_enabled("bob", True)
        self.assertEqual(self.result(self.backend.check_password("bob", b"bob-pass")), "bob")

    def test_otp(self) -> None:
        self.assertIsNone(self.result(self.backend.otp_state("alice")))
        # The stored OTP is the one b"n" * 8 hashes to: the next OTP of its chain.
        stored = rfc2289.step("md5", b"n" * 8)
        self.backend.set_otp("alice", algorithm="md5", seed="ke1234", sequence=99, key=stored)
        self.assertEqual(
            self.result(self.backend.otp_state("ALICE")),
            OTPState("alice", "md5", "ke1234", 99, stored),
        )
        advance = self.backend.otp_advance
        self.assertFalse(self.result(advance("alice", 99, b"n" * 8)))
        self.assertFalse(self.result(advance("alice", 97, b"n" * 8)))
        self.assertFalse(self.result(advance("alice", 98, b"x" * 8)))  # another chain
        self.assertTrue(self.result(advance("alice", 98, b"n" * 8)))
        self.assertEqual(
            self.result(self.backend.otp_state("alice")),
            OTPState("alice", "md5", "ke1234", 98, b"n" * 8),
        )
        # The same one-time password cannot be used twice.
        self.assertFalse(self.result(advance("alice", 98, b"n" * 8)))
        self.assertFalse(self.result(advance("bob", 0, b"n" * 8)))
        self.assertFalse(self.result(advance("nobody", 0, b"n" * 8)))

    def test_account_for_certificate(self) -> None:
        backend = MemoryAuthBackend(certificate_map={"Alice@Example.org": "alice"})
        backend.add_account("alice", "pw", iterations=64)
        backend.add_account("bob", "pw", iterations=64)
        backend.map_certificate("Bob Builder", "bob")
        by_san = certificate("Someone", ["other@example.org", "alice@example.org"])
        by_cn = certificate("bob builder")
        self.assertEqual(self.result(backend.account_for_certificate(by_san)), "alice")
        self.assertEqual(self.result(backend.account_for_certificate(by_cn)), "bob")
        # The subjectAltName wins over the common name.
        both = certificate("Bob Builder", ["alice@example.org"])
        self.assertEqual(self.result(backend.account_for_certificate(both)), "alice")
        pyopenssl = crypto.X509.from_cryptography(by_cn)
        self.assertEqual(self.result(backend.account_for_certificate(pyopenssl)), "bob")
        unmapped_ones = [certificate("alice"), certificate("x", ["bob@example.org"]), None, "x"]
        for unmapped in unmapped_ones:
            self.assertIsNone(self.result(backend.account_for_certificate(unmapped)))

    def test_certificate_for_unknown_account(self) -> None:
        backend = MemoryAuthBackend(certificate_map={"ghost": "ghost"})
        self.assertIsNone(self.result(backend.account_for_certificate(certificate("ghost"))))

    def test_may_act_as(self) -> None:
        may = self.backend.may_act_as
        self.assertTrue(self.result(may("alice", "alice")))
        self.assertTrue(self.result(may("alice", "ALICE@example.org")))
        self.assertTrue(self.result(may("alice", "shared")))
        self.assertFalse(self.result(may("alice", "bob")))
        self.assertFalse(self.result(may("bob", "shared")))
        self.assertFalse(self.result(may("nobody", "nobody")))
