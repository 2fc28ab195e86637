"""
Tests for L{gateway.auth.sasl.plain}: PLAIN (RFC 4616) and LOGIN.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail

from gateway.auth.sasl.base import (
    Challenge,
    Failed,
    MechanismDone,
    Proven,
    SASLContext,
    Step,
)
from gateway.auth.sasl.plain import MAX_FIELD, Login, Plain
from gateway.auth.verifiers import password_fingerprint
from gateway.testing import MemoryAuthBackend
from tests.sasl_support import MechanismTestCase

PASSWORD = b"correct horse"


def make_backend() -> MemoryAuthBackend:
    backend = MemoryAuthBackend()
    # Few iterations: these tests check the mechanisms, not PBKDF2.
    backend.add_account(
        "alice", PASSWORD, aliases=("al",), may_act_for=("shared",), iterations=16
    )
    backend.add_account("bob", b"caf\xe9", iterations=16)  # not UTF-8
    return backend


def context(backend: object | None = None) -> SASLContext:
    return SASLContext(
        service="imap",
        hostname="mail.example.org",
        backend=backend if backend is not None else make_backend(),  # type: ignore[arg-type]
        encrypted=True,
    )


class PendingBackend(MemoryAuthBackend):
    """A directory that never answers, or fails, check_password."""

    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.broken = broken

    def check_password(self, authcid: str, password: bytes) -> Deferred[str | None]:
        if self.broken:
            return fail(OSError("directory down"))
        return Deferred()


class PlainTests(MechanismTestCase):
    def plain(self, message: bytes | None, backend: object | None = None) -> Step:
        return self.exchange(Plain(context(backend)), message)[-1]

    def assertMalformed(self, step: Step) -> None:
        self.assertIsInstance(step, Failed)
        assert isinstance(step, Failed)
        self.assertTrue(step.malformed, step)
        self.assertEqual(step.mechanism, "PLAIN")

    def test_properties(self) -> None:
        self.assertEqual(Plain.name, "PLAIN")
        self.assertTrue(Plain.plaintext)
        self.assertFalse(Plain.legacy)

    def test_rfc4616_examples(self) -> None:
        """
        RFC 4616 section 4: tim logs in as himself; Kurt acts as Ursel.
        """
        backend = MemoryAuthBackend()
        backend.add_account("tim", "tanstaaftanstaaf", iterations=16)
        backend.add_account("Kurt", "xipj3plmq", may_act_for=("Ursel",), iterations=16)
        self.assertEqual(
            self.plain(b"\0tim\0tanstaaftanstaaf", backend),
            Proven(authcid="tim", mechanism="PLAIN"),
        )
        self.assertEqual(
            self.plain(b"Ursel\0Kurt\0xipj3plmq", backend),
            Proven(authcid="Kurt", mechanism="PLAIN", authzid="Ursel"),
        )

    def test_no_initial_response(self) -> None:
        """Without an initial response the server sends an empty challenge."""
        steps = self.exchange(Plain(context()), None, b"\0alice\0" + PASSWORD)
        self.assertEqual(
            steps, [Challenge(b""), Proven(authcid="alice", mechanism="PLAIN")]
        )

    def test_canonical_account(self) -> None:
        """Proven names the directory's account, not the client's spelling."""
        expected = Proven(authcid="alice", mechanism="PLAIN")
        self.assertEqual(self.plain(b"\0ALICE\0" + PASSWORD), expected)
        self.assertEqual(self.plain(b"\0al\0" + PASSWORD), expected)

    def test_wrong_password(self) -> None:
        step = self.plain(b"\0alice\0wrong")
        self.assertEqual(
            step,
            Failed(
                reason="wrong password or unknown account",
                mechanism="PLAIN",
                authcid="alice",
                fingerprint=password_fingerprint("alice", b"wrong"),
            ),
        )
        assert isinstance(step, Failed)
        self.assertEqual(step.fingerprint, password_fingerprint("alice", b"wrong"))

    def test_unknown_user_like_wrong_password(self) -> None:
        wrong = self.plain(b"\0alice\0wrong")
        unknown = self.plain(b"\0nobody\0wrong")
        assert isinstance(wrong, Failed) and isinstance(unknown, Failed)
        self.assertEqual((wrong.reason, wrong.malformed), (unknown.reason, unknown.malformed))
        self.assertEqual(unknown.authcid, "nobody")
        self.assertEqual(unknown.fingerprint, password_fingerprint("nobody", b"wrong"))

    def test_authzid_empty_or_self(self) -> None:
        expected = Proven(authcid="alice", mechanism="PLAIN")
        self.assertEqual(self.plain(b"\0alice\0" + PASSWORD), expected)
        self.assertEqual(self.plain(b"alice\0ALICE\0" + PASSWORD), expected)

    def test_authzid_allowed(self) -> None:
        self.assertEqual(
            self.plain(b"shared\0alice\0" + PASSWORD),
            Proven(authcid="alice", mechanism="PLAIN", authzid="shared"),
        )

    def test_authzid_refused(self) -> None:
        step = self.plain(b"bob\0alice\0" + PASSWORD)
        self.assertIsInstance(step, Failed)
        assert isinstance(step, Failed)
        self.assertFalse(step.malformed)
        self.assertEqual(step.authcid, "alice")

    def test_authzid_with_wrong_password(self) -> None:
        """A wrong password fails as such, whatever the authzid."""
        step = self.plain(b"shared\0alice\0wrong")
        assert isinstance(step, Failed)
        self.assertEqual(step.reason, "wrong password or unknown account")

    def test_malformed(self) -> None:
        long = b"x" * (MAX_FIELD + 1)
        for message in [
            b"",
            b"alice",
            b"alice\0" + PASSWORD,
            b"\0alice\0" + PASSWORD + b"\0",
            b"\0\0" + PASSWORD,
            b"\0alice\0",
            b"\0al\xffice\0" + PASSWORD,
            b"\0alice\0pass\xff",
            b"\xff\0alice\0" + PASSWORD,
            b"\0" + long + b"\0" + PASSWORD,
            b"\0alice\0" + long,
            long + b"\0alice\0" + PASSWORD,
            b"\0ali\x07ce\0" + PASSWORD,
            b"sha\x01red\0alice\0" + PASSWORD,
        ]:
            self.assertMalformed(self.plain(message))

    def test_longest_fields_accepted(self) -> None:
        """Fields of exactly MAX_FIELD octets are parsed (and checked)."""
        step = self.plain(b"\0" + b"a" * MAX_FIELD + b"\0" + b"p" * MAX_FIELD)
        assert isinstance(step, Failed)
        self.assertFalse(step.malformed)

    def test_step_after_end(self) -> None:
        mech = Plain(context())
        self.successResultOf(mech.start(b"\0alice\0" + PASSWORD))
        self.assertRaises(MechanismDone, mech.step, b"")
        self.assertRaises(MechanismDone, mech.start, None)

    def test_step_while_waiting(self) -> None:
        """A step while the directory has not answered is a caller's bug."""
        mech = Plain(context(PendingBackend()))
        self.successResultOf(mech.start(None))
        d = mech.step(b"\0alice\0" + PASSWORD)
        self.assertNoResult(d)
        self.assertRaises(MechanismDone, mech.step, b"\0alice\0" + PASSWORD)

    def test_directory_failure_propagates(self) -> None:
        """A directory error is not an authentication failure."""
        mech = Plain(context(PendingBackend(broken=True)))
        self.failureResultOf(mech.start(b"\0alice\0" + PASSWORD), OSError)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200), st.booleans())
    def test_random_bytes(self, data: bytes, initial: bool) -> None:
        mech = Plain(context())
        if initial:
            step = self.successResultOf(mech.start(data))
        else:
            self.successResultOf(mech.start(None))
            step = self.successResultOf(mech.step(data))
        self.assertIsInstance(step, Failed)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.text(max_size=20), min_size=1, max_size=4))
    def test_random_fields(self, fields: list[str]) -> None:
        """NUL-separated text never proves anything without the password."""
        message = "\0".join(fields).encode("utf-8")
        self.assertIsInstance(self.plain(message), Failed)


class LoginTests(MechanismTestCase):
    def assertMalformed(self, step: Step) -> None:
        assert isinstance(step, Failed), step
        self.assertTrue(step.malformed, step)
        self.assertEqual(step.mechanism, "LOGIN")

    def test_properties(self) -> None:
        self.assertEqual(Login.name, "LOGIN")
        self.assertTrue(Login.plaintext)

    def test_exchange(self) -> None:
        steps = self.exchange(Login(context()), None, b"alice", PASSWORD)
        self.assertEqual(
            steps,
            [
                Challenge(b"Username:"),
                Challenge(b"Password:"),
                Proven(authcid="alice", mechanism="LOGIN"),
            ],
        )

    def test_initial_response_is_username(self) -> None:
        steps = self.exchange(Login(context()), b"al", PASSWORD)
        self.assertEqual(
            steps, [Challenge(b"Password:"), Proven(authcid="alice", mechanism="LOGIN")]
        )

    def test_empty_initial_response(self) -> None:
        self.assertEqual(self.exchange(Login(context()), b""), [Challenge(b"Username:")])

    def test_password_not_utf8(self) -> None:
        """LOGIN defines no charset: the password's octets are used as they are."""
        self.assertEqual(
            self.exchange(Login(context()), b"bob", b"caf\xe9")[-1],
            Proven(authcid="bob", mechanism="LOGIN"),
        )

    def test_wrong_password_and_unknown_user(self) -> None:
        wrong = self.exchange(Login(context()), b"alice", b"wrong")[-1]
        unknown = self.exchange(Login(context()), b"nobody", b"wrong")[-1]
        assert isinstance(wrong, Failed) and isinstance(unknown, Failed)
        self.assertEqual((wrong.reason, wrong.malformed), (unknown.reason, unknown.malformed))
        self.assertFalse(wrong.malformed)
        self.assertEqual(wrong.fingerprint, password_fingerprint("alice", b"wrong"))
        self.assertEqual(unknown.fingerprint, password_fingerprint("nobody", b"wrong"))

    def test_malformed_username(self) -> None:
        for username in [b"\xffalice", b"a" * (MAX_FIELD + 1), b"al\x00ice", b"\x7f"]:
            self.assertMalformed(self.exchange(Login(context()), None, username)[-1])

    def test_malformed_password(self) -> None:
        for password in [b"", b"p" * (MAX_FIELD + 1)]:
            self.assertMalformed(self.exchange(Login(context()), b"alice", password)[-1])

    def test_step_after_end(self) -> None:
        mech = Login(context())
        self.exchange(mech, b"alice", PASSWORD)
        self.assertRaises(MechanismDone, mech.step, b"")

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=100), st.binary(max_size=100))
    def test_random_bytes(self, username: bytes, password: bytes) -> None:
        mech = Login(context())
        step = self.successResultOf(mech.start(None))
        for data in (username, password):
            if not isinstance(step, Challenge):
                break
            step = self.successResultOf(mech.step(data))
        self.assertIsInstance(step, Failed)
