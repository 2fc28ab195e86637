"""
Tests for L{gateway.auth.sasl.otp}: the OTP SASL mechanism (RFC 2444) with
RFC 2243 extended responses.
"""

from __future__ import annotations

import re
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.auth import otp as rfc2289
from gateway.auth.sasl.base import Challenge, Failed, MechanismDone, Proven, SASLContext, Step
from gateway.auth.sasl.otp import OTP
from gateway.auth.verifiers import OTPState
from gateway.interfaces import IAuthBackend, IOTPReinitialisation
from gateway.testing import MemoryAuthBackend
from tests.sasl_support import MechanismTestCase

PASS = "This is a test."
SEED = "ke1234"
# RFC 2243 section 3's example: challenge "otp-md5 499 ke1234 ext".
CHALLENGE = b"otp-md5 499 ke1234 ext"
RESPONSE_HEX = "5bf075d9959d036f"
RESPONSE_WORDS = "BOND FOGY DRAB NE RISE MART"
INIT_HEX = b"init-hex:5bf075d9959d036f:md5 499 ke1235:3712dcb4aa5316c1"
INIT_WORD = b"init-word:BOND FOGY DRAB NE RISE MART:md5 499 ke1235:RED HERD NOW BEAN PA BURG"
FAKE = re.compile(rb"otp-md5 [0-9]{2,3} [a-z]{2}[0-9]{4} ext")


@implementer(IOTPReinitialisation)
class ReinitBackend(MemoryAuthBackend):
    """A directory that can also re-initialise OTP sequences."""

    def otp_reinitialise(
        self, account: str, sequence: int, key: bytes, state: OTPState
    ) -> Deferred[bool]:
        record = self._find(account)
        if record is None or record.otp is None or record.otp.sequence != sequence + 1:
            return succeed(False)
        record.otp = state
        return succeed(True)


class PendingBackend(MemoryAuthBackend):
    """A directory that never answers otp_state."""

    def otp_state(self, authcid: str) -> Deferred[OTPState | None]:
        return Deferred()


def make_backend(cls: type[MemoryAuthBackend] = MemoryAuthBackend) -> MemoryAuthBackend:
    backend = cls()
    backend.add_account("alice", b"unused password", may_act_for=("shared",), iterations=16)
    backend.set_otp(
        "alice", algorithm="md5", seed=SEED, sequence=500, key=rfc2289.otp("md5", PASS, SEED, 500)
    )
    backend.add_account("carol", b"unused password", iterations=16)
    carol_key = rfc2289.otp("sha1", PASS, "TeSt", 2)
    backend.set_otp("carol", algorithm="sha1", seed="test", sequence=2, key=carol_key)
    backend.add_account("dave", b"unused password", iterations=16)  # no OTP state
    return backend


def context(backend: MemoryAuthBackend) -> SASLContext:
    return SASLContext(
        service="imap", hostname="mail.example.org", backend=backend, encrypted=True
    )


def state_of(backend: MemoryAuthBackend, name: str) -> OTPState | None:
    state: OTPState | None = None

    def keep(found: OTPState | None) -> None:
        nonlocal state
        state = found

    backend.otp_state(name).addCallback(keep)
    return state


class OTPTests(MechanismTestCase):
    """Against L{MemoryAuthBackend}, which cannot re-initialise."""

    mechanism_name = "OTP"
    backend_class: type[MemoryAuthBackend] = MemoryAuthBackend

    def setUp(self) -> None:
        self.backend = make_backend(self.backend_class)

    def otp(
        self, *messages: bytes | None, backend: MemoryAuthBackend | None = None
    ) -> list[Step]:
        return self.exchange(OTP(context(backend or self.backend)), *messages)

    def test_properties(self) -> None:
        self.assertEqual((OTP.name, OTP.plaintext, OTP.legacy), ("OTP", False, False))
        self.assertTrue(OTP.available(context(self.backend)))

    def test_hex(self) -> None:
        steps = self.otp(b"\0alice", b"hex:" + RESPONSE_HEX.encode())
        self.assertEqual(steps, [Challenge(CHALLENGE), Proven(authcid="alice", mechanism="OTP")])
        state = state_of(self.backend, "alice")
        assert state is not None
        self.assertEqual((state.sequence, state.key.hex()), (499, RESPONSE_HEX))

    def test_words(self) -> None:
        steps = self.otp(b"\0alice", b"word:" + RESPONSE_WORDS.lower().encode())
        self.assertEqual(steps[-1], Proven(authcid="alice", mechanism="OTP"))

    def test_bare_responses(self) -> None:
        for response in [RESPONSE_HEX.upper(), RESPONSE_WORDS]:
            with self.subTest(response=response):
                fresh = make_backend(self.backend_class)
                steps = self.otp(b"\0alice", response.encode(), backend=fresh)
                self.assertEqual(steps[-1], Proven(authcid="alice", mechanism="OTP"))

    def test_no_initial_response(self) -> None:
        steps = self.otp(None, b"\0alice", RESPONSE_HEX.encode())
        self.assertEqual(steps[:2], [Challenge(b""), Challenge(CHALLENGE)])
        self.assertEqual(steps[2], Proven(authcid="alice", mechanism="OTP"))

    def test_sha1_down_to_zero(self) -> None:
        """Counts 1 and then 0 are accepted; after 0 the chain is used up."""
        for count in (1, 0):
            challenge = f"otp-sha1 {count} test ext".encode()
            response = rfc2289.otp("sha1", PASS, "TeSt", count).hex().encode()
            steps = self.otp(b"\0carol", response)
            self.assertEqual(steps, [Challenge(challenge), Proven("carol", "OTP")])
        steps = self.otp(b"\0carol", rfc2289.otp("sha1", PASS, "TeSt", 0).hex().encode())
        self.assertRegex(steps[0].data.decode(), FAKE.pattern.decode())  # type: ignore[union-attr]
        self.assertIn("re-initialisation", self.assertFailed(steps[1]).reason)

    def test_replay_refused(self) -> None:
        response = b"hex:" + RESPONSE_HEX.encode()
        self.assertIsInstance(self.otp(b"\0alice", response)[-1], Proven)
        steps = self.otp(b"\0alice", response)
        self.assertEqual(steps[0], Challenge(b"otp-md5 498 ke1234 ext"))
        self.assertFailed(steps[1])
        state = state_of(self.backend, "alice")
        assert state is not None
        self.assertEqual(state.sequence, 499)

    def test_concurrent_loser_refused(self) -> None:
        """Two sessions saw the same challenge: the compare-and-set lets one in."""
        first, second = OTP(context(self.backend)), OTP(context(self.backend))
        self.assertEqual(self.successResultOf(first.start(b"\0alice")), Challenge(CHALLENGE))
        self.assertEqual(self.successResultOf(second.start(b"\0alice")), Challenge(CHALLENGE))
        response = RESPONSE_HEX.encode()
        self.assertIsInstance(self.successResultOf(first.step(response)), Proven)
        failed = self.assertFailed(self.successResultOf(second.step(response)))
        self.assertIn("already used", failed.reason)
        self.assertEqual(failed.authcid, "alice")

    def test_wrong_response(self) -> None:
        wrong = rfc2289.otp("md5", "not the pass phrase", SEED, 499).hex().encode()
        failed = self.assertFailed(self.otp(b"\0alice", wrong)[-1])
        self.assertEqual(failed.authcid, "alice")
        state = state_of(self.backend, "alice")
        assert state is not None
        self.assertEqual(state.sequence, 500)

    def test_unknown_user_indistinguishable(self) -> None:
        """No account, no OTP state, disabled: a challenge like a real one."""
        self.backend.add_account("erin", b"unused password", iterations=16)
        self.backend.set_otp("erin", algorithm="md5", seed="ab1234", sequence=9, key=b"\0" * 8)
        self.backend.set_enabled("erin", False)
        wrong = rfc2289.otp("md5", "not the pass phrase", SEED, 499).hex().encode()
        known = self.otp(b"\0alice", wrong)
        for name in [b"nobody", b"dave", b"erin"]:
            with self.subTest(name=name):
                steps = self.otp(b"\0" + name, wrong)
                assert isinstance(steps[0], Challenge)
                self.assertRegex(steps[0].data, FAKE)
                failed = self.assertFailed(steps[1])
                self.assertEqual(failed.authcid, name.decode())
                self.assertEqual(type(steps[0]), type(known[0]))
                # Only the logged reason and the claimed name differ.
                self.assertEqual(
                    replace(failed, reason="", authcid=""),
                    replace(known[1], reason="", authcid=""),  # type: ignore[type-var]
                )
                # The same challenge each time, and for the name in any case.
                self.assertEqual(self.otp(b"\0" + name)[0], steps[0])
                self.assertEqual(self.otp(b"\0" + name.upper())[0], steps[0])
        self.assertNotEqual(self.otp(b"\0nobody")[0], self.otp(b"\0somebody")[0])

    def test_authzid(self) -> None:
        response = RESPONSE_HEX.encode()
        for message, expected in [
            (b"alice\0alice", Proven("alice", "OTP")),
            (b"ALICE\0alice", Proven("alice", "OTP", "ALICE")),
            (b"shared\0alice", Proven("alice", "OTP", "shared")),
        ]:
            with self.subTest(message=message):
                fresh = make_backend(self.backend_class)
                self.assertEqual(self.otp(message, response, backend=fresh)[-1], expected)
        failed = self.assertFailed(self.otp(b"carol\0alice", response)[-1])
        self.assertIn("may not act as", failed.reason)

    def test_malformed_first_message(self) -> None:
        for message in [b"", b"alice", b"\0", b"alice\0", b"a\0b\0c", b"\0\xff", b"\xff\0alice",
                        b"\0ali\x07ce", b"\0" + b"a" * 1025]:
            with self.subTest(message=message):
                steps = self.otp(message)
                self.assertFailed(steps[0], malformed=True)

    def test_malformed_responses(self) -> None:
        for response in [
            b"",
            b"hex:zz",
            b"\xff",
            b"x" * 1000,
            b"hex:" + RESPONSE_HEX.encode() + b"\0",
            b"foo:" + RESPONSE_HEX.encode(),
            INIT_HEX[:-3],
            b"init-hex:5bf075d9959d036f:md5 0 ke1235:3712dcb4aa5316c1",
        ]:
            for name in [b"alice", b"nobody"]:
                with self.subTest(response=response, name=name):
                    steps = self.otp(b"\0" + name, response)
                    failed = self.assertFailed(steps[1], malformed=True)
                    self.assertEqual(failed.authcid, name.decode())
        state = state_of(self.backend, "alice")
        assert state is not None
        self.assertEqual(state.sequence, 500)

    def test_step_after_end(self) -> None:
        for response in [RESPONSE_HEX.encode(), b"hex:zz"]:
            with self.subTest(response=response):
                mech = OTP(context(make_backend(self.backend_class)))
                self.successResultOf(mech.start(b"\0alice"))
                self.assertNotIsInstance(self.successResultOf(mech.step(response)), Challenge)
                self.assertRaises(MechanismDone, mech.step, b"")
                self.assertRaises(MechanismDone, mech.start, b"\0alice")

    def test_step_while_waiting(self) -> None:
        mech = OTP(context(make_backend(PendingBackend)))
        self.assertNoResult(mech.start(b"\0alice"))
        self.assertRaises(MechanismDone, mech.step, RESPONSE_HEX.encode())


class ReinitialisationTests(OTPTests):
    """The same tests against a directory that can re-initialise, and more."""

    backend_class = ReinitBackend

    def test_init_hex(self) -> None:
        steps = self.otp(b"\0alice", INIT_HEX)
        self.assertEqual(steps, [Challenge(CHALLENGE), Proven(authcid="alice", mechanism="OTP")])
        self.assertEqual(
            state_of(self.backend, "alice"),
            OTPState("alice", "md5", "ke1235", 499, bytes.fromhex("3712dcb4aa5316c1")),
        )
        # The next login answers the new chain.
        response = rfc2289.otp("md5", PASS, "ke1235", 498).hex().encode()
        steps = self.otp(b"\0alice", response)
        self.assertEqual(steps, [Challenge(b"otp-md5 498 ke1235 ext"), Proven("alice", "OTP")])

    def test_init_word(self) -> None:
        self.assertEqual(self.otp(b"\0alice", INIT_WORD)[-1], Proven("alice", "OTP"))
        state = state_of(self.backend, "alice")
        assert state is not None
        self.assertEqual((state.seed, state.sequence), ("ke1235", 499))

    def test_init_replayed(self) -> None:
        self.assertIsInstance(self.otp(b"\0alice", INIT_HEX)[-1], Proven)
        self.assertFailed(self.otp(b"\0alice", INIT_HEX)[-1])

    def test_init_wrong_current(self) -> None:
        bad = INIT_HEX.replace(b"5bf075d9959d036f", b"5bf075d9959d036e")
        self.assertFailed(self.otp(b"\0alice", bad)[-1])
        state = state_of(self.backend, "alice")
        assert state is not None
        self.assertEqual((state.seed, state.sequence), (SEED, 500))

    def test_init_same_seed(self) -> None:
        """Refused, and the current OTP, sent in the clear, is used up."""
        same = INIT_HEX.replace(b"ke1235", b"KE1234")
        failed = self.assertFailed(self.otp(b"\0alice", same)[-1])
        self.assertIn("seed", failed.reason)
        state = state_of(self.backend, "alice")
        assert state is not None
        self.assertEqual((state.seed, state.sequence, state.key.hex()), (SEED, 499, RESPONSE_HEX))


@implementer(IAuthBackend)
class ReadOnlyDirectory:
    """A directory that cannot store a new OTP seed (no IOTPReinitialisation)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        if name == "otp_reinitialise":
            raise AttributeError(name)
        return getattr(self._inner, name)


class NoReinitialisationTests(SynchronousTestCase):
    def test_refused_and_used_up(self) -> None:
        backend = make_backend()
        self.assertFalse(IOTPReinitialisation.providedBy(ReadOnlyDirectory(backend)))
        mech = OTP(context(ReadOnlyDirectory(backend)))
        self.successResultOf(mech.start(b"\0alice"))
        failed = self.successResultOf(mech.step(INIT_HEX))
        assert isinstance(failed, Failed)
        self.assertIn("cannot re-initialise", failed.reason)
        state = state_of(backend, "alice")
        assert state is not None
        self.assertEqual((state.seed, state.sequence, state.key.hex()), (SEED, 499, RESPONSE_HEX))


class RandomInputTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        st.binary(max_size=120),
        st.binary(max_size=120),
        st.sampled_from([MemoryAuthBackend, ReinitBackend]),
        st.booleans(),
    )
    def test_random_bytes(
        self, first: bytes, response: bytes, backend_class: type[MemoryAuthBackend], known: bool
    ) -> None:
        """Random input never raises, never proves, never moves the state."""
        backend = make_backend(backend_class)
        mech = OTP(context(backend))
        # Half the time the response answers a real challenge.
        step = self.successResultOf(mech.start(b"\0alice" if known else first))
        if known:
            self.assertEqual(step, Challenge(CHALLENGE))
        if isinstance(step, Challenge):
            step = self.successResultOf(mech.step(response))
        self.assertIsInstance(step, Failed)
        state = state_of(backend, "alice")
        assert state is not None
        self.assertEqual(state.sequence, 500)
