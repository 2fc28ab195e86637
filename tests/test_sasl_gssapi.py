"""
Tests for L{gateway.auth.sasl.gssapi}: GSSAPI (RFC 4752).

The C{gssapi} package is optional.  Without it, the module must import and
the mechanism must not be available.  The exchange itself is tested here
against L{fake_gssapi}, a scripted stand-in for the package's high-level API;
the tests that need the real package skip without it (the tests against a
real KDC are in L{tests.test_gssapi_kdc}).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.sasl import gssapi as module
from gateway.auth.sasl.base import Challenge, Failed, MechanismDone, Proven, SASLContext
from gateway.auth.sasl.gssapi import GSSAPI, realm_rule, split_principal
from gateway.testing import MemoryAuthBackend
from tests.krb5realm import isolate
from tests.sasl_support import MechanismTestCase

try:
    import gssapi
except ImportError:
    gssapi = None

ROOT = Path(__file__).resolve().parent.parent
LAYERS_OFFERED = b"W\x01\x00\x00\x00"


class FakeGSSError(Exception):
    """The stand-in's GSSError."""


class _Wrapped(NamedTuple):
    message: bytes


def fake_gssapi(
    script: list[tuple[bytes, bytes | None, bool]],
    principal: str = "alice@EXAMPLE.ORG",
    anonymous: bool = False,
) -> Any:
    """
    A stand-in for the C{gssapi} package: the acceptor context answers each
    token by the script's next C{(expected token, output token, complete)};
    a wrapped message is C{b"W" + message}.  C{credentials} records the
    keyword arguments of each credentials acquisition.

    Like the real package, a failure that comes with an error token for the
    peer (here, for the token C{b"replayed"}) is not raised by C{step()},
    which returns the error token, but by the next use of the context (here,
    C{complete}).
    """
    credentials: list[dict[str, Any]] = []

    class Name:
        def __init__(self, text: str, name_type: object = None) -> None:
            self.text, self.name_type = text, name_type

        def __str__(self) -> str:
            return self.text

    def Credentials(**kw: Any) -> object:
        if kw.get("store", {}).get("keytab") == "/no/such/keytab":
            raise FakeGSSError("Key table file not found")
        credentials.append(kw)
        return object()

    class SecurityContext:
        def __init__(self, creds: object, usage: str) -> None:
            assert usage == "accept"
            self._complete = False
            self._last_error: Exception | None = None
            self.actual_flags = {"anonymity"} if anonymous else set()
            self.initiator_name = Name(principal)
            self.target_name = Name("imap/mail.example.org@EXAMPLE.ORG")
            self._script = list(script)

        @property
        def complete(self) -> bool:
            error, self._last_error = self._last_error, None
            if error is not None:
                raise error
            return self._complete

        def step(self, token: bytes) -> bytes | None:
            expected, out, self._complete = self._script.pop(0)
            if token == b"replayed":
                self._complete = False
                self._last_error = FakeGSSError("Request is a replay")
                return b"KRB-ERROR"
            if token != expected:
                raise FakeGSSError("defective token")
            return out

        def wrap(self, message: bytes, encrypt: bool) -> _Wrapped:
            assert self.complete and not encrypt
            return _Wrapped(b"W" + message)

        def unwrap(self, message: bytes) -> _Wrapped:
            if not message.startswith(b"W"):
                raise FakeGSSError("bad integrity")
            return _Wrapped(message[1:])

    return SimpleNamespace(
        Name=Name,
        NameType=SimpleNamespace(hostbased_service="hostbased"),
        Credentials=Credentials,
        SecurityContext=SecurityContext,
        RequirementFlag=SimpleNamespace(anonymity="anonymity"),
        exceptions=SimpleNamespace(GSSError=FakeGSSError),
        credentials=credentials,
    )


ONE_ROUND = [(b"AP-REQ", None, True)]
MUTUAL = [(b"AP-REQ", b"AP-REP", True)]
TWO_ROUNDS = [(b"first", b"more", False), (b"second", b"AP-REP", True)]


def make_backend() -> MemoryAuthBackend:
    backend = MemoryAuthBackend()
    backend.add_account("alice", b"unused password", may_act_for=("shared",), iterations=16)
    backend.add_account("bob", b"unused password", iterations=16)
    return backend


def context(keytab: str | None = "/nonexistent/test.keytab") -> SASLContext:
    options = {"gssapi.keytab": keytab} if keytab else {}
    return SASLContext(service="imap", hostname="mail.example.org", backend=make_backend(),
                       options=options)


def choose(layer: int = 0x01, size: int = 0, authzid: bytes = b"") -> bytes:
    """The client's wrapped choice of layer (RFC 4752 section 3.1)."""
    return b"W" + bytes([layer]) + size.to_bytes(3, "big") + authzid


class ImportTests(SynchronousTestCase):
    def test_available_follows_package(self) -> None:
        self.assertEqual(GSSAPI.available(context()), gssapi is not None)

    def test_not_available_without_keytab(self) -> None:
        """Never offered on the host's default keytab: only a configured one."""
        self.assertFalse(GSSAPI.available(context(keytab=None)))
        self.assertEqual((GSSAPI.name, GSSAPI.plaintext, GSSAPI.legacy), ("GSSAPI", False, False))

    def test_import_without_package(self) -> None:
        """With C{gssapi} unimportable, the module imports, registers, is unavailable."""
        code = (
            "import sys; sys.modules['gssapi'] = None\n"
            "from gateway.auth.sasl import gssapi, registry\n"
            "print(gssapi.GSSAPI.available(None), 'GSSAPI' in registry.MECHANISMS)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        self.assertEqual((result.returncode, result.stdout), (0, "False True\n"), result.stderr)

    def test_start_without_package(self) -> None:
        self.patch(module, "_gssapi", None)
        step = self.successResultOf(GSSAPI(context()).start(b"AP-REQ"))
        self.assertIsInstance(step, Failed)


class PrincipalTests(SynchronousTestCase):
    def test_split(self) -> None:
        self.assertEqual(split_principal("alice@EXAMPLE.ORG"), ("alice", "EXAMPLE.ORG"))
        self.assertEqual(split_principal("a\\@b@EXAMPLE.ORG"), ("a\\@b", "EXAMPLE.ORG"))
        self.assertEqual(split_principal("a\\@EXAMPLE.ORG"), None)
        self.assertEqual(split_principal("alice"), None)
        self.assertEqual(split_principal("@EXAMPLE.ORG"), None)

    def test_realm_rule(self) -> None:
        own = realm_rule("example.org")
        self.assertEqual(own("alice@EXAMPLE.ORG", "EXAMPLE.ORG"), "alice@example.org")
        self.assertIsNone(own("alice@EVIL.ORG", "EXAMPLE.ORG"))
        self.assertIsNone(own("alice@EXAMPLE.ORG", None))
        self.assertIsNone(own("alice/admin@EXAMPLE.ORG", "EXAMPLE.ORG"))
        self.assertIsNone(own("a\\@b@EXAMPLE.ORG", "EXAMPLE.ORG"))
        listed = realm_rule(realms=["A.ORG", "B.ORG"])
        self.assertEqual(listed("alice@B.ORG", "A.ORG"), "alice")
        self.assertIsNone(listed("alice@C.ORG", "C.ORG"))


class ExchangeTests(MechanismTestCase):
    """The exchange against the scripted stand-in."""

    mechanism_name = "GSSAPI"

    def mechanism(self, script: list[tuple[bytes, bytes | None, bool]], **kw: Any) -> GSSAPI:
        fake_kw = {k: kw.pop(k) for k in ("principal", "anonymous") if k in kw}
        self.fake = fake_gssapi(script, **fake_kw)
        return GSSAPI(context(keytab=None), gssapi_module=self.fake, **kw)


    def test_one_round(self) -> None:
        steps = self.exchange(self.mechanism(ONE_ROUND), b"AP-REQ", choose())
        self.assertEqual(steps, [Challenge(LAYERS_OFFERED), Proven("alice", "GSSAPI")])
        self.assertEqual(
            self.fake.credentials, [{"name": self.fake.credentials[0]["name"], "usage": "accept"}]
        )
        self.assertEqual(str(self.fake.credentials[0]["name"]), "imap@mail.example.org")

    def test_mutual_token_then_empty_response(self) -> None:
        steps = self.exchange(self.mechanism(MUTUAL), None, b"AP-REQ", b"", choose())
        self.assertEqual(
            steps,
            [
                Challenge(b""),
                Challenge(b"AP-REP"),
                Challenge(LAYERS_OFFERED),
                Proven("alice", "GSSAPI"),
            ],
        )

    def test_two_rounds(self) -> None:
        steps = self.exchange(self.mechanism(TWO_ROUNDS), b"first", b"second", b"", choose())
        self.assertEqual(steps[0], Challenge(b"more"))
        self.assertEqual(steps[-1], Proven("alice", "GSSAPI"))

    def test_keytab(self) -> None:
        self.exchange(self.mechanism(ONE_ROUND, keytab="/etc/imap.keytab"), b"AP-REQ")
        self.assertEqual(self.fake.credentials[0]["store"], {"keytab": "/etc/imap.keytab"})
        step = self.exchange(self.mechanism(ONE_ROUND, keytab="/no/such/keytab"), b"AP-REQ")[0]
        self.assertIn("server credentials", self.assertFailed(step).reason)

    def test_configured(self) -> None:
        """The operator's keytab and domain come through the context's options."""
        fake = fake_gssapi(ONE_ROUND)
        ctx = SASLContext(service="imap", hostname="mail.example.org", backend=make_backend(),
                          options={"gssapi.keytab": "/etc/imap.keytab",
                                   "gssapi.domain": "example.org"})
        mech = GSSAPI(ctx, gssapi_module=fake)
        last = self.exchange(mech, b"AP-REQ", choose())[-1]
        self.assertEqual(fake.credentials[0]["store"], {"keytab": "/etc/imap.keytab"})
        self.assertIsInstance(last, (Proven, Failed))

    def test_authzid(self) -> None:
        for authzid, expected in [
            (b"alice", Proven("alice", "GSSAPI")),
            (b"shared", Proven("alice", "GSSAPI", "shared")),
        ]:
            with self.subTest(authzid=authzid):
                mech = self.mechanism(ONE_ROUND)
                steps = self.exchange(mech, b"AP-REQ", choose(authzid=authzid))
                self.assertEqual(steps[-1], expected)
        steps = self.exchange(self.mechanism(ONE_ROUND), b"AP-REQ", choose(authzid=b"bob"))
        self.assertIn("may not act as", self.assertFailed(steps[-1]).reason)

    def test_mapping(self) -> None:
        """The mapping is injectable, and may ask a directory (a Deferred)."""
        seen: list[tuple[str, str | None]] = []

        def lookup(principal: str, realm: str | None) -> Deferred[str | None]:
            seen.append((principal, realm))
            return succeed("bob")

        mech = self.mechanism(ONE_ROUND, map_principal=lookup)
        self.assertEqual(self.exchange(mech, b"AP-REQ", choose())[-1], Proven("bob", "GSSAPI"))
        self.assertEqual(seen, [("alice@EXAMPLE.ORG", "EXAMPLE.ORG")])

    def test_unmapped_principals(self) -> None:
        for principal in ["alice@EVIL.ORG", "alice/admin@EXAMPLE.ORG", "alice"]:
            with self.subTest(principal=principal):
                mech = self.mechanism(ONE_ROUND, principal=principal)
                failed = self.assertFailed(self.exchange(mech, b"AP-REQ", choose())[-1])
                self.assertEqual(failed.authcid, principal)

    def test_anonymous_refused(self) -> None:
        mech = self.mechanism(ONE_ROUND, anonymous=True)
        self.assertIn("anonymous", self.assertFailed(self.exchange(mech, b"AP-REQ")[0]).reason)

    def test_error_raised_after_step(self) -> None:
        """
        A failure the package raises only at the next use of the context (a
        replay, a ticket for another service) is a failure, not a challenge
        carrying the error token, and not an exception.
        """
        for script in (ONE_ROUND, TWO_ROUNDS):
            with self.subTest(script=script):
                step = self.exchange(self.mechanism(script), b"replayed")[0]
                self.assertIn("Request is a replay", self.assertFailed(step).reason)

    def test_bad_tokens(self) -> None:
        self.assertFailed(self.exchange(self.mechanism(ONE_ROUND), b"forged")[0])
        self.assertFailed(self.exchange(self.mechanism(ONE_ROUND), b"")[0], malformed=True)
        steps = self.exchange(self.mechanism(MUTUAL), b"AP-REQ", b"not empty")
        self.assertFailed(steps[-1], malformed=True)

    def test_bad_layer_choice(self) -> None:
        for choice, malformed in [
            (choose(layer=0x02), True),  # integrity: not offered
            (choose(layer=0x03), True),
            (choose(layer=0x00), True),
            (b"W\x01\x00\x00", True),  # short
            (choose(authzid=b"\xff"), True),
            (b"\x01\x00\x00\x00", False),  # not wrapped
        ]:
            with self.subTest(choice=choice):
                steps = self.exchange(self.mechanism(ONE_ROUND), b"AP-REQ", choice)
                self.assertFailed(steps[-1], malformed=malformed)

    def test_step_after_end(self) -> None:
        mech = self.mechanism(ONE_ROUND)
        self.exchange(mech, b"AP-REQ", choose())
        self.assertRaises(MechanismDone, mech.step, b"")

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=60))
    def test_random_layer_message(self, data: bytes) -> None:
        """Whatever the client wraps, no exception, and no authzid it may not use."""
        mech = GSSAPI(context(), gssapi_module=fake_gssapi(ONE_ROUND))
        self.successResultOf(mech.start(b"AP-REQ"))
        step = self.successResultOf(mech.step(b"W" + data))
        if isinstance(step, Proven):
            self.assertEqual((step.authcid, data[:1]), ("alice", b"\x01"))
            self.assertIn((step.authzid or "alice").casefold(), ("alice", "shared"))
        else:
            self.assertIsInstance(step, Failed)


class RealPackageTests(SynchronousTestCase):
    """With the real package, but no KDC: failures, never exceptions."""

    if gssapi is None:
        skip = "gssapi not installed"

    def setUp(self) -> None:
        # The library must not read the machine's /etc/krb5.conf: Debian's
        # default one canonicalises host names through DNS (seconds each).
        isolate(self)

    def test_available(self) -> None:
        self.assertTrue(GSSAPI.available(context()))

    def test_missing_keytab_fails(self) -> None:
        mech = GSSAPI(context(), keytab=str(Path(self.mktemp()) / "missing.keytab"))
        step = self.successResultOf(mech.start(b"\x60\x00garbage"))
        self.assertIsInstance(step, Failed)

    def test_empty_token_fails(self) -> None:
        mech = GSSAPI(context(), keytab=str(Path(self.mktemp()) / "missing.keytab"))
        step = self.successResultOf(mech.start(b""))
        self.assertIsInstance(step, Failed)

    @settings(max_examples=50, deadline=None)
    @given(st.binary(min_size=1, max_size=200))
    def test_random_tokens(self, token: bytes) -> None:
        mech = GSSAPI(context(), keytab="/nonexistent/gateway-test.keytab")
        self.assertIsInstance(self.successResultOf(mech.start(token)), Failed)
