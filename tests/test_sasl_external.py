"""
Tests for L{gateway.auth.sasl.external}: EXTERNAL (RFC 4422 appendix A) over
a TLS client certificate.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.sasl.base import Challenge, Failed, MechanismDone, Proven, SASLContext, Step
from gateway.auth.sasl.external import MAX_AUTHZID, External
from gateway.auth.sasl.registry import available
from gateway.testing import MemoryAuthBackend
from tests.sasl_support import MechanismTestCase


def make_certificate(common_name: str) -> x509.Certificate:
    """A throw-away self-signed certificate (no CA) naming C{common_name}."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


ALICE_CERT = make_certificate("alice@example.org")
STRANGER_CERT = make_certificate("stranger@example.org")


def make_backend() -> MemoryAuthBackend:
    backend = MemoryAuthBackend(certificate_map={"alice@example.org": "alice"})
    backend.add_account("alice", b"unused password", may_act_for=("shared",), iterations=16)
    backend.add_account("bob", b"unused password", iterations=16)
    return backend


def context(certificate: object | None = ALICE_CERT) -> SASLContext:
    return SASLContext(
        service="smtp",
        hostname="mail.example.org",
        backend=make_backend(),
        encrypted=True,
        peer_certificate=certificate,
    )


class ExternalTests(MechanismTestCase):
    mechanism_name = "EXTERNAL"

    def external(
        self, *messages: bytes | None, certificate: object | None = ALICE_CERT
    ) -> list[Step]:
        return self.exchange(External(context(certificate)), *messages)

    def test_properties(self) -> None:
        self.assertEqual(
            (External.name, External.plaintext, External.legacy), ("EXTERNAL", False, False)
        )

    def test_available_only_with_certificate(self) -> None:
        self.assertTrue(External.available(context()))
        self.assertFalse(External.available(context(None)))
        self.assertTrue(available(External, context()))
        self.assertFalse(available(External, context(None)))

    def test_without_certificate_fails(self) -> None:
        """Started anyway without a certificate: a failure, never a login."""
        for initial in [None, b"", b"alice"]:
            with self.subTest(initial=initial):
                self.assertFailed(self.external(initial, certificate=None)[0])

    def test_empty_authzid(self) -> None:
        self.assertEqual(self.external(b""), [Proven(authcid="alice", mechanism="EXTERNAL")])

    def test_no_initial_response(self) -> None:
        self.assertEqual(
            self.external(None, b""),
            [Challenge(b""), Proven(authcid="alice", mechanism="EXTERNAL")],
        )

    def test_authzid_self(self) -> None:
        self.assertEqual(self.external(b"alice"), [Proven(authcid="alice", mechanism="EXTERNAL")])

    def test_authzid_allowed(self) -> None:
        self.assertEqual(
            self.external(b"shared"),
            [Proven(authcid="alice", mechanism="EXTERNAL", authzid="shared")],
        )

    def test_authzid_refused(self) -> None:
        failed = self.assertFailed(self.external(b"bob")[0])
        self.assertEqual(failed.authcid, "alice")
        self.assertIn("may not act as", failed.reason)

    def test_unmapped_certificate(self) -> None:
        for authzid in [b"", b"alice"]:
            with self.subTest(authzid=authzid):
                failed = self.assertFailed(self.external(authzid, certificate=STRANGER_CERT)[0])
                self.assertIn("no account", failed.reason)

    def test_not_a_certificate(self) -> None:
        self.assertFailed(self.external(b"", certificate=object())[0])

    def test_malformed_authzid(self) -> None:
        for authzid in [b"\xff", b"al\0ice", b"\x07", b"a" * (MAX_AUTHZID + 1)]:
            with self.subTest(authzid=authzid):
                self.assertFailed(self.external(authzid)[0], malformed=True)

    def test_step_after_end(self) -> None:
        mech = External(context())
        self.assertIsInstance(self.successResultOf(mech.start(b"")), Proven)
        self.assertRaises(MechanismDone, mech.step, b"")

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=100))
    def test_random_authzid(self, authzid: bytes) -> None:
        """Random bytes never raise; they prove only a name alice may act as."""
        step = self.external(authzid)[0]
        if isinstance(step, Proven):
            # The directory compares names case-insensitively.
            self.assertEqual(step.authcid, "alice")
            self.assertIn((step.authzid or "alice").casefold(), ("alice", "shared"))
        else:
            self.assertIsInstance(step, Failed)
