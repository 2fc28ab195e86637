"""
Tests for L{gateway.auth.sasl.registry}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.sasl import registry
from gateway.auth.sasl.base import Failed, Mechanism, Proven, SASLContext, Step
from gateway.auth.sasl.crammd5 import CramMD5
from gateway.auth.sasl.digestmd5 import DigestMD5
from gateway.auth.sasl.plain import Login, Plain
from gateway.auth.sasl.scram import ScramSha1, ScramSha1Plus, ScramSha256, ScramSha256Plus
from gateway.testing import MemoryAuthBackend

ALL = [
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "DIGEST-MD5",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256-PLUS",
]
BACKEND = MemoryAuthBackend()
BACKEND.add_account("alice", "pw", may_act_for=("shared",), iterations=16)


def context(
    *, encrypted: bool = False, binding: bool = False, certificate: object = None
) -> SASLContext:
    return SASLContext(
        service="smtp",
        hostname="mail.example.org",
        backend=BACKEND,
        encrypted=encrypted,
        peer_certificate=certificate,
        channel_binding={"tls-exporter": b"x" * 32} if binding else {},
    )


class Dummy(Mechanism):
    """A mechanism that proves nothing, for registration tests."""

    def _start(self, initial: bytes | None) -> Deferred[Step]:
        return succeed(self.failed("dummy"))


class RegistryTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        saved = dict(registry.MECHANISMS)

        def restore() -> None:
            registry.MECHANISMS.clear()
            registry.MECHANISMS.update(saved)

        self.addCleanup(restore)

    def dummy(self, name: str, available: bool | None = None) -> type[Mechanism]:
        """Register a fresh dummy class called C{name}."""
        attributes: dict[str, object] = {"name": name}
        if available is not None:
            attributes["available"] = classmethod(lambda cls, context: available)
        registry.MECHANISMS.pop(name, None)
        return registry.register(type(name.replace("-", "_"), (Dummy,), attributes))


class RegisterTests(RegistryTestCase):
    def test_builtin(self) -> None:
        """Importing the registry registers the project's mechanisms."""
        classes = [Plain, Login, CramMD5, DigestMD5, ScramSha1, ScramSha256,
                   ScramSha1Plus, ScramSha256Plus]
        for name, cls in zip(ALL, classes):
            self.assertIs(registry.MECHANISMS[name], cls)

    def test_register(self) -> None:
        cls = type("XTest", (Dummy,), {"name": "X-TEST_1"})
        self.assertIs(registry.register(cls), cls)
        self.assertIs(registry.MECHANISMS["X-TEST_1"], cls)
        # Registering the same class again changes nothing.
        self.assertIs(registry.register(cls), cls)

    def test_bad_names(self) -> None:
        for name in ["", "x-test", "X TEST", "X" * 21, "PLAİN", "X.TEST"]:
            cls = type("Bad", (Dummy,), {"name": name})
            self.assertRaises(ValueError, registry.register, cls)
            self.assertNotIn(name, registry.MECHANISMS)

    def test_name_taken(self) -> None:
        impostor = type("Impostor", (Dummy,), {"name": "PLAIN"})
        self.assertRaises(ValueError, registry.register, impostor)
        self.assertIs(registry.MECHANISMS["PLAIN"], Plain)

    def test_unknown(self) -> None:
        self.assertEqual(
            registry.unknown(["PLAIN", "scram-sha-256", "NOPE", "X-OAUTH2"]),
            ["NOPE", "X-OAUTH2"],
        )

    def test_load_skips_missing_modules(self) -> None:
        """A mechanism module not written, or an absent optional dependency."""
        before = dict(registry.MECHANISMS)
        registry._load(["gateway.auth.sasl.nosuchmechanism", "nosuchpackage.module"])
        self.assertEqual(registry.MECHANISMS, before)

    def test_load_reports_broken_modules(self) -> None:
        self.assertRaises(ModuleNotFoundError, registry._load, ["gateway.nosuchpackage.mod"])


class OfferedTests(RegistryTestCase):
    def test_plaintext_hidden_without_tls(self) -> None:
        self.assertEqual(
            registry.offered(ALL, encrypted=False, plaintext_without_tls=False, context=context()),
            ["CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"],
        )

    def test_plaintext_under_tls(self) -> None:
        self.assertEqual(
            registry.offered(
                ALL, encrypted=True, plaintext_without_tls=False, context=context(encrypted=True)
            ),
            ["PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"],
        )

    def test_plaintext_allowed_without_tls(self) -> None:
        offered = registry.offered(
            ["PLAIN", "LOGIN"], encrypted=False, plaintext_without_tls=True, context=context()
        )
        self.assertEqual(offered, ["PLAIN", "LOGIN"])

    def test_plus_with_channel_binding(self) -> None:
        offered = registry.offered(
            ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS"],
            encrypted=True,
            plaintext_without_tls=False,
            context=context(encrypted=True, binding=True),
        )
        self.assertEqual(offered, ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS"])

    def test_plus_rule_for_any_module(self) -> None:
        """A -PLUS mechanism needs binding data even if its class says yes."""
        self.dummy("X-TEST-PLUS", available=True)
        for binding, expected in [(False, []), (True, ["X-TEST-PLUS"])]:
            offered = registry.offered(
                ["X-TEST-PLUS"], encrypted=True, plaintext_without_tls=False,
                context=context(binding=binding),
            )
            self.assertEqual(offered, expected)

    def test_external_needs_certificate(self) -> None:
        self.dummy("EXTERNAL", available=True)
        for certificate, expected in [(None, []), (object(), ["EXTERNAL"])]:
            offered = registry.offered(
                ["EXTERNAL"], encrypted=True, plaintext_without_tls=False,
                context=context(certificate=certificate),
            )
            self.assertEqual(offered, expected)

    def test_class_available(self) -> None:
        """A class's own available() is asked; without one it is available."""
        self.dummy("X-NEVER", available=False)
        self.dummy("X-ALWAYS")
        offered = registry.offered(
            ["X-NEVER", "X-ALWAYS"], encrypted=True, plaintext_without_tls=False,
            context=context(),
        )
        self.assertEqual(offered, ["X-ALWAYS"])

    def test_order_case_duplicates_unknown(self) -> None:
        offered = registry.offered(
            ["scram-sha-256", "NOPE", "Cram-MD5", "SCRAM-SHA-256", "PLAİN"],
            encrypted=True, plaintext_without_tls=False, context=context(encrypted=True),
        )
        self.assertEqual(offered, ["SCRAM-SHA-256", "CRAM-MD5"])


class CreateTests(RegistryTestCase):
    def test_create(self) -> None:
        mech = registry.create("scram-sha-256", context())
        self.assertIsInstance(mech, ScramSha256)
        assert mech is not None
        self.assertIsNot(registry.create("SCRAM-SHA-256", context()), mech)
        self.assertEqual(mech.context, context())

    def test_not_offered(self) -> None:
        self.assertIsNone(registry.create("NOPE", context()))
        self.assertIsNone(registry.create("PLAIN", context()))
        self.assertIsNone(registry.create("SCRAM-SHA-256-PLUS", context(encrypted=True)))
        self.assertIsNone(registry.create("CRAM-MD5", context(), names=["SCRAM-SHA-256"]))
        self.assertIsNone(registry.create("PLAİN", context(encrypted=True)))

    def test_plaintext(self) -> None:
        self.assertIsInstance(registry.create("PLAIN", context(encrypted=True)), Plain)
        self.assertIsInstance(
            registry.create("LOGIN", context(), plaintext_without_tls=True), Login
        )

    def test_plus_advertised(self) -> None:
        """
        Plain SCRAM learns whether its -PLUS sibling was offered here, to
        refuse a client's "y" as a downgrade.
        """
        bound = context(encrypted=True, binding=True)
        cases = [
            (bound, None, True),
            (bound, ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"], True),
            (bound, ["SCRAM-SHA-256", "SCRAM-SHA-1-PLUS"], False),
            (context(encrypted=True), None, False),
        ]
        for ctx, names, expected in cases:
            mech = registry.create("SCRAM-SHA-256", ctx, names=names)
            assert isinstance(mech, ScramSha256)
            self.assertEqual(mech.plus_advertised, expected, (names, expected))
        self.assertIsInstance(registry.create("SCRAM-SHA-1-PLUS", bound), ScramSha1Plus)


class AuthorizeTests(SynchronousTestCase):
    def authorize(self, authzid: str | None) -> Step:
        mech = Plain(context())
        return self.successResultOf(registry.authorize(mech, "alice", authzid, "ALICE"))

    def test_none_or_self(self) -> None:
        for authzid in [None, "", "alice"]:
            self.assertEqual(self.authorize(authzid), Proven("alice", "PLAIN"))

    def test_allowed(self) -> None:
        self.assertEqual(self.authorize("shared"), Proven("alice", "PLAIN", "shared"))
        # The directory matches names its own way (here case-insensitively).
        self.assertEqual(self.authorize("ALICE"), Proven("alice", "PLAIN", "ALICE"))

    def test_refused(self) -> None:
        step = self.authorize("root")
        assert isinstance(step, Failed), step
        self.assertEqual((step.authcid, step.malformed), ("ALICE", False))
