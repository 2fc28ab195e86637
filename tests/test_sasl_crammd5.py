"""
Tests for L{gateway.auth.sasl.crammd5}: CRAM-MD5 (RFC 2195).
"""

from __future__ import annotations

import hmac
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.auth.sasl.base import Challenge, Failed, MechanismDone, Proven, SASLContext, Step
from gateway.auth.sasl.crammd5 import MAX_USER, CramMD5, make_challenge
from gateway.testing import MemoryAuthBackend

RFC_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
RFC_RESPONSE = b"tim b913a602c7eda7a495b4e6e7334d3890"


def make_backend() -> MemoryAuthBackend:
    backend = MemoryAuthBackend()
    backend.add_account("tim", "tanstaaftanstaaf", legacy=("CRAM-MD5",), iterations=16)
    backend.add_account("tim smith", "pw", legacy=("CRAM-MD5",), iterations=16)
    backend.add_account("scram-only", "tanstaaftanstaaf", iterations=16)
    backend.add_account("digest-only", "tanstaaftanstaaf", legacy=("DIGEST-MD5",), iterations=16)
    backend.add_account("gone", "tanstaaftanstaaf", legacy=("CRAM-MD5",), iterations=16)
    backend.set_enabled("gone", False)
    return backend


def mechanism() -> CramMD5:
    ctx = SASLContext(service="smtp", hostname="mail.example.org", backend=make_backend())
    return CramMD5(ctx, challenge_source=lambda hostname: RFC_CHALLENGE)


def answer(user: bytes, password: bytes, challenge: bytes = RFC_CHALLENGE) -> bytes:
    return user + b" " + hmac.new(password, challenge, "md5").hexdigest().encode()


class CramMD5Tests(SynchronousTestCase):
    def respond(self, response: bytes) -> Step:
        mech = mechanism()
        self.assertEqual(self.successResultOf(mech.start(None)), Challenge(RFC_CHALLENGE))
        return self.successResultOf(mech.step(response))

    def assertMalformed(self, step: Step) -> None:
        assert isinstance(step, Failed), step
        self.assertTrue(step.malformed, step)
        self.assertEqual(step.mechanism, "CRAM-MD5")

    def test_properties(self) -> None:
        self.assertTrue(CramMD5.legacy)
        self.assertFalse(CramMD5.plaintext)
        self.assertEqual(CramMD5.name, "CRAM-MD5")

    def test_rfc2195_example(self) -> None:
        """RFC 2195 section 2."""
        self.assertEqual(
            self.respond(RFC_RESPONSE), Proven(authcid="tim", mechanism="CRAM-MD5")
        )

    def test_upper_case_digest(self) -> None:
        user, digest = RFC_RESPONSE.split(b" ")
        self.assertIsInstance(self.respond(user + b" " + digest.upper()), Proven)

    def test_canonical_account(self) -> None:
        step = self.respond(b"TIM " + RFC_RESPONSE[4:])
        self.assertEqual(step, Proven(authcid="tim", mechanism="CRAM-MD5"))

    def test_user_name_with_space(self) -> None:
        """The digest follows the last space; the user name may hold one."""
        step = self.respond(answer(b"tim smith", b"pw"))
        self.assertEqual(step, Proven(authcid="tim smith", mechanism="CRAM-MD5"))

    def test_default_challenge(self) -> None:
        """The default challenge has the RFC 2195 form and is fresh."""
        ctx = SASLContext(service="smtp", hostname="mail.example.org", backend=make_backend())
        first = self.successResultOf(CramMD5(ctx).start(None))
        second = self.successResultOf(CramMD5(ctx).start(None))
        assert isinstance(first, Challenge) and isinstance(second, Challenge)
        self.assertRegex(first.data, rb"\A<[0-9]+\.[0-9]+@mail\.example\.org>\Z")
        self.assertNotEqual(first.data, second.data)
        self.assertRegex(make_challenge("h"), rb"\A<[0-9]+\.[0-9]+@h>\Z")

    def test_default_challenge_exchange(self) -> None:
        ctx = SASLContext(service="smtp", hostname="mail.example.org", backend=make_backend())
        mech = CramMD5(ctx)
        challenge = self.successResultOf(mech.start(None))
        assert isinstance(challenge, Challenge)
        step = self.successResultOf(mech.step(answer(b"tim", b"tanstaaftanstaaf", challenge.data)))
        self.assertIsInstance(step, Proven)

    def test_wrong_password(self) -> None:
        step = self.respond(answer(b"tim", b"wrong"))
        self.assertEqual(
            step,
            Failed(reason="wrong digest or unknown account", mechanism="CRAM-MD5", authcid="tim"),
        )

    def test_no_secret_like_wrong_password(self) -> None:
        """
        Unknown, disabled, and accounts without CRAM-MD5 fail exactly as a
        wrong password does (only the claimed name differs).
        """
        wrong = self.respond(answer(b"tim", b"wrong"))
        for user in [b"nobody", b"scram-only", b"digest-only", b"gone"]:
            step = self.respond(answer(user, b"tanstaaftanstaaf"))
            assert isinstance(step, Failed) and isinstance(wrong, Failed)
            self.assertEqual(step, Failed(wrong.reason, "CRAM-MD5", user.decode()))

    def test_digest_for_another_challenge(self) -> None:
        """A digest replayed from another exchange fails."""
        step = self.respond(answer(b"tim", b"tanstaaftanstaaf", b"<1.2@other>"))
        assert isinstance(step, Failed)
        self.assertFalse(step.malformed)

    def test_malformed(self) -> None:
        digest = RFC_RESPONSE[4:]
        for response in [
            b"",
            b"tim",
            b"tim" + digest,
            b" " + digest,
            b"tim " + digest[:-1],
            b"tim " + digest + b"0",
            b"tim " + digest[:-1] + b"g",
            b"tim " + digest + b" ",
            b"t\xffim " + digest,
            b"ti\x00m " + digest,
            b"a" * (MAX_USER + 1) + b" " + digest,
        ]:
            self.assertMalformed(self.respond(response))

    def test_initial_response(self) -> None:
        """CRAM-MD5 is server-first: an initial response is refused."""
        self.assertMalformed(self.successResultOf(mechanism().start(RFC_RESPONSE)))
        # An empty one carries nothing: the exchange goes on.
        self.assertEqual(
            self.successResultOf(mechanism().start(b"")), Challenge(RFC_CHALLENGE)
        )

    def test_step_after_end(self) -> None:
        mech = mechanism()
        self.successResultOf(mech.start(None))
        self.successResultOf(mech.step(RFC_RESPONSE))
        self.assertRaises(MechanismDone, mech.step, RFC_RESPONSE)

    def test_step_before_start(self) -> None:
        self.assertRaises(MechanismDone, mechanism().step, RFC_RESPONSE)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_random_bytes(self, data: bytes) -> None:
        self.assertIsInstance(self.respond(data), Failed)
        # As an initial response too: refused unless empty.
        step = self.successResultOf(mechanism().start(data))
        self.assertIsInstance(step, Challenge if data == b"" else Failed)

    @settings(max_examples=200, deadline=None)
    @given(st.sampled_from([b"tim", b"nobody"]), st.from_regex(re.compile(rb"\A[0-9a-f]{32}\Z")))
    def test_random_digest(self, user: bytes, digest: bytes) -> None:
        step = self.respond(user + b" " + digest)
        assert isinstance(step, Failed)
        self.assertFalse(step.malformed)
